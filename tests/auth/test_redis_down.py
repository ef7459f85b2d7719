"""Redis stopped, then back empty: logins keep working and a revoked token is never accepted.

Two gateway apps (two replicas) share PostgreSQL and a redis-server of this test's own, which
the test stops and starts again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from relaypacs.auth import security
from relaypacs.main import create_app
from relaypacs.redisconn import RETRY_AFTER_FAILURE
from relaypacs.state import app_state
from tests.auth.conftest import (
    API,
    bearer,
    client_for,
    identity_settings,
    make_user,
    redis_prefix,
    signed_in,
)
from tests.servers import RedisServer, redis_server


@dataclass
class Pair:
    a: FastAPI
    b: FastAPI
    client_a: httpx.AsyncClient
    client_b: httpx.AsyncClient
    redis: RedisServer
    prefix: str


@pytest.fixture
async def pair(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    prefix = redis_prefix()
    with redis_server() as server:
        async with AsyncExitStack() as stack:
            apps = []
            for name in ("a", "b"):
                settings = identity_settings(
                    tmp_path_factory.mktemp(f"redisdown-{name}"),
                    postgres_url,
                    redis_url=server.url,
                    redis_prefix=prefix,
                    totp_required_roles=[],
                )
                app = create_app(settings)
                await stack.enter_async_context(app.router.lifespan_context(app))
                apps.append(app)
            client_a = await stack.enter_async_context(client_for(apps[0]))
            client_b = await stack.enter_async_context(client_for(apps[1]))
            yield Pair(apps[0], apps[1], client_a, client_b, server, prefix)


async def _me(client: httpx.AsyncClient, token: str) -> int:
    return (await client.get(f"{API}/auth/me", headers=bearer(token))).status_code


async def _logout(client: httpx.AsyncClient, token: str) -> None:
    response = await client.post(f"{API}/auth/logout", headers=bearer(token))
    assert response.status_code == 204


class TestRedisDown:
    async def test_revoked_tokens_stay_dead_and_logins_keep_working(self, pair: Pair) -> None:
        one, two = await make_user(pair.a), await make_user(pair.a)
        s1 = await signed_in(pair.client_a, one)
        s2 = await signed_in(pair.client_a, one)
        s3 = await signed_in(pair.client_a, one)
        t = await signed_in(pair.client_a, two)
        await _logout(pair.client_a, s1["access_token"])
        assert await _me(pair.client_b, s1["access_token"]) == 401

        pair.redis.stop()
        # Revoked before: still refused (the database answers instead).
        assert await _me(pair.client_b, s1["access_token"]) == 401
        # Live tokens still work, and so do logins and refreshes.
        assert await _me(pair.client_b, s2["access_token"]) == 200
        fresh = await signed_in(pair.client_b, two)
        assert await _me(pair.client_a, fresh["access_token"]) == 200
        refreshed = await pair.client_b.post(
            f"{API}/auth/refresh", json={"refresh_token": t["refresh_token"]}
        )
        assert refreshed.status_code == 200
        # Revoked while Redis is down: refused everywhere at once. Redis could not be told,
        # so the user's token version went up: all of their sessions end (fail closed).
        await _logout(pair.client_a, s2["access_token"])
        for client in (pair.client_a, pair.client_b):
            assert await _me(client, s2["access_token"]) == 401
            assert await _me(client, s3["access_token"]) == 401
            assert await _me(client, s1["access_token"]) == 401
        # Another user is not affected.
        assert await _me(pair.client_b, refreshed.json()["access_token"]) == 200

        # Redis back, empty (no persistence): nothing revoked is accepted, and the
        # revocations are copied back into it.
        pair.redis.start()
        await asyncio.sleep(RETRY_AFTER_FAILURE + 0.5)  # the breakers try Redis again
        for client in (pair.client_b, pair.client_a):
            assert await _me(client, s1["access_token"]) == 401
            assert await _me(client, s2["access_token"]) == 401
            assert await _me(client, s3["access_token"]) == 401
        assert await _me(pair.client_b, refreshed.json()["access_token"]) == 200
        sid1 = security.decode_access_token(
            s1["access_token"], key=app_state(pair.a).signing_key
        ).session_id
        redis = Redis.from_url(pair.redis.url)
        try:
            for _ in range(50):
                if await redis.exists(f"{pair.prefix}revoked:{sid1.hex}"):
                    break
                await asyncio.sleep(0.1)
            assert await redis.exists(f"{pair.prefix}revoked:{sid1.hex}")
            assert await redis.exists(f"{pair.prefix}revocations-complete")
        finally:
            await redis.aclose()
        assert await _me(pair.client_b, s1["access_token"]) == 401

    async def test_login_rate_limits_still_apply_without_redis(self, pair: Pair) -> None:
        person = await make_user(pair.a)
        pair.redis.stop()
        async with client_for(pair.a) as attacker:
            statuses = [
                (
                    await attacker.post(
                        f"{API}/auth/login",
                        json={"username": person.username, "password": f"guess {i}"},
                    )
                ).status_code
                for i in range(4)
            ]
        assert statuses == [401, 401, 401, 429]
        ok = await pair.client_a.post(
            f"{API}/auth/login", json={"username": person.username, "password": person.password}
        )
        assert ok.status_code == 200
