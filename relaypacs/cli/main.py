"""The `relaypacs` command: serve, users, db, audit, upload."""

from __future__ import annotations

import asyncio
import atexit
import getpass
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from relaypacs import __version__

if TYPE_CHECKING:
    from fastapi import FastAPI

    from relaypacs.audit.chain import ChainReport
    from relaypacs.config import Settings


def _settings() -> Settings:
    # imported here: pydantic-settings costs ~0.5 s of start-up that `relaypacs upload` needs not
    from relaypacs.config import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        click.echo(f"relaypacs: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="relaypacs")
def cli() -> None:
    """RelayPACS Gateway: resumable, verified DICOM study uploads relayed to a PACS."""


# Third-party loggers that would write query parameters or message bodies into the log.
DATA_LOGGERS = (
    "httpx",
    "httpcore",
    "aiosqlite",
    "sqlalchemy.engine",
    "sqlalchemy.orm",
    "asyncpg",
    "botocore",
    "aiobotocore",
    "urllib3",
    "multipart",
    "python_multipart",
    "pydicom",
    "redis",
)


def _configure_logging(settings: Settings) -> None:
    from relaypacs.telemetry import configure_logging

    # httpx logs every request's URL at INFO: noise, and URLs carry study identifiers.
    # The others log SQL statements with their parameters, or HTTP bodies, at INFO or DEBUG:
    # patient data. They stay at WARNING whatever the level (tests/security/test_phi_logs.py).
    configure_logging(level=settings.log_level, fmt=settings.log_format, quiet=DATA_LOGGERS)


def worker_app() -> FastAPI:
    """The app of one worker process of `serve --workers N` (uvicorn imports it by this name in
    each process it starts): its own settings, from the same environment, and logging."""
    settings = _settings()
    _configure_logging(settings)
    from relaypacs.main import create_app

    return create_app(settings)


def _prepare_workers(settings: Settings) -> None:
    """Before the workers start: one metrics directory for all, the migrations and the first
    administrator done once (not raced by N processes), and the workers told so."""
    from relaypacs.telemetry.metrics import MULTIPROCESS_ENV, prepare_multiprocess_dir

    if not os.environ.get(MULTIPROCESS_ENV):
        metrics_dir = settings.data_dir / "metrics"
        prepare_multiprocess_dir(metrics_dir)
        os.environ[MULTIPROCESS_ENV] = str(metrics_dir)
    else:
        prepare_multiprocess_dir(Path(os.environ[MULTIPROCESS_ENV]))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.auto_migrate:
        from relaypacs.migrate import upgrade

        upgrade(settings.resolved_database_url)
        os.environ["RELAYPACS_AUTO_MIGRATE"] = "false"

    async def first_admin() -> str | None:
        from relaypacs.auth.service import ensure_first_admin
        from relaypacs.db import Database

        database = Database.open(settings.resolved_database_url)
        try:
            return await ensure_first_admin(database.sessionmaker)
        finally:
            await database.close()

    password = asyncio.run(first_admin())
    if password is not None:
        from relaypacs.main import announce_first_admin

        announce_first_admin(password)


@cli.command()
@click.option("--host", default=None, help="Bind address (default RELAYPACS_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default RELAYPACS_PORT or 8080).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes on one port (PostgreSQL only): about one per core.",
)
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Run the gateway (HTTP API and background work) in this process, or in N workers."""
    settings = _settings()  # before the heavy imports: a bad value is reported at once
    if workers > 1 and settings.is_sqlite:
        click.echo(
            "relaypacs: --workers needs PostgreSQL (RELAYPACS_DATABASE_URL="
            "postgresql+asyncpg://...). SQLite takes one writer at a time, and the embedded "
            "mode keeps revocations, rate limits and caches in one process's memory: run it "
            "with one worker.",
            err=True,
        )
        sys.exit(2)
    if workers > 1:
        # Before prometheus_client is imported anywhere: it picks its storage then.
        _prepare_workers(settings)
        from relaypacs.telemetry import process_started, process_stopped

        # The supervisor's own CPU and memory count in the gateway's process metrics too.
        process_started()
        atexit.register(process_stopped)

    import uvicorn

    _configure_logging(settings)
    host = host or settings.host
    port = port or settings.port
    click.echo(
        f"relaypacs {__version__}: data in {settings.data_dir.resolve()}, "
        f"database {'SQLite' if settings.is_sqlite else 'PostgreSQL'}, "
        f"storage {settings.storage}; listening on http://{host}:{port}"
        + (f" with {workers} workers" if workers > 1 else ""),
        err=True,
    )
    if workers > 1:
        app: Any = "relaypacs.cli.main:worker_app"  # each worker builds its own
    else:
        from relaypacs.main import create_app

        app = create_app(settings)
    uvicorn.run(
        app,
        factory=workers > 1,
        workers=workers if workers > 1 else None,
        host=host,
        port=port,
        log_level=settings.log_level,
        log_config=None,  # relaypacs.telemetry.configure_logging: one format for every line
        # Only the configured proxies may say who the client is (rate limits, audit).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        # relaypacs.middleware logs each request instead (without the query string).
        access_log=False,
        timeout_graceful_shutdown=10,
        # Only for the h11 parser. httptools (used when installed, as with uvicorn[standard])
        # has no limit on the header block; relaypacs.middleware caps it (431).
        h11_max_incomplete_event_size=64 * 1024,
    )


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply all database migrations."""
    from relaypacs.migrate import upgrade

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    click.echo("database schema is up to date", err=True)


@db.command("grant-app")
@click.argument("role")
def db_grant_app(role: str) -> None:
    """Give the gateway's own PostgreSQL ROLE what it needs and no more (run as the tables'
    owner, after `db upgrade`): it may only read and append to the audit log."""
    from relaypacs.migrate import grant_app_role

    try:
        grant_app_role(_settings().resolved_database_url, role)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"role {role} may use the gateway's tables (audit log: read and append)", err=True)


