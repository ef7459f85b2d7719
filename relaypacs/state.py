"""The running gateway's state: one typed object that the lifespan builds (database, stores,
caches, workers), and the FastAPI dependencies through which routes reach its parts.

Routes never read `request.app.state` themselves: they name what they need
(`state: AppStateDep`, `session: SessionDep`, `storage: StorageDep`), and services take those
parts as typed arguments. The domain classes are imported for the type checker only: at run time
this module sits below every domain (the import contracts in pyproject.toml say so)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.config import Settings
from relaypacs.db import Database
from relaypacs.dicom import DicomValidator
from relaypacs.storage import ObjectStorage

if TYPE_CHECKING:
    from relaypacs.auth.repository import UserLoader
    from relaypacs.auth.revocation import Revocations
    from relaypacs.auth.security import KeyRing
    from relaypacs.auth.sessions import TokenContext
    from relaypacs.auth.totp import TotpCipher
    from relaypacs.forwarding.worker import Forwarder
    from relaypacs.notifications.live import NoticeHub
    from relaypacs.ops.service import HealthChecks
    from relaypacs.ratelimit import RateLimits
    from relaypacs.uploads.chunks import ChunkIntake
    from relaypacs.uploads.completion import CompleteContext
    from relaypacs.uploads.early import EarlyVerifier
    from relaypacs.uploads.service import UploadLimits


@dataclass(eq=False, kw_only=True)
class AppState:
    """Everything a running gateway holds, built once by the lifespan (relaypacs/main.py)."""

    settings: Settings
    db: Database
    storage: ObjectStorage
    validator: DicomValidator
    # identity
    signing_keys: KeyRing  # the current key signs; it and the previous ones verify
    totp_cipher: TotpCipher
    revocations: Revocations
    token_context: TokenContext
    user_loader: UserLoader  # the user of each request (SQLite: one plain statement)
    rate_limits: RateLimits
    # uploads
    upload_limits: UploadLimits
    chunk_intake: ChunkIntake  # the chunk PUT's parts, reached without dependency resolution
    early_verifier: EarlyVerifier
    complete_context: CompleteContext
    # forwarding: None when no PACS is configured or this process runs no worker
    forwarder: Forwarder | None
    # operations: the readiness checks' own clients (Redis, each PACS)
    health: HealthChecks
    # notifications: pushed live to open streams (across replicas through Redis)
    notice_hub: NoticeHub

    @property
    def signing_key(self) -> str:
        """The key new tokens are signed with."""
        return self.signing_keys.current


def app_state(app: FastAPI) -> AppState:
    """The state of a started app (inside its lifespan)."""
    state = getattr(app.state, "gateway", None)
    if not isinstance(state, AppState):
        raise RuntimeError("the gateway is not started: its state exists inside the lifespan")
    return state


def app_settings(app: FastAPI) -> Settings:
    """The settings, known from create_app on (before the lifespan starts)."""
    settings = getattr(app.state, "settings", None)
    if not isinstance(settings, Settings):
        raise RuntimeError("the app was not built by create_app")
    return settings


def get_app_state(request: Request) -> AppState:
    return app_state(request.app)


async def _app_state_dependency(request: Request) -> AppState:
    return app_state(request.app)


# Dependencies are coroutines: FastAPI runs a plain `def` one in a worker thread (a thread hop
# per request); the plain functions above are for code that has the request at hand.
AppStateDep = Annotated[AppState, Depends(_app_state_dependency)]


async def get_storage(state: AppStateDep) -> ObjectStorage:
    return state.storage


async def get_database(state: AppStateDep) -> Database:
    return state.db


StorageDep = Annotated[ObjectStorage, Depends(get_storage)]
DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_session(state: AppStateDep) -> AsyncIterator[AsyncSession]:
    """The request owns the transaction: committed on success, rolled back on error."""
    async with state.db.sessionmaker() as session, session.begin():
        yield session


async def get_read_session(state: AppStateDep) -> AsyncIterator[AsyncSession]:
    """A read-only session (see relaypacs.db.create_sessionmaker)."""
    async with state.db.read_sessionmaker() as session, session.begin():
        yield session


# scope="function": the transaction commits when the endpoint returns, before the response is
# sent. (The default, "request", would commit after the response: a client could see 201 and
# then not find what it was told was created, or a failed commit would follow a success.)
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]
