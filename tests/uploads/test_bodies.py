"""Chunk bodies in memory (relaypacs/uploads/bodies.py): each user holds at most their share of
the budget, so one whose chunks trickle in never holds up another; a body that stops arriving
is given up with a 408 `body_stalled`, and the chunk sent again is stored."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import select
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from relaypacs.uploads.bodies import BodyBudget
from tests.gateway import create_user, run_gateway

PASSWORD = "a long test password"
CHUNK = 64 * 1024


class TestBudget:
    async def test_a_user_past_their_share_waits_and_the_others_go_on(self) -> None:
        budget = BodyBudget(total=10, per_user=4)
        alice, bob = uuid.uuid4(), uuid.uuid4()
        async with budget.hold(alice, 4):
            more = asyncio.create_task(self._hold(budget, alice, 1))
            await asyncio.sleep(0.05)
            assert not more.done()  # alice's share is taken
            async with budget.hold(bob, 4):  # bob is not held up by alice
                assert budget.used == 8
            assert not more.done()
        await asyncio.wait_for(more, 1)  # alice's own release lets her next body in
        assert budget.used == 0

    async def test_the_total_is_shared_and_a_body_alone_always_fits(self) -> None:
        budget = BodyBudget(total=10, per_user=8)
        users = [uuid.uuid4() for _ in range(3)]
        async with budget.hold(users[0], 6):
            third = asyncio.create_task(self._hold(budget, users[1], 6))
            await asyncio.sleep(0.05)
            assert not third.done()  # 6 + 6 > 10
        await asyncio.wait_for(third, 1)
        async with budget.hold(users[2], 50):  # larger than the budget, alone: it fits
            assert budget.used == 50

    async def test_a_cancelled_wait_takes_nothing(self) -> None:
        budget = BodyBudget(total=4, per_user=4)
        alice = uuid.uuid4()
        async with budget.hold(alice, 4):
            waiting = asyncio.create_task(self._hold(budget, alice, 4))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        assert budget.used == 0

    @staticmethod
    async def _hold(budget: BodyBudget, user: uuid.UUID, size: int) -> None:
        async with budget.hold(user, size):
            pass


def _login(base: str, username: str) -> dict[str, str]:
    answer = httpx.post(
        f"{base}/api/v1/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _start(base: str, headers: dict[str, str], data: bytes) -> str:
    manifest = {
        "study_instance_uid": f"2.25.{uuid.uuid4().int}",
        "metadata": {"modality": "CT"},
        "files": [{"name": "IM0001.dcm", "size": len(data), "sha256": _sha256(data)}],
    }
    answer = httpx.post(f"{base}/api/v1/uploads", json=manifest, headers=headers)
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["id"])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def _stalled_put(
    base: str, headers: dict[str, str], upload_id: str, index: int, body: bytes
) -> socket.socket:
    """A chunk PUT whose body stops early: the headers and 1 KiB are sent, then nothing."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    request = (
        f"PUT /api/v1/uploads/{upload_id}/files/0/chunks/{index} HTTP/1.1\r\n"
        f"Host: {host}\r\nAuthorization: {headers['Authorization']}\r\n"
        f"Content-Length: {len(body)}\r\nContent-Digest: {_digest(body)}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    sock.sendall(request.encode() + body[:1024])
    return sock


def test_a_trickling_user_holds_only_their_share_and_a_stalled_body_is_given_up(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    env = {
        "RELAYPACS_CHUNK_SIZE": str(CHUNK),
        "RELAYPACS_CHUNK_BUFFER_MB": "1",  # 16 chunks of 64 KiB; a user's share: 4
        "RELAYPACS_CHUNK_BODY_IDLE_SECONDS": "3",
    }
    for name in ("alice", "bob"):
        create_user(data_dir, name, PASSWORD, env=env)
    alice_file, bob_file = os.urandom(20 * CHUNK), os.urandom(2 * CHUNK)
    with run_gateway(data_dir, env) as base:
        alice, bob = _login(base, "alice"), _login(base, "bob")
        alice_upload = _start(base, alice, alice_file)
        bob_upload = _start(base, bob, bob_file)
        # Alice's link stalls on 17 chunks at once: more than the whole budget.
        stalled = [
            _stalled_put(base, alice, alice_upload, i, alice_file[i * CHUNK : (i + 1) * CHUNK])
            for i in range(17)
        ]
        try:
            body = bob_file[:CHUNK]
            answer = httpx.put(
                f"{base}/api/v1/uploads/{bob_upload}/files/0/chunks/0",
                content=body,
                headers={**bob, "Content-Digest": _digest(body)},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            # Bob's chunk was stored while every one of Alice's still hung.
            readable, _, _ = select.select(stalled, [], [], 0)
            assert readable == []
            # Then Alice's stalled bodies are given up, with a code the client retries on.
            readable, _, _ = select.select(stalled, [], [], 30)
            assert readable, "no stalled body was given up"
            reply = readable[0].recv(65536).decode(errors="replace")
            assert reply.startswith("HTTP/1.1 408"), reply[:200]
            assert json.loads(reply.split("\r\n\r\n", 1)[1])["error"]["code"] == "body_stalled"
        finally:
            for sock in stalled:
                sock.close()
        # The chunk sent again, whole, is stored; nothing of the stalled ones was.
        body = alice_file[:CHUNK]
        answer = httpx.put(
            f"{base}/api/v1/uploads/{alice_upload}/files/0/chunks/0",
            content=body,
            headers={**alice, "Content-Digest": _digest(body)},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        status = httpx.get(f"{base}/api/v1/uploads/{alice_upload}", headers=alice).json()
        missing = status["files"][0]["missing_chunks"]
        assert missing == list(range(1, 20))


def test_a_body_cut_by_the_client_is_counted_as_the_client_s_not_as_a_server_error(
    tmp_path: Path,
) -> None:
    """A client whose connection drops mid-body (a cut link): 499 in the request metrics (the
    client closed the request), no "unexpected error" in the log and no error report; the
    chunk sent again is stored."""
    data_dir = tmp_path / "data"
    env = {"RELAYPACS_CHUNK_SIZE": str(CHUNK)}
    create_user(data_dir, "alice", PASSWORD, env=env)
    data = os.urandom(2 * CHUNK)
    log_path = tmp_path / "gateway.log"
    with run_gateway(data_dir, env, log_path=log_path) as base:
        alice = _login(base, "alice")
        upload = _start(base, alice, data)
        for index in range(2):
            part = data[index * CHUNK : (index + 1) * CHUNK]
            _stalled_put(base, alice, upload, index, part).close()
        route = "/api/v1/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}"
        counted: dict[str, float] = {}
        for _ in range(100):  # the gateway notices the closed connection on its next read
            metrics = httpx.get(f"{base}/metrics").text
            counted = {
                status: float(value)
                for line in metrics.splitlines()
                if line.startswith("relaypacs_http_request_duration_seconds_count{")
                and f'route="{route}"' in line
                for status, value in [
                    (line.split('status="', 1)[1].split('"', 1)[0], line.rsplit(" ", 1)[1])
                ]
            }
            if counted.get("499", 0) >= 2:
                break
            time.sleep(0.1)
        assert counted == {"499": 2.0}, counted
        body = data[:CHUNK]
        answer = httpx.put(
            f"{base}/api/v1/uploads/{upload}/files/0/chunks/0",
            content=body,
            headers={**alice, "Content-Digest": _digest(body)},
        )
        assert answer.status_code == 200, answer.text
    log = log_path.read_text(errors="replace")
    assert "unexpected error" not in log
    assert "ClientDisconnect" not in log