@cli.group()
def users() -> None:
    """User accounts."""


@users.command("create")
@click.argument("username")
@click.option(
    "--role",
    type=click.Choice(["clinician", "radiologist", "admin"]),
    default="clinician",
    show_default=True,
)
@click.option("--email", default=None)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (scripts)."
)
@click.option(
    "--generate-password", is_flag=True, help="Generate a random password and print it once."
)
def users_create(
    username: str, role: str, email: str | None, password_stdin: bool, generate_password: bool
) -> None:
    """Create a user account."""
    from relaypacs.auth.errors import UsernameTaken
    from relaypacs.auth.models import Role
    from relaypacs.auth.service import create_user
    from relaypacs.db import create_engine, create_sessionmaker
    from relaypacs.migrate import upgrade

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif generate_password:
        password = secrets.token_urlsafe(18)
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise click.ClickException("the passwords differ")
    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.auto_migrate:
        upgrade(settings.resolved_database_url)

    async def _create() -> None:
        engine = create_engine(settings.resolved_database_url)
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                await create_user(
                    session, username=username, password=password, role=Role(role), email=email
                )
        finally:
            await engine.dispose()

    try:
        asyncio.run(_create())
    except UsernameTaken:
        raise click.ClickException(f"the username {username!r} is taken") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {role} {username!r}", err=True)
    if generate_password:
        click.echo(password)


@users.command("reset-totp")
@click.argument("username")
def users_reset_totp(username: str) -> None:
    """Remove a user's TOTP (e.g. the only administrator lost their phone and codes): they
    enrol again at next login. Ends their sessions; audited."""
    from relaypacs.auth.service import reset_totp_by_username
    from relaypacs.db import create_engine, create_sessionmaker

    settings = _settings()

    async def _reset() -> bool:
        engine = create_engine(settings.resolved_database_url)
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                return await reset_totp_by_username(session, username)
        finally:
            await engine.dispose()

    if not asyncio.run(_reset()):
        raise click.ClickException(f"no user {username!r}")
    click.echo(f"TOTP removed for {username!r}; they enrol again at next login", err=True)


@users.command("rotate-totp-key")
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=200,
    show_default=True,
    help="Users per transaction.",
)
def users_rotate_totp_key(batch: int) -> None:
    """Encrypt every stored TOTP secret with the current RELAYPACS_TOTP_ENCRYPTION_KEY (the old
    key in RELAYPACS_TOTP_PREVIOUS_ENCRYPTION_KEYS). Safe to run again, and while the gateway
    runs; a run that stopped half-way is simply run again. Exit 1 if a secret could be read
    with none of the keys (reset those users' TOTP). Audited."""
    from relaypacs.auth.service import rotate_totp_secrets
    from relaypacs.auth.totp import TotpCipher
    from relaypacs.db import create_engine, create_sessionmaker

    settings = _settings()
    cipher = TotpCipher(settings.totp_key(), settings.previous_totp_keys())

    async def _rotate() -> Any:
        engine = create_engine(settings.resolved_database_url)
        try:
            return await rotate_totp_secrets(create_sessionmaker(engine), cipher, batch=batch)
        finally:
            await engine.dispose()

    report = asyncio.run(_rotate())
    click.echo(
        f"TOTP secrets: {report.rotated} re-encrypted with the current key, "
        f"{report.current} already were, {report.unreadable} unreadable",
        err=True,
    )
    if report.recovery_codes and settings.previous_totp_keys():
        click.echo(
            f"{report.recovery_codes} unused recovery codes: those made before the new key "
            "was configured work only while RELAYPACS_TOTP_PREVIOUS_ENCRYPTION_KEYS keeps the "
            "old key (recovery codes are one-way hashes and cannot be re-encrypted)",
            err=True,
        )
    if report.unreadable:
        click.echo(
            "relaypacs: some TOTP secrets are encrypted with a key that is not configured: add "
            "it to RELAYPACS_TOTP_PREVIOUS_ENCRYPTION_KEYS and run again, or reset those "
            "users' TOTP",
            err=True,
        )
        sys.exit(1)


