"""Gateways for the operations tests: in-process apps with their own settings, and helpers."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.config import Settings
from relaypacs.main import create_app
from relaypacs.state import app_state
from tests.api.conftest import CHUNK_SIZE, PASSWORD, Account
from tests.conftest import unique_name

SIGNING_KEY = "ops-test-signing-key-" + "z" * 32


def ops_settings(data_dir: Path, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "data_dir": data_dir,
        "chunk_size": CHUNK_SIZE,
        "dicom_workers": 1,
        "secret_key": SIGNING_KEY,
        "totp_required_roles": [],
        "rate_limit_login_ip": "100000/minute",
    }
    options.update(overrides)
    return Settings(**options)


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def client_of(app: FastAPI, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


async def account(app: FastAPI, client: httpx.AsyncClient, role: Role = Role.CLINICIAN) -> Account:
    username = unique_name(role.value)
    async with app_state(app).db.sessionmaker() as session, session.begin():
        await create_user(session, username=username, password=PASSWORD, role=role)
    response = await client.post(
        "/api/v1/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return Account(username, role, response.json()["access_token"])


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released: refused connections)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung dependency)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text exposition (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
