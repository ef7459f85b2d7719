"""create_app(): the FastAPI application, its lifespan (engines, storage, validator) and errors."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SqlalchemyTimeout
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp

from relaypacs import __version__
from relaypacs.admin.router import router as admin_router
from relaypacs.apidocs import DOCS_PATH, OPENAPI_PATH, document_errors, install_api_docs
from relaypacs.auth.policy import app_policy, authorize, check_policy, record_denial
from relaypacs.auth.repository import user_loader
from relaypacs.auth.revocation import (
    DatabaseRevocations,
    MemoryRevocations,
    RedisRevocations,
    Revocations,
)
from relaypacs.auth.router import router as auth_router
from relaypacs.auth.security import KeyRing
from relaypacs.auth.service import ensure_first_admin
from relaypacs.auth.sessions import TokenContext
from relaypacs.auth.totp import TotpCipher
from relaypacs.config import MiB, Settings, load_settings
from relaypacs.db import Database
from relaypacs.dicom import DicomLimits, DicomValidator
from relaypacs.errors import Forbidden, GatewayError
from relaypacs.forwarding.source import SettleHook, Settlement
from relaypacs.forwarding.worker import Forwarder
from relaypacs.jobs import build_scheduler
from relaypacs.middleware import HttpSurface, StrictCORSMiddleware
from relaypacs.migrate import upgrade_in_subprocess
from relaypacs.notifications.live import NoticeHub
from relaypacs.notifications.mail import Mailer, SmtpSettings
from relaypacs.notifications.router import router as notifications_router
from relaypacs.ops.router import router as ops_router
from relaypacs.ops.service import HealthChecks
from relaypacs.ratelimit import RateLimits
from relaypacs.redisconn import connect as connect_redis
from relaypacs.reports.router import admin_router as reports_admin_router
from relaypacs.reports.router import router as reports_router
from relaypacs.reports.router import timeline_router as upload_timeline_router
from relaypacs.reports.service import open_report
from relaypacs.reports.writeback import ReportWriteBack
from relaypacs.state import AppState, app_settings
from relaypacs.stats.router import router as stats_router
from relaypacs.storage import (
    FilesystemStorage,
    ObjectStorage,
    StorageError,
    StorageFull,
    StorageMissing,
)
from relaypacs.telemetry import close_sentry, init_sentry, process_started, process_stopped
from relaypacs.telemetry.metrics import DATABASE_UNAVAILABLE, STORAGE_FULL
from relaypacs.uploads.batches import FRAMING as BATCH_FRAMING
from relaypacs.uploads.bodies import BodyBudget
from relaypacs.uploads.chunks import ChunkIntake, ChunkRecorder, UploadFactsCache
from relaypacs.uploads.completion import CompleteContext
from relaypacs.uploads.early import EarlyVerifier
from relaypacs.uploads.pipeline import Pipeline
from relaypacs.uploads.relay import UploadRelay, notify_uploader
from relaypacs.uploads.repository.chunk_rows import chunk_row_writer
from relaypacs.uploads.router import chunk_router, read_router
from relaypacs.uploads.router import router as uploads_router
from relaypacs.uploads.service import UploadLimits
from relaypacs.uploads.verify import StudyVerifier
from relaypacs.users.router import router as users_router
from relaypacs.webapp import WebApp

logger = logging.getLogger("relaypacs")

API_PREFIX = "/api/v1"
# The status of a request its client cut before its body arrived (nginx's "client closed
# request"): what the request metrics and the access log count it as.
CLIENT_CLOSED_REQUEST = 499


async def open_storage(settings: Settings) -> ObjectStorage:
    if settings.storage == "s3":
        from relaypacs.storage import S3Storage  # aiobotocore only when S3 is used

        assert settings.s3_bucket is not None
        s3 = S3Storage(
            endpoint_url=settings.s3_endpoint_url,
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id.get_secret_value()
            if settings.s3_access_key_id
            else None,
            secret_access_key=settings.s3_secret_access_key.get_secret_value()
            if settings.s3_secret_access_key
            else None,
            prefix=settings.s3_prefix,
            create_bucket=settings.s3_create_bucket,
        )
        await s3.open()
        return s3
    storage = FilesystemStorage(settings.storage_root)
    await storage.open()
    return storage


def announce_first_admin(password: str) -> None:
    """Printed once, on the console only (never through logging)."""
    print(
        "\n"
        "  RelayPACS created the first administrator account.\n"
        "    username: admin\n"
        f"    password: {password}\n"
        "  This password is shown only this once: keep it now.\n",
        file=sys.stderr,
        flush=True,
    )


async def open_revocations(settings: Settings, db: Database) -> Revocations:
    """Redis when configured; else this process's memory on SQLite (one process), the
    database on PostgreSQL (there may be several replicas)."""
    database = DatabaseRevocations(db.read_sessionmaker)
    # As long as an access token lives, plus the decoding leeway.
    ttl = dt.timedelta(minutes=settings.access_token_minutes, seconds=30)
    if settings.redis_url:
        store = RedisRevocations(
            connect_redis(settings.redis_url),
            prefix=settings.redis_prefix,
            ttl=ttl,
            session_ttl=dt.timedelta(minutes=settings.refresh_absolute_minutes),
            database=database,
        )
        await store.ensure_complete()
        return store
    if settings.is_sqlite:
        memory = MemoryRevocations(ttl, database)
        await memory.revoke(await database.recently_revoked(ttl))  # from before a restart
        return memory
    return database


def open_validator(settings: Settings) -> DicomValidator:
    # No warm start: workers start on demand (~0.3 s of CPU), or when an uploader signs in
    # (validator.warm), and stop when no study has been verified for dicom_idle_seconds.
    return DicomValidator(
        DicomLimits(
            max_inflated_bytes=settings.dicom_max_inflated_mb << 20,
            timeout_seconds=settings.dicom_timeout_seconds,
            memory_bytes=settings.dicom_memory_mb << 20,
        ),
        workers=settings.dicom_workers,
        idle_seconds=settings.dicom_idle_seconds,
    )


def open_mailer(settings: Settings, db: Database) -> Mailer | None:
    """Email, where SMTP is configured (RELAYPACS_SMTP_HOST)."""
    if settings.smtp_host is None:
        return None
    return Mailer(
        SmtpSettings(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            timeout=settings.smtp_timeout_seconds,
            retry_delays=tuple(settings.smtp_retry_delays),
            max_attempts=settings.smtp_max_attempts,
            poll_seconds=settings.smtp_poll_seconds,
            public_url=settings.public_url,
        ),
        db.sessionmaker,
    )


def open_report_when_delivered(settings: Settings) -> SettleHook:
    """Settle hook of the forwarder: a delivered study awaits its report (assigned at once by
    the rule with RELAYPACS_REPORT_AUTO_ASSIGN)."""

    async def hook(session: AsyncSession, settled: Settlement) -> None:
        if settled.delivered:
            await open_report(
                session, upload_id=settled.upload_id, auto_assign=settings.report_auto_assign
            )

    return hook


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app_settings(app)
    check_policy(app)  # again: a route added after create_app must have its entry too
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    init_sentry(settings)
    process_started()
    if settings.auto_migrate:
        await upgrade_in_subprocess(settings.resolved_database_url)
    db = Database.open(settings.resolved_database_url)
    # Before any session is made: committed notifications are pushed to the open streams.
    notice_hub = NoticeHub(redis_url=settings.redis_url, channel=f"{settings.redis_prefix}notices")
    notice_hub.attach(db.sessionmaker)
    mailer = open_mailer(settings, db)
    if mailer is not None:
        mailer.attach(db.sessionmaker)  # notices write their email's outbox row
        notice_hub.on_committed.append(mailer.committed)
        await mailer.start()
    await notice_hub.start()
    signing_keys = KeyRing(settings.signing_key(), settings.previous_signing_keys())
    revocations = await open_revocations(settings, db)
    rate_limits = RateLimits(settings)
    storage = await open_storage(settings)
    validator = open_validator(settings)
    early_verifier = EarlyVerifier(storage, validator)
    target = settings.default_target_name
    forwarder: Forwarder | None = None
    if target is None:
        logger.warning(
            "no PACS target is configured (RELAYPACS_PACS_URL): accepted studies are kept "
            "and not forwarded"
        )
    elif settings.forward_worker:
        forwarder = Forwarder(
            sessionmaker=db.sessionmaker,
            storage=storage,
            settings=settings,
            engine=db.engine,
            sync_engine=db.sync_engine,
            source=UploadRelay(),
            settle_hooks=(open_report_when_delivered(settings), notify_uploader),
            report_source=ReportWriteBack(settings, storage),
        )
        await forwarder.start()
    state = AppState(
        settings=settings,
        db=db,
        storage=storage,
        validator=validator,
        signing_keys=signing_keys,
        totp_cipher=TotpCipher(settings.totp_key(), settings.previous_totp_keys()),
        revocations=revocations,
        token_context=TokenContext(
            settings=settings, signing_keys=signing_keys, revocations=revocations
        ),
        user_loader=user_loader(db),
        rate_limits=rate_limits,
        upload_limits=UploadLimits(
            chunk_size=settings.chunk_size,
            max_files=settings.max_files_per_upload,
            max_file_size=settings.max_file_size,
        ),
        chunk_intake=ChunkIntake(
            db=db,
            facts=UploadFactsCache(),
            # The group commit's executor (SQLite: the driver's connection), chosen once.
            recorder=ChunkRecorder(chunk_row_writer(db)),
            early=early_verifier,
            bodies=BodyBudget(
                total=settings.chunk_buffer_mb * MiB,
                per_user=int(settings.chunk_buffer_mb * MiB * settings.chunk_buffer_user_share),
            ),
            body_idle_seconds=settings.chunk_body_idle_seconds,
            # A chunk batch: as many bytes as the largest chunk, and its header (uploads.batches).
            batch_max_bytes=settings.chunk_size + BATCH_FRAMING,
        ),
        early_verifier=early_verifier,
        complete_context=CompleteContext(
            db=db,
            storage=storage,
            verifier=StudyVerifier(
                storage=storage,
                validator=validator,
                spool_dir=settings.spool_dir,
                concurrency=settings.dicom_workers * 2,
                early=early_verifier,
            ),
            default_target=target,
            strict_targets=frozenset(t.name for t in settings.pacs_targets if t.all_or_nothing),
            on_queued=forwarder.wake if forwarder else None,
        ),
        forwarder=forwarder,
        health=HealthChecks.build(settings, storage),
        notice_hub=notice_hub,
    )
    app.state.gateway = state
    pipeline: Pipeline | None = None
    pacs = next((t for t in settings.pacs_targets if t.name == target), None)
    if settings.pipeline and pacs is not None:
        pipeline = Pipeline(
            db=db,
            target=target,
            strict_targets=state.complete_context.strict_targets,
            on_queued=forwarder.wake if forwarder else None,
            wake_at=pacs.batch_instances,  # a full request
            flush_at=pacs.batch_instances * pacs.max_in_flight,  # what one pass sends at once
        )
        if pipeline.active:
            early_verifier.on_verified = pipeline.verified
    password = await ensure_first_admin(db.sessionmaker)
    if password is not None:
        announce_first_admin(password)
    scheduler = build_scheduler(settings, db, storage) if settings.scheduler else None
    if scheduler is not None:
        await scheduler.start()
    try:
        yield
    finally:
        if scheduler is not None:
            await scheduler.stop()
        if forwarder is not None:
            await forwarder.stop()
        await notice_hub.stop()
        if mailer is not None:
            await mailer.stop()
        if pipeline is not None:
            await pipeline.close()
        await early_verifier.close()
        await validator.close()
        await storage.close()
        await revocations.close()
        await rate_limits.close()
        await db.close()
        await state.health.close()
        close_sentry()
        process_stopped()


def database_unreachable(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached (down, restarting, the connection
    lost), rather than a bug: a connection error of the driver, SQLSTATE class 08 or 57P0x, or
    a socket error raised from inside SQLAlchemy or asyncpg."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc.orig, OSError):
            return True
        for cause in (exc.orig, exc.orig.__cause__ if exc.orig else None):
            sqlstate = getattr(cause, "sqlstate", None)
            if isinstance(sqlstate, str) and (
                sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03")
            ):
                return True
        return False
    if isinstance(exc, OSError):
        frames = traceback.extract_tb(exc.__traceback__)
        return any(
            f"{sep}sqlalchemy{sep}" in frame.filename or f"{sep}asyncpg{sep}" in frame.filename
            for frame in frames
            for sep in ("/", "\\")
        )
    return False


def _database_unavailable(exc: BaseException) -> JSONResponse:
    DATABASE_UNAVAILABLE.inc()
    # The type only: a driver's message may quote the statement's parameters.
    logger.warning("database unreachable (%s): answered 503", type(exc).__name__)
    return JSONResponse(
        _error_body(
            "database_unavailable",
            "The gateway's database is unreachable; nothing acknowledged was lost, try again "
            "shortly.",
        ),
        status_code=503,
        headers={"Retry-After": "5"},
    )


def _error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        if exc.denial is not None or isinstance(exc, Forbidden):
            await record_denial(request, exc)
        return JSONResponse(
            _error_body(exc.code, exc.message, exc.details),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        return JSONResponse(
            _error_body("invalid_request", "The request is not valid.", {"problems": problems}),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "request_too_large",
        }
        return JSONResponse(
            _error_body(codes.get(exc.status_code, "http_error"), str(exc.detail)),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(StorageError)
    async def _storage_error(_request: Request, exc: StorageError) -> JSONResponse:
        logger.warning("object storage error: %s", type(exc).__name__)
        return JSONResponse(
            _error_body(
                "storage_unavailable",
                "The gateway's storage is unavailable; nothing was lost, try again shortly.",
            ),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(StorageFull)
    async def _storage_full(_request: Request, exc: StorageFull) -> JSONResponse:
        STORAGE_FULL.inc()
        logger.error(
            "object storage is full: %s; writes are refused (507) until there is room", exc
        )
        return JSONResponse(
            _error_body(
                "storage_full",
                "The gateway's storage is full; this chunk was not kept (every chunk acknowledged "
                "before is). Try again later: an operator has been alerted.",
            ),
            status_code=507,
            headers={"Retry-After": "60"},
        )

    @app.exception_handler(StorageMissing)
    async def _storage_missing(_request: Request, exc: StorageMissing) -> JSONResponse:
        logger.error("object storage is missing: %s; an operator must restore it", exc)
        return JSONResponse(
            _error_body(
                "storage_missing",
                "The gateway's object storage (its bucket) does not exist; waiting will not fix "
                "it: an operator must restore it.",
            ),
            status_code=503,
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        if not database_unreachable(exc):
            raise exc
        return _database_unavailable(exc)

    @app.exception_handler(OSError)
    async def _os_error(_request: Request, exc: OSError) -> JSONResponse:
        # asyncpg's connect raises the socket's own error (ConnectionRefusedError...), unwrapped
        if not database_unreachable(exc):
            raise exc
        return _database_unavailable(exc)

    @app.exception_handler(SqlalchemyTimeout)
    async def _pool_exhausted(_request: Request, exc: SqlalchemyTimeout) -> JSONResponse:
        logger.warning("no database connection free within the pool timeout: refused (503)")
        return JSONResponse(
            _error_body(
                "database_busy",
                "The gateway is too busy to answer now; nothing was lost, try again shortly.",
            ),
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(_request: Request, _exc: ClientDisconnect) -> Response:
        # The client went away before its body had arrived (a cut link): nothing wrong here and
        # no one to answer. Counted as 499, nginx's "client closed request", so that the cuts
        # of clinics' links neither show as server errors nor page anyone.
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _exc: Exception) -> JSONResponse:
        # Generic on purpose: no message, type, path or trace of the error leaves the process.
        # HttpSurface logs it (type and frames, never its message: it may carry patient data).
        body = _error_body("internal_error", "An unexpected error occurred; it has been logged.")
        body["error"]["request_id"] = getattr(request.state, "request_id", None)
        return JSONResponse(body, status_code=500)


class GatewayApp(FastAPI):
    """FastAPI with the HTTP surface (relaypacs/middleware.py) around everything, Starlette's error
    middleware included, so that even a 500 carries the security headers."""

    docs_csp: str | None = None  # with the API documentation on (relaypacs/apidocs.py)

    def build_middleware_stack(self) -> ASGIApp:
        settings = app_settings(self)
        return HttpSurface(
            super().build_middleware_stack(),
            max_body=settings.max_request_body,
            body_limit=self._body_limit,
            describe=lambda scope: app_policy(self).describe(scope),
            template=lambda scope: app_policy(self).template(scope),
            trusted_proxies=settings.trusted_proxies,
            docs=(DOCS_PATH, self.docs_csp) if self.docs_csp else None,
        )

    def _body_limit(self, method: str, path: str) -> int | None:
        """The largest body of a request (see Rule.body); None: the endpoint checks it."""
        settings = app_settings(self)
        limit = app_policy(self).body_limit(method, path)
        if limit == "own":
            return None
        if limit == "manifest":
            return manifest_limit(settings)
        return settings.max_request_body


def manifest_limit(settings: Settings) -> int:
    """The largest manifest (POST /uploads) the settings allow: up to 1.5 KiB per file (a
    255-character name in UTF-8, its SHA-256, its size) and 64 KiB for the rest."""
    return max(settings.max_request_body, 64 * 1024 + settings.max_files_per_upload * 1536)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = GatewayApp(
        title="RelayPACS Gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        openapi_url=OPENAPI_PATH if settings.api_docs else None,
        redoc_url=None,
        # Who may call what (relaypacs/auth/policy.py), before anything else of every route.
        dependencies=[Depends(authorize)],
    )
    app.state.settings = settings
    if settings.api_docs:
        app.docs_csp = install_api_docs(app)
    install_error_handlers(app)
    document_errors(app)
    if settings.cors_origins:
        app.add_middleware(
            StrictCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Content-MD5", "Content-Digest"],
            expose_headers=["X-Request-ID", "Retry-After"],
            allow_credentials=True,  # the refresh cookie; only ever for the listed origins
            max_age=600,
        )

    @app.get(f"{API_PREFIX}/health", tags=["health"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    # First: the route of every chunk is the first one the router tries.
    app.include_router(chunk_router, prefix=API_PREFIX)
    app.include_router(auth_router, prefix=API_PREFIX)
    app.include_router(uploads_router, prefix=API_PREFIX)
    app.include_router(read_router, prefix=API_PREFIX)
    app.include_router(admin_router, prefix=API_PREFIX)
    app.include_router(users_router, prefix=API_PREFIX)
    app.include_router(ops_router)
    app.include_router(reports_router, prefix=API_PREFIX)
    app.include_router(reports_admin_router, prefix=API_PREFIX)
    app.include_router(upload_timeline_router, prefix=API_PREFIX)
    app.include_router(notifications_router, prefix=API_PREFIX)
    app.include_router(stats_router, prefix=API_PREFIX)
    if (web_dir := settings.resolved_web_dir) is not None:
        # The fallback of the router: only a request that no route takes (even one added later)
        # reaches the web app's files. It holds no data; the API checks every call.
        app.router.default = WebApp(web_dir)
    check_policy(app)  # every route has an entry, or the app is not built
    return app