@cli.group()
def audit() -> None:
    """The audit log."""


@audit.command("verify")
@click.option(
    "--head",
    "expected_head",
    default=None,
    metavar="ID:HASH",
    help="A chain head noted earlier (`audit head`, or the gateway's periodic log line): it "
    "must still be there, unchanged, or the log was truncated or rewritten since.",
)
def audit_verify(expected_head: str | None) -> None:
    """Walk the audit log's hash chain and name the first broken record. Exit 1 if broken."""
    from relaypacs.audit.repository import walk_log
    from relaypacs.db import create_engine

    head: tuple[int, str] | None = None
    if expected_head is not None:
        record_id, _, digest = expected_head.partition(":")
        if not record_id.isdigit() or len(digest) != 64:
            raise click.BadParameter("ID:HASH, e.g. 1234:9f86d081...", param_hint="--head")
        head = (int(record_id), digest)

    async def _walk() -> ChainReport:
        engine = create_engine(_settings().resolved_database_url)
        try:
            async with engine.connect() as connection:
                return await walk_log(connection, expected_head=head)
        finally:
            await engine.dispose()

    report = asyncio.run(_walk())
    if report.intact:
        click.echo(
            f"audit log intact: {report.records} records, head {report.head_id}:{report.head_hash}"
        )
        return
    click.echo(
        f"audit log BROKEN at record {report.broken_at}: {report.reason} "
        f"({report.records} records read)",
        err=True,
    )
    sys.exit(1)


def openapi_text() -> str:
    """The API's OpenAPI document as scripts/web.sh api-types stores it (web/src/lib/api)."""
    import json
    import tempfile
    from pathlib import Path

    from relaypacs.config import Settings
    from relaypacs.main import create_app

    with tempfile.TemporaryDirectory() as data_dir:  # built, never started: nothing is written
        settings = Settings(data_dir=Path(data_dir), secret_key="o" * 40, api_docs=True)
        document = create_app(settings).openapi()
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@cli.command("openapi")
def openapi_document() -> None:
    """Print the API's OpenAPI document (JSON), from which the web app's types are generated."""
    click.echo(openapi_text(), nl=False)


@cli.command("demo-study")
@click.argument("directory", type=click.Path(file_okay=False, writable=True))
@click.option("--instances", type=click.IntRange(1, 5000), default=60, show_default=True)
@click.option("--series", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--cd", is_flag=True, help="Lay it out as a CD export, with its DICOMDIR.")
def demo_study(directory: str, instances: int, series: int, cd: bool) -> None:
    """Write a realistic multi-series CT study of a made-up patient into DIRECTORY, to try the
    upload from the command line or the web app without any real patient data."""
    from pathlib import Path

    try:
        from relaypacs.devtools.synth import write_study
    except ImportError:  # numpy, a development dependency
        raise click.ClickException(
            "demo-study needs the development dependencies: scripts/bootstrap.sh"
        ) from None
    study = write_study(
        Path(directory),
        instances=instances,
        series=series,
        rows=512,
        columns=512,
        with_dicomdir=cd,
        nested=not cd,
        study_description="DEMO CT CHEST",
    )
    click.echo(
        f"wrote one study of {len(study.paths)} instances in {series} series "
        f"({study.total_bytes / 1e6:.1f} MB{', with a DICOMDIR' if cd else ''}) to {directory}",
        err=True,
    )


def _register_optional_commands() -> None:
    try:
        from relaypacs.cli.upload import upload
    except ImportError:  # the client is optional while it is being built
        return
    cli.add_command(upload)


_register_optional_commands()
