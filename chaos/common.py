"""What every scenario uses: a gateway process that can be killed and restarted on the same
port, its account, a chunk-protocol client, synthetic studies and the tally of the run."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from relaypacs.devtools.synth import write_study
from tests.gateway import create_user, gateway_env, relaypacs_command
from tests.servers import free_port

LOOPBACK = "127.0.0.1"
API = "/api/v1"
USERNAME = "chaos"
PASSWORD = "chaos-password-0123456789"  # a throw-away account in a throw-away data dir
SECRET_KEY = "chaos-signing-key-" + "c" * 32
CHUNK = 64 * 1024


class ScenarioError(RuntimeError):
    """The scenario could not run (a server did not start, a mount was refused...)."""


@dataclass
class Tally:
    """What a scenario counts; lost, corrupted and stuck must be zero."""

    scenario: str
    seed: int
    rounds: int = 0
    lost: int = 0  # acknowledged (chunks) or accepted (instances), then missing
    corrupted: int = 0  # there, with other bytes than sent
    stuck: int = 0  # not finished within the scenario's bound
    unexpected: int = 0  # answers the scenario's fault must not cause (a 500, a wrong code)
    # Time limits missed (slowclients: the probes' P99): a failure of the command, apart
    # because it depends on the machine's load (tests/chaos asserts the counts above only).
    limits_missed: int = 0
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rounds > 0 and not (
            self.lost or self.corrupted or self.stuck or self.unexpected
        )

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  ! {text}", flush=True)

    def report(self) -> str:
        lines = [
            f"chaos {self.scenario}: seed {self.seed}, {self.rounds} rounds "
            f"in {self.seconds:.1f} s",
            f"  lost {self.lost}  corrupted {self.corrupted}  stuck {self.stuck}  "
            f"unexpected {self.unexpected}  limits missed {self.limits_missed}",
        ]
        lines += [f"  {key}: {value}" for key, value in self.figures.items()]
        lines.append("  PASS" if self.ok else "  FAIL")
        return "\n".join(lines)


# --- the gateway process ---------------------------------------------------------------------


@dataclass
class Gateway:
    """`relaypacs serve` on a fixed loopback port: killed (SIGKILL) and started again on the
    same port and data, as a crashed gateway restarted by its supervisor would be."""

    data_dir: Path
    env: dict[str, str]
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.port = self.port or free_port()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*relaypacs_command(), "serve", "--host", LOOPBACK, "--port", str(self.port)],
                env=gateway_env(self.data_dir, self.env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ScenarioError(f"the gateway exited:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/health/live", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()  # never left behind
        raise ScenarioError(f"the gateway did not answer within {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: the process and its DICOM workers (its session) die at once."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def new_gateway(work: Path, env: Mapping[str, str] | None = None) -> Gateway:
    """A gateway on a fresh data dir (SQLite unless ``env`` says otherwise) with the account."""
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {
        "RELAYPACS_SECRET_KEY": SECRET_KEY,
        "RELAYPACS_CHUNK_SIZE": str(CHUNK),
        "RELAYPACS_STORAGE": "fs",
        "RELAYPACS_LOG_LEVEL": "warning",
        "RELAYPACS_RATE_LIMIT_UPLOAD_INIT": "100000/minute",
        "RELAYPACS_RATE_LIMIT_UPLOAD_CHUNK": "1000000/minute",
        "RELAYPACS_RATE_LIMIT_LOGIN_IP": "100000/minute",
        "PYTHONFAULTHANDLER": "1",
        **(env or {}),
    }
    create_user(data_dir, USERNAME, PASSWORD, env=full_env)
    return Gateway(data_dir, full_env, work / "gateway.log")


# --- studies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyFiles:
    """A synthetic study on disk, with what the gateway and the PACS must end up holding."""

    directory: Path
    study_uid: str
    files: list[bytes]
    sop_uids: list[str]

    @property
    def total_bytes(self) -> int:
        return sum(len(f) for f in self.files)

    def manifest(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_uid,
            "metadata": {"modality": "CT"},
            "files": [
                {"name": f"IM{i:04d}.dcm", "size": len(d), "sha256": sha256_hex(d)}
                for i, d in enumerate(self.files)
            ],
        }

    def chunks(self) -> list[tuple[int, int, bytes]]:
        return [
            (index, offset // CHUNK, data[offset : offset + CHUNK])
            for index, data in enumerate(self.files)
            for offset in range(0, len(data), CHUNK)
        ]


def make_study(directory: Path, *, instances: int, side: int, seed: int) -> StudyFiles:
    """``instances`` CT images of ``side`` x ``side`` pixels (16-bit) under ``directory``."""
    study = write_study(directory, instances=instances, rows=side, columns=side, seed=seed)
    return StudyFiles(
        directory, study.study_uid, [p.read_bytes() for p in study.paths], list(study.sop_uids)
    )


def round_study(
    work: Path, seed: int, number: int, *, instances: tuple[int, int], sides: Sequence[int]
) -> tuple[int, random.Random, StudyFiles]:
    """Round ``number``'s seed (printed, to replay it), its random source and its study, all
    drawn from the run's ``seed``: the same seed gives the same rounds."""
    round_seed = seed * 100_000 + number
    rng = random.Random(round_seed)
    study = make_study(
        work / f"study-{number}",
        instances=rng.randint(*instances),
        side=rng.choice(list(sides)),
        seed=round_seed,
    )
    return round_seed, rng, study


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


