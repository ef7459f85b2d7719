"""The `relaypacs` command: serve, users, db, upload."""

from __future__ import annotations

import asyncio
import getpass
import logging
import secrets
import sys
from typing import TYPE_CHECKING

import click

from relaypacs import __version__

if TYPE_CHECKING:
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


@cli.command()
@click.option("--host", default=None, help="Bind address (default RELAYPACS_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default RELAYPACS_PORT or 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Run the gateway (HTTP API and background work) in this process."""
    settings = _settings()  # before the heavy imports: a bad value is reported at once

    import uvicorn

    from relaypacs.main import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # httpx logs every request's URL at INFO: noise, and URLs carry study identifiers.
    # The others log SQL statements with their parameters, or HTTP bodies, at INFO or DEBUG:
    # patient data. They stay at WARNING whatever the level (tests/security/test_phi_logs.py).
    for name in DATA_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    host = host or settings.host
    port = port or settings.port
    click.echo(
        f"relaypacs {__version__}: data in {settings.data_dir.resolve()}, "
        f"database {'SQLite' if settings.is_sqlite else 'PostgreSQL'}, "
        f"storage {settings.storage}; listening on http://{host}:{port}",
        err=True,
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level,
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


def _register_optional_commands() -> None:
    try:
        from relaypacs.cli.upload import upload
    except ImportError:  # the client is optional while it is being built
        return
    cli.add_command(upload)


_register_optional_commands()
