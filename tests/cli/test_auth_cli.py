"""``relaypacs upload`` and the gateway's sessions: TOTP sign-in, refresh during a long upload,
logout at the end, no secret in any output. Real ``relaypacs serve`` processes, the CLI as a
subprocess (and GatewayClient in-process where the timing must be controlled)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import pty
import re
import secrets
import select
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from relaypacs.client import GatewayClient, RetryPolicy, SecondFactorError
from relaypacs.devtools.synth import write_study
from tests.auth.conftest import previous_step_code
from tests.cli.conftest import CHUNK_SIZE
from tests.gateway import create_user, relaypacs_command, run_gateway, subprocess_env

API = "/api/v1"
# Access tokens of 3 s (the server accepts them 5 s longer: its JWT leeway).
SHORT_TOKEN_MINUTES = "0.05"
SHORT_TOKEN_SECONDS = 3
JWT_LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class Server:
    base_url: str
    data_dir: Path
    log_path: Path


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    id: str  # hex, as the database stores it
    secret: str | None = None  # TOTP
    recovery_codes: tuple[str, ...] = ()

    def code(self) -> str:
        """The current step's TOTP code (enrolment used the previous step's)."""
        assert self.secret is not None
        return pyotp.TOTP(self.secret).now()


def _start(root: Path, env: dict[str, str]) -> Iterator[Server]:
    data_dir = root / "data"
    log_path = root / "gateway.log"
    with run_gateway(data_dir, env, log_path=log_path) as base_url:
        yield Server(base_url, data_dir, log_path)


GATEWAY_ENV = {
    "RELAYPACS_CHUNK_SIZE": str(CHUNK_SIZE),
    # One failed password per account and address an hour: the next sign-in waits long.
    "RELAYPACS_RATE_LIMIT_LOGIN_ACCOUNT_IP": "1/hour",
}
SHORT_ENV = {
    **GATEWAY_ENV,
    "RELAYPACS_ACCESS_TOKEN_MINUTES": SHORT_TOKEN_MINUTES,
    # A slow upload, the same on any machine: 6 chunks a second (the others wait, 429).
    "RELAYPACS_RATE_LIMIT_UPLOAD_CHUNK": "6/second",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _start(tmp_path_factory.mktemp("auth-gateway"), GATEWAY_ENV)


@pytest.fixture(scope="module")
def short_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _start(tmp_path_factory.mktemp("short-gateway"), SHORT_ENV)


def new_account(server: Server, role: str, *, totp: bool, env: dict[str, str]) -> Account:
    """A user created as an administrator would; with ``totp``, enrolled through the API as
    the user would, confirming with the previous step's code (the current one stays unused)."""
    username = f"{role}-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    create_user(server.data_dir, username, password, role=role, env=env)
    with httpx.Client(base_url=server.base_url + API, timeout=30) as http:
        login = http.post("/auth/login", json={"username": username, "password": password})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        user_id = http.get("/auth/me", headers=headers).json()["id"]
        if not totp:
            http.post("/auth/logout", headers=headers)
            return Account(username, password, uuid_hex(user_id))
        enrolment = http.post("/auth/totp/enrol", json={"password": password}, headers=headers)
        assert enrolment.status_code == 200, enrolment.text
        secret = enrolment.json()["secret"]
        previous = previous_step_code(secret)
        confirm = http.post("/auth/totp/confirm", json={"code": previous}, headers=headers)
        assert confirm.status_code == 200, confirm.text
        http.post("/auth/logout", headers=headers)
        codes = tuple(confirm.json()["recovery_codes"])
    return Account(username, password, uuid_hex(user_id), secret, codes)


def uuid_hex(value: str) -> str:
    return value.replace("-", "")


def audit(
    server: Server, account: Account, since: int = 0
) -> list[tuple[str, str, dict[str, Any]]]:
    """(action, outcome, details) of the account's audit events, oldest first, from the
    ``since``-th on (``mark``: before the test's run)."""
    db = sqlite3.connect(f"file:{server.data_dir / 'relaypacs.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT action, outcome, details FROM audit_event WHERE actor_id = ? ORDER BY id",
            (account.id,),
        ).fetchall()
    finally:
        db.close()
    return [(action, outcome, json.loads(details or "{}")) for action, outcome, details in rows][
        since:
    ]


