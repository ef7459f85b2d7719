"""The live stream (Server-Sent Events) from real gateway processes: across two replicas on one
PostgreSQL and one Redis, in one embedded process (SQLite, no Redis); Last-Event-ID replay,
heartbeats, the lifetime cap, one-time tickets, and nobody else's events."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.gateway import create_user, run_gateway
from tests.notifications.live import API, open_report_of, streaming, upload_study
from tests.security.live import PASSWORD, SECRET_KEY, LiveAccount
from tests.servers import redis_server

ROLES = {"clin": "clinician", "other": "clinician", "radio": "radiologist", "admin": "admin"}


@dataclass
class Replicas:
    bases: list[str]
    accounts: dict[str, LiveAccount]
    database_url: str

    async def report_assigned(self, via: int) -> tuple[str, str]:
        """A delivered study of `clin`, assigned to `radio` by `admin` through replica `via`:
        the radiologist's report_assigned notice is raised there. (report id, its upload)"""
        upload_id = await asyncio.to_thread(upload_study, self.bases[0], self.accounts["clin"])
        report_id = await open_report_of(self.database_url, upload_id)
        async with httpx.AsyncClient(base_url=self.bases[via], timeout=30) as client:
            response = await client.post(
                f"{API}/admin/reports/{report_id}/assign",
                json={"radiologist_id": self.accounts["radio"].id},
                headers=self.accounts["admin"].headers,
            )
        assert response.status_code == 200, response.text
        return report_id, upload_id


def _login(base: str, username: str) -> LiveAccount:
    login = httpx.post(f"{base}{API}/auth/login", json={"username": username, "password": PASSWORD})
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    me = httpx.get(f"{base}{API}/auth/me", headers={"Authorization": f"Bearer {token}"})
    return LiveAccount(username, me.json()["role"], me.json()["id"], token)


@contextlib.contextmanager
def replicas(root: Path, count: int, env: dict[str, str], database_url: str) -> Iterator[Replicas]:
    suffix = secrets.token_hex(4)
    env = {
        "RELAYPACS_SECRET_KEY": SECRET_KEY,
        "RELAYPACS_CHUNK_SIZE": str(256 * 1024),
        "RELAYPACS_TOTP_REQUIRED_ROLES": "[]",
        "RELAYPACS_SSE_HEARTBEAT_SECONDS": "0.5",
        "RELAYPACS_SSE_MAX_SECONDS": "30",
        **env,
    }
    for name, role in ROLES.items():
        create_user(root / "replica0", f"{name}-{suffix}", PASSWORD, role=role, env=env)
    with contextlib.ExitStack() as stack:
        bases = [
            stack.enter_context(
                run_gateway(root / f"replica{i}", env, log_path=root / f"replica{i}.log")
            )
            for i in range(count)
        ]
        accounts = {name: _login(bases[0], f"{name}-{suffix}") for name in ROLES}
        yield Replicas(bases, accounts, database_url)