# --- a client of the chunk protocol ----------------------------------------------------------


class Client:
    """The upload API over HTTP, signed in as the scenario's account; every call returns the
    response whatever its status (the scenario judges it)."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.http = httpx.Client(base_url=base_url + API, timeout=timeout)
        login = self.http.post("/auth/login", json={"username": USERNAME, "password": PASSWORD})
        if login.status_code != 200:
            raise ScenarioError(f"login refused: {login.status_code} {login.text[:300]}")
        self.http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"

    def close(self) -> None:
        self.http.close()

    def start(self, study: StudyFiles) -> httpx.Response:
        return self.http.post("/uploads", json=study.manifest())

    def put(self, upload_id: str, file_index: int, chunk_index: int, body: bytes) -> httpx.Response:
        return self.http.put(
            f"/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}",
            content=body,
            headers={"Content-Digest": content_digest(body)},
        )

    def status(self, upload_id: str) -> httpx.Response:
        return self.http.get(f"/uploads/{upload_id}")

    def complete(self, upload_id: str) -> httpx.Response:
        return self.http.post(f"/uploads/{upload_id}/complete")


def missing_chunks(status: dict[str, Any]) -> set[tuple[int, int]]:
    return {(f["index"], c) for f in status["files"] for c in f["missing_chunks"]}


def error_code(response: httpx.Response) -> str | None:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(code)


def stored_chunk(
    data_dir: Path, upload_id: str, file_index: int, chunk_index: int, body: bytes
) -> bytes | None:
    """The stored object of an acknowledged chunk (the filesystem store: objects named by
    their SHA-256 under `data/objects/uploads/<id>/`), or None if it is gone."""
    path = (
        data_dir
        / "objects"
        / "uploads"
        / upload_id
        / f"{file_index}-{chunk_index}-{sha256_hex(body)}"
    )
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def chunks_in_storage(
    tally: Tally, data_dir: Path, upload_id: str, acked: Iterator[tuple[int, int, bytes]]
) -> None:
    """Count the acknowledged chunks whose stored object is gone (lost) or differs (corrupted)."""
    for file_index, chunk_index, body in acked:
        stored = stored_chunk(data_dir, upload_id, file_index, chunk_index, body)
        if stored is None:
            tally.lost += 1
            tally.note(f"upload {upload_id}: acknowledged chunk {file_index}/{chunk_index} gone")
        elif stored != body:
            tally.corrupted += 1
            tally.note(f"upload {upload_id}: chunk {file_index}/{chunk_index} altered")