def mark(server: Server, account: Account) -> int:
    return len(audit(server, account))


def actions(
    server: Server, account: Account, action: str, outcome: str = "success", *, since: int = 0
) -> int:
    return sum(1 for a, o, _ in audit(server, account, since) if a == action and o == outcome)


def live_sessions(server: Server, account: Account) -> int:
    db = sqlite3.connect(f"file:{server.data_dir / 'relaypacs.db'}?mode=ro", uri=True)
    try:
        (count,) = db.execute(
            "SELECT count(*) FROM auth_session WHERE user_id = ? AND revoked_at IS NULL",
            (account.id,),
        ).fetchone()
    finally:
        db.close()
    return int(count)


def refresh_token_hashes(server: Server) -> set[str]:
    db = sqlite3.connect(f"file:{server.data_dir / 'relaypacs.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT token_hash FROM refresh_token")}
    finally:
        db.close()


@dataclass(frozen=True)
class Run:
    code: int
    summary: dict[str, Any]
    stderr: str
    seconds: float


def run_cli(
    server: Server,
    account: Account,
    state_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> Run:
    """``relaypacs upload --json ...`` as a script runs it: no terminal (stdin closed)."""
    started = time.monotonic()
    completed = subprocess.run(
        [*relaypacs_command(), "upload", "--json", *args],
        env=subprocess_env(
            {
                "RELAYPACS_SERVER": server.base_url,
                "RELAYPACS_USERNAME": account.username,
                "RELAYPACS_PASSWORD": account.password,
                "RELAYPACS_STATE_DIR": str(state_dir),
                **(env or {}),
            }
        ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        summary = json.loads(completed.stdout)
    except ValueError:
        raise AssertionError(
            f"stdout is not one JSON object:\n{completed.stdout}\n{completed.stderr}"
        ) from None
    return Run(completed.returncode, summary, completed.stderr, time.monotonic() - started)


class TestTotpSignIn:
    def test_radiologist_uploads_with_totp_code_and_the_session_ends(
        self, server: Server, tmp_path: Path
    ) -> None:
        account = new_account(server, "radiologist", totp=True, env=GATEWAY_ENV)
        write_study(tmp_path / "s", instances=3, rows=64, columns=64, seed=11)
        since = mark(server, account)
        state = tmp_path / "state"
        run = run_cli(server, account, state, str(tmp_path / "s"), "--totp-code", account.code())
        assert run.code == 0, (run.summary, run.stderr)
        assert [s["status"] for s in run.summary["studies"]] == ["validated"]
        events = audit(server, account, since)
        logins = [d for a, o, d in events if a == "auth.login" and o == "success"]
        assert [d.get("second_factor") for d in logins] == ["totp"]
        # A run is a session: signed out at the end.
        assert [a for a, _, _ in events if a.startswith("auth.")][-1] == "auth.logout"
        assert live_sessions(server, account) == 0

    def test_code_from_the_environment(self, server: Server, tmp_path: Path) -> None:
        account = new_account(server, "radiologist", totp=True, env=GATEWAY_ENV)
        write_study(tmp_path / "s", instances=2, rows=64, columns=64, seed=12)
        run = run_cli(
            server,
            account,
            tmp_path / "state",
            str(tmp_path / "s"),
            env={"RELAYPACS_TOTP_CODE": account.code()},
        )
        assert run.code == 0, (run.summary, run.stderr)
        assert run.summary["studies"][0]["status"] == "validated"

    def test_recovery_code(self, server: Server, tmp_path: Path) -> None:
        account = new_account(server, "radiologist", totp=True, env=GATEWAY_ENV)
        write_study(tmp_path / "s", instances=2, rows=64, columns=64, seed=13)
        since = mark(server, account)
        run = run_cli(
            server,
            account,
            tmp_path / "state",
            str(tmp_path / "s"),
            env={"RELAYPACS_RECOVERY_CODE": account.recovery_codes[0]},
        )
        assert run.code == 0, (run.summary, run.stderr)
        events = audit(server, account, since)
        logins = [d for a, o, d in events if a == "auth.login" and o == "success"]
        assert [d.get("second_factor") for d in logins] == ["recovery_code"]

    def test_no_code_without_a_terminal_exits_4_and_says_how(
        self, server: Server, tmp_path: Path
    ) -> None:
        account = new_account(server, "radiologist", totp=True, env=GATEWAY_ENV)
        write_study(tmp_path / "s", instances=1, rows=32, columns=32, seed=14)
        since = mark(server, account)
        run = run_cli(server, account, tmp_path / "state", str(tmp_path / "s"))
        assert run.code == 4, (run.summary, run.stderr)
        assert run.summary["exit_code"] == 4
        assert "--totp-code" in run.summary["error"]
        assert "RELAYPACS_TOTP_CODE" in run.summary["error"]
        assert run.summary["studies"][0]["status"] == "not_started"
        assert actions(server, account, "auth.login", since=since) == 0
        assert live_sessions(server, account) == 0

    def test_wrong_code_exits_4(self, server: Server, tmp_path: Path) -> None:
        account = new_account(server, "radiologist", totp=True, env=GATEWAY_ENV)
        assert account.secret is not None
        totp = pyotp.TOTP(account.secret)
        now = totp.timecode(dt.datetime.now(dt.UTC))
        valid = {totp.generate_otp(now + step) for step in (-1, 0, 1, 2)}
        wrong = next(c for c in ("000000", "111111", "222222") if c not in valid)
        write_study(tmp_path / "s", instances=1, rows=32, columns=32, seed=15)
        since = mark(server, account)
        run = run_cli(
            server, account, tmp_path / "state", str(tmp_path / "s"), "--totp-code", wrong
        )
        assert run.code == 4, (run.summary, run.stderr)
        assert "TOTP code was refused" in run.summary["error"]
        assert actions(server, account, "auth.totp_failure", "failure", since=since) == 1
        assert actions(server, account, "auth.login", since=since) == 0

    def test_enrolment_required_exits_4_and_points_to_the_web_app(
        self, server: Server, tmp_path: Path
    ) -> None:
        account = new_account(server, "radiologist", totp=False, env=GATEWAY_ENV)
        write_study(tmp_path / "s", instances=1, rows=32, columns=32, seed=16)
        run = run_cli(server, account, tmp_path / "state", str(tmp_path / "s"))
        assert run.code == 4, (run.summary, run.stderr)
        assert "enrol" in run.summary["error"]
        assert "web app" in run.summary["error"]
        # The enrolment-only session the login opened is ended too.
        assert live_sessions(server, account) == 0


class TestRateLimited:
    def test_sign_in_limited_for_long_exits_3_at_once_saying_when(
        self, server: Server, tmp_path: Path
    ) -> None:
        account = new_account(server, "clinician", totp=False, env=GATEWAY_ENV)
        with httpx.Client(base_url=server.base_url + API, timeout=30) as http:
            wrong = {"username": account.username, "password": "not the password"}
            assert http.post("/auth/login", json=wrong).status_code == 401
        write_study(tmp_path / "s", instances=1, rows=32, columns=32, seed=18)
        run = run_cli(server, account, tmp_path / "state", str(tmp_path / "s"))
        assert run.code == 3, (run.summary, run.stderr)
        assert "refuses sign-in attempts for now" in run.summary["error"]
        assert re.search(r"try again in \d+ s", run.summary["error"])
        # Not waited for the hour the limit lasts (a bound, not a measure: the machine may be busy).
        assert run.summary["timings"].get("upload_seconds", 0) < 300


class TestPrompt:
    def test_terminal_asks_for_the_code_and_again_after_a_wrong_one(
        self, server: Server, tmp_path: Path
    ) -> None:
        """stdin a terminal, no code given: asked for; a wrong one is refused and asked again."""
        account = new_account(server, "radiologist", totp=True, env=GATEWAY_ENV)
        assert account.secret is not None
        totp = pyotp.TOTP(account.secret)
        now = totp.timecode(dt.datetime.now(dt.UTC))
        valid = {totp.generate_otp(now + step) for step in (-1, 0, 1, 2)}
        wrong = next(c for c in ("000000", "111111", "222222") if c not in valid)
        write_study(tmp_path / "s", instances=2, rows=64, columns=64, seed=17)
        since = mark(server, account)
        master, slave = pty.openpty()
        process = subprocess.Popen(
            [*relaypacs_command(), "upload", "--json", str(tmp_path / "s")],
            env=subprocess_env(
                {
                    "RELAYPACS_SERVER": server.base_url,
                    "RELAYPACS_USERNAME": account.username,
                    "RELAYPACS_PASSWORD": account.password,
                    "RELAYPACS_STATE_DIR": str(tmp_path / "state"),
                }
            ),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.close(slave)
        try:
            assert process.stderr is not None
            assert process.stdout is not None
            seen = _read_until(process.stderr, "TOTP code from your authenticator app")
            os.write(master, wrong.encode() + b"\n")
            seen += _read_until(process.stderr, "That code was refused")
            os.write(master, account.code().encode() + b"\n")
            out, rest = process.communicate(timeout=120)
        finally:
            os.close(master)
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0, (out, seen + rest.decode())
        assert json.loads(out)["studies"][0]["status"] == "validated"
        assert actions(server, account, "auth.totp_failure", "failure", since=since) == 1
        assert actions(server, account, "auth.login", since=since) == 1
        assert live_sessions(server, account) == 0


def _read_until(stream: Any, text: str, timeout: float = 60.0) -> str:
    """Read a subprocess's pipe until ``text`` appeared; what was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"never saw {text!r}; got {seen.decode(errors='replace')!r}"
        ready, _, _ = select.select([stream], [], [], remaining)
        if ready:
            block = os.read(stream.fileno(), 4096)
            assert block, f"ended before {text!r}: {seen.decode(errors='replace')!r}"
            seen += block
    return seen.decode(errors="replace")


class TestRenewal:
    def test_token_expiring_during_the_upload_is_refreshed_not_relogged(
        self, short_server: Server, tmp_path: Path
    ) -> None:
        """Access tokens of 3 s, an upload of 10 s or more (6 chunks a second), 4 chunks in
        flight, and an account with TOTP whose code works once: without refreshing, the
        upload could not finish."""
        account = new_account(short_server, "radiologist", totp=True, env=SHORT_ENV)
        study = write_study(tmp_path / "s", instances=20, rows=256, columns=256, seed=21)
        chunks = sum(-(-Path(p).stat().st_size // CHUNK_SIZE) for p in study.paths)
        assert chunks >= 60
        since = mark(short_server, account)
        run = run_cli(
            short_server,
            account,
            tmp_path / "state",
            str(tmp_path / "s"),
            "--parallel",
            "4",
            "--retries",
            "100",
            env={"RELAYPACS_TOTP_CODE": account.code()},
        )
        assert run.code == 0, (run.summary, run.stderr)
        [result] = run.summary["studies"]
        assert result["status"] == "validated"
        assert result["chunks_sent"] == chunks
        upload_seconds = run.summary["timings"]["upload_seconds"]
        assert upload_seconds > SHORT_TOKEN_SECONDS + JWT_LEEWAY_SECONDS, upload_seconds
        assert actions(short_server, account, "auth.login", since=since) == 1  # not again
        refreshes = actions(short_server, account, "auth.refresh", since=since)
        assert refreshes >= upload_seconds // SHORT_TOKEN_SECONDS - 1
        assert actions(short_server, account, "auth.refresh", "failure", since=since) == 0
        assert actions(short_server, account, "auth.refresh_reuse", "failure", since=since) == 0
        assert live_sessions(short_server, account) == 0  # logged out

    def test_parallel_401s_refresh_once(self, short_server: Server, tmp_path: Path) -> None:
        """Renewal on 401 only (no early renewal): 8 requests with an expired token at once
        get 401 together; one refresh, the others retry with its token."""
        account = new_account(short_server, "radiologist", totp=True, env=SHORT_ENV)
        since = mark(short_server, account)
        watch = _RefreshWatch()

        async def scenario() -> int:
            async with GatewayClient(
                short_server.base_url,
                username=account.username,
                password=account.password,
                totp_code=account.code(),
                renew_early=False,
                retry=RetryPolicy(retries=2),
                transport=watch,
            ) as client:
                await client.login()
                await asyncio.sleep(SHORT_TOKEN_SECONDS + JWT_LEEWAY_SECONDS + 1.5)
                answers = await asyncio.gather(*(client.me() for _ in range(8)))
                assert all(a["username"] == account.username for a in answers)
                refreshes = client.refreshes
                await client.logout()
                return refreshes

        assert asyncio.run(scenario()) == 1
        assert watch.unauthorized == 8  # all of them were refused, then sent again
        assert len(watch.sent) == 1
        assert actions(short_server, account, "auth.refresh", since=since) == 1
        assert actions(short_server, account, "auth.refresh_reuse", "failure", since=since) == 0
        assert actions(short_server, account, "auth.login", since=since) == 1

    def test_session_ended_elsewhere_signs_in_again_without_totp(self, server: Server) -> None:
        account = new_account(server, "clinician", totp=False, env=GATEWAY_ENV)

        async def scenario() -> tuple[int, int]:
            async with GatewayClient(
                server.base_url, username=account.username, password=account.password
            ) as client:
                await client.login()
                _end_all_sessions(server, account)
                await client.me()  # 401, the refresh is refused too: a new sign-in
                counts = client.refreshes, client.logins
                await client.logout()
                return counts

        assert asyncio.run(scenario()) == (0, 2)
        assert actions(server, account, "auth.refresh_reuse", "failure") == 0

    def test_session_ended_elsewhere_with_totp_and_no_terminal_is_a_clear_error(
        self, server: Server
    ) -> None:
        account = new_account(server, "radiologist", totp=True, env=GATEWAY_ENV)

        async def scenario() -> str:
            async with GatewayClient(
                server.base_url,
                username=account.username,
                password=account.password,
                totp_code=account.code(),
            ) as client:
                await client.login()
                _end_all_sessions(server, account)
                with pytest.raises(SecondFactorError) as caught:
                    await client.me()
                return str(caught.value)

        message = asyncio.run(scenario())
        assert "used up" in message
        assert "run the command again with a fresh code" in message.lower()


class _RefreshWatch(httpx.AsyncBaseTransport):
    """The real network, recording each refresh token sent and counting 401 answers; the
    answers of the first ``lose`` refreshes are lost on the way back (the server did rotate
    the token)."""

    def __init__(self, lose: int = 0) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[str] = []
        self.lose = lose
        self.unauthorized = 0  # 401 answers to other requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/auth/refresh"):
            response = await self.inner.handle_async_request(request)
            self.unauthorized += response.status_code == 401
            return response
        self.sent.append(json.loads(request.read())["refresh_token"])
        response = await self.inner.handle_async_request(request)
        if self.lose:
            self.lose -= 1
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("the answer was lost (test)")
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class TestRefreshTokenNeverSentTwice:
    def test_early_renewal_by_parallel_requests_refreshes_once(self, server: Server) -> None:
        account = new_account(server, "clinician", totp=False, env=GATEWAY_ENV)
        since = mark(server, account)
        watch = _RefreshWatch()

        async def scenario() -> None:
            async with GatewayClient(
                server.base_url,
                username=account.username,
                password=account.password,
                refresh_margin=10_000.0,  # every token is due for renewal at once
                transport=watch,
            ) as client:
                await client.login()
                await asyncio.gather(*(client.me() for _ in range(8)))
                assert client.refreshes == 1
                await client.me()  # due again: the newest refresh token
                assert client.refreshes == 2
                await client.logout()

        asyncio.run(scenario())
        assert len(watch.sent) == len(set(watch.sent)) == 2
        assert actions(server, account, "auth.refresh", since=since) == 2
        assert actions(server, account, "auth.refresh_reuse", "failure", since=since) == 0

    def test_lost_refresh_answer_is_not_resent_but_signs_in_again(self, server: Server) -> None:
        account = new_account(server, "clinician", totp=False, env=GATEWAY_ENV)
        since = mark(server, account)
        watch = _RefreshWatch(lose=1)

        async def scenario() -> tuple[int, int]:
            async with GatewayClient(
                server.base_url,
                username=account.username,
                password=account.password,
                refresh_margin=10_000.0,
                transport=watch,
            ) as client:
                await client.login()
                await client.me()
                counts = client.refreshes, client.logins
                await client.logout()
                return counts

        assert asyncio.run(scenario()) == (0, 2)
        assert len(watch.sent) == 1
        assert actions(server, account, "auth.refresh", since=since) == 1  # done, answer lost
        assert actions(server, account, "auth.refresh_reuse", "failure", since=since) == 0
        assert actions(server, account, "auth.login", since=since) == 2


def _end_all_sessions(server: Server, account: Account) -> None:
    """As the user would from another device: sign in there, end the other sessions."""
    with httpx.Client(base_url=server.base_url + API, timeout=30) as http:
        body: dict[str, Any] = {"username": account.username, "password": account.password}
        login = http.post("/auth/login", json=body).json()
        if login.get("mfa_required"):
            login = http.post(
                "/auth/totp",
                json={"mfa_token": login["mfa_token"], "recovery_code": account.recovery_codes[-1]},
            ).json()
        headers = {"Authorization": f"Bearer {login['access_token']}"}
        # Newest first: this one. The others, then this one.
        own, *others = http.get("/auth/sessions", headers=headers).json()
        assert others, "no other session to end"
        for session in [*others, own]:
            ended = http.delete(f"/auth/sessions/{session['id']}", headers=headers)
            assert ended.status_code == 204, ended.text


class TestNoSecretInOutput:
    def test_verbose_run_and_server_log_hold_no_secret(
        self, short_server: Server, tmp_path: Path
    ) -> None:
        """-v with refreshes and a logout: neither the CLI's output nor the gateway's log
        holds the password, the TOTP code, an access token (a JWT) or a refresh token."""
        account = new_account(short_server, "radiologist", totp=True, env=SHORT_ENV)
        write_study(tmp_path / "s", instances=8, rows=256, columns=256, seed=31)
        code = account.code()
        run = run_cli(
            short_server,
            account,
            tmp_path / "state",
            str(tmp_path / "s"),
            "-v",
            "--retries",
            "100",
            env={"RELAYPACS_TOTP_CODE": code},
        )
        assert run.code == 0, (run.summary, run.stderr)
        assert actions(short_server, account, "auth.refresh") >= 1
        assert "HTTP Request: POST" in run.stderr  # -v did log the requests
        server_log = short_server.log_path.read_text(errors="replace")
        stored = refresh_token_hashes(short_server)
        for name, text in (
            ("CLI output", run.stderr + json.dumps(run.summary)),
            ("log", server_log),
        ):
            assert account.password not in text, name
            assert not re.search(rf"(?<!\d){code}(?!\d)", text), f"the TOTP code in the {name}"
            assert "Bearer " not in text, name
            assert not re.search(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", text), f"a JWT in the {name}"
            words = set(re.findall(r"[A-Za-z0-9_-]{40,}", text))
            leaked = {w for w in words if hashlib.sha256(w.encode()).hexdigest() in stored}
            assert not leaked, f"a refresh token in the {name}"


def test_six_digits_are_a_totp_code_anything_else_a_recovery_code() -> None:
    from relaypacs.client.api import second_factor_field

    assert second_factor_field("123456") == "code"
    assert second_factor_field(" 123 456 ") == "code"
    assert second_factor_field("abcd-efgh-jkmn-pqrs") == "recovery_code"
    assert second_factor_field("abcdefghjkmnpqrs") == "recovery_code"
    assert second_factor_field("1234567") == "recovery_code"