@pytest.fixture(scope="module")
def two(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    with redis_server() as redis:
        env = {"RELAYPACS_DATABASE_URL": postgres_url, "RELAYPACS_REDIS_URL": redis.url}
        with replicas(root, 2, env, postgres_url) as running:
            yield running


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("embedded")
    url = f"sqlite+aiosqlite:///{root / 'gateway.db'}"
    with replicas(root, 1, {"RELAYPACS_DATABASE_URL": url}, url) as running:
        yield running


class TestAcrossReplicas:
    async def test_an_event_raised_on_one_replica_reaches_a_stream_on_the_other(
        self, two: Replicas
    ) -> None:
        radio = two.accounts["radio"]
        async with streaming(two.bases[1], headers=radio.headers) as reader:
            started = time.monotonic()
            report_id, _ = await two.report_assigned(via=0)
            await reader.wait_for(1)
            took = time.monotonic() - started
        event = reader.events[0]
        assert event["event"] == "notification"
        assert event["data"]["kind"] == "report_assigned"
        assert event["data"]["related_id"] == report_id
        assert event["id"] == event["data"]["id"]
        assert took < 10

    async def test_a_reconnection_with_last_event_id_gets_what_it_missed_once(
        self, two: Replicas
    ) -> None:
        radio = two.accounts["radio"]
        async with streaming(two.bases[1], headers=radio.headers) as reader:
            first, _ = await two.report_assigned(via=0)
            await reader.wait_for(1)
        last_seen = reader.ids()[-1]
        missed = [(await two.report_assigned(via=0))[0] for _ in range(2)]  # while away
        headers = {**radio.headers, "Last-Event-ID": last_seen}
        async with streaming(two.bases[0], headers=headers) as again:
            await again.wait_for(2)
            live, _ = await two.report_assigned(via=1)
            await again.wait_for(3)
            await asyncio.sleep(1.0)  # anything sent twice would have come by now
        related = [e["data"]["related_id"] for e in again.events]
        assert related == [*missed, live]
        assert first not in related
        assert len(set(again.ids())) == len(again.ids())

    async def test_a_one_time_ticket_opens_one_stream_on_any_replica(self, two: Replicas) -> None:
        radio = two.accounts["radio"]
        ticket = httpx.post(
            f"{two.bases[0]}{API}/notifications/stream-ticket", headers=radio.headers
        )
        assert ticket.status_code == 200, ticket.text
        assert ticket.json()["expires_in"] == 30
        query = f"?ticket={ticket.json()['ticket']}"
        async with streaming(two.bases[1], headers={}, query=query) as reader:
            report_id, _ = await two.report_assigned(via=0)
            await reader.wait_for(1)
        assert reader.events[0]["data"]["related_id"] == report_id
        for base in two.bases:  # used: refused everywhere
            async with streaming(base, headers={}, query=query) as used:
                pass
            assert used.status == 401, used.body
            assert '"not_authenticated"' in used.body
        # An access token is not a ticket; nothing at all is a 401.
        token = f"?ticket={radio.token}"
        async with streaming(two.bases[0], headers={}, query=token) as wrong:
            pass
        assert wrong.status == 401
        async with streaming(two.bases[0], headers={}) as nothing:
            pass
        assert nothing.status == 401

    async def test_another_users_events_never_reach_my_stream(self, two: Replicas) -> None:
        other = two.accounts["other"]
        radio = two.accounts["radio"]
        async with (
            streaming(two.bases[1], headers=other.headers) as theirs,
            streaming(two.bases[1], headers=radio.headers) as mine,
        ):
            await two.report_assigned(via=0)
            await mine.wait_for(1)
            await asyncio.sleep(1.0)
        assert theirs.events == []
        # Another user's event id replays nothing either.
        headers = {**other.headers, "Last-Event-ID": mine.ids()[0]}
        async with streaming(two.bases[0], headers=headers) as replayed:
            await asyncio.sleep(1.0)
        assert replayed.events == []


class TestEmbedded:
    async def test_in_one_process_without_redis(self, embedded: Replicas) -> None:
        radio = embedded.accounts["radio"]
        async with streaming(embedded.bases[0], headers=radio.headers) as reader:
            report_id, _ = await embedded.report_assigned(via=0)
            await reader.wait_for(1)
            await asyncio.sleep(1.2)  # heartbeats every 0.5 s
        assert reader.events[0]["data"]["related_id"] == report_id
        assert reader.comments.count("heartbeat") >= 1


class TestLifetime:
    async def test_a_stream_ends_after_its_lifetime(self, tmp_path: Path) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
        with replicas(
            tmp_path, 1, {"RELAYPACS_DATABASE_URL": url, "RELAYPACS_SSE_MAX_SECONDS": "2"}, url
        ) as one:
            started = time.monotonic()
            async with streaming(one.bases[0], headers=one.accounts["clin"].headers) as reader:
                async with asyncio.timeout(10):
                    while not reader.ended:
                        await asyncio.sleep(0.05)
            assert 1.5 < time.monotonic() - started < 10
            assert reader.status == 200
