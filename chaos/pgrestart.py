"""`pgrestart`: PostgreSQL restarted mid-upload, the gateway not restarted.

A private PostgreSQL (initdb in a temporary directory, pg_ctl on a free port: the machine's
own server is never touched) holds the gateway's database. Each round: a new study is sent
chunk by chunk, four at a time, by a client that retries what is refused with a 503; after a
random number of acknowledged chunks PostgreSQL is stopped (`fast` or `immediate`, drawn),
left down for 0.5-3 s, and started again. Expected: while it is down, the gateway answers 503
`database_unavailable` (chunks and status alike), never another error; once it is back, the
same gateway process goes on, the rest of the chunks are stored and `complete` accepts the
study. Counted: acknowledged chunks gone or altered in storage or listed as missing (lost,
corrupted), studies not accepted within the bound (stuck), other answers (unexpected)."""

from __future__ import annotations

import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from chaos.common import (
    Client,
    ScenarioError,
    StudyFiles,
    Tally,
    chunks_in_storage,
    error_code,
    missing_chunks,
    new_gateway,
    round_study,
)
from tests.ops.postgres import PostgresServer, own_postgres

RECOVERY_SECONDS = 60.0  # after PostgreSQL is back, the round must finish within this


class Uploader:
    """Sends every chunk of a study, retrying those refused with a 503 (as the CLI does)."""

    def __init__(self, tally: Tally, client: Client, upload_id: str, study: StudyFiles) -> None:
        self.tally = tally
        self.client = client
        self.upload_id = upload_id
        self.chunks = study.chunks()
        self.acked: dict[tuple[int, int], bytes] = {}
        self.refused_503 = 0
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + 300

    def send(self, chunk: tuple[int, int, bytes]) -> None:
        f, c, body = chunk
        while time.monotonic() < self.deadline:
            try:
                answer = self.client.put(self.upload_id, f, c, body)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if answer.status_code == 200:
                with self.lock:
                    self.acked[(f, c)] = body
                return
            if answer.status_code == 503 and error_code(answer) == "database_unavailable":
                with self.lock:
                    self.refused_503 += 1
                time.sleep(0.1)
                continue
            with self.lock:
                self.tally.unexpected += 1
            self.tally.note(f"chunk {f}/{c}: {answer.status_code} {answer.text[:200]}")
            return

    def run(self, rng: random.Random) -> threading.Thread:
        order = list(self.chunks)
        rng.shuffle(order)

        def work() -> None:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(self.send, order))

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread


def _stop(postgres: PostgresServer, mode: str) -> None:
    postgres._ctl("-m", mode, "stop")  # the helper's own pg_ctl call, with the mode drawn


def run(rounds: int, seed: int) -> Tally:
    tally = Tally("pgrestart", seed)
    figures: dict[str, object] = {}
    refused = 0
    status_503 = 0
    recoveries: list[float] = []
    with tempfile.TemporaryDirectory(prefix="relaypacs-chaos-pg-") as tmp, own_postgres() as pg:
        pg.create_database("gateway")
        work = Path(tmp)
        gateway = new_gateway(work, {"RELAYPACS_DATABASE_URL": pg.url("gateway")})
        gateway.start()
        try:
            for number in range(rounds):
                round_seed, rng, study = round_study(
                    work, seed, number, instances=(4, 10), sides=(256, 384)
                )
                client = Client(gateway.base_url)
                try:
                    created = client.start(study)
                    if created.status_code != 201:
                        raise ScenarioError(f"upload refused: {created.status_code}")
                    upload_id: str = created.json()["id"]
                    uploader = Uploader(tally, client, upload_id, study)
                    total = len(uploader.chunks)
                    after = rng.randint(1, max(1, total - 2))
                    mode = rng.choice(["fast", "immediate"])
                    down = rng.uniform(0.5, 3.0)
                    thread = uploader.run(rng)
                    while len(uploader.acked) < after and thread.is_alive():
                        time.sleep(0.005)
                    acked_before = dict(uploader.acked)
                    _stop(pg, mode)
                    status = client.status(upload_id)
                    if status.status_code == 503 and error_code(status) == "database_unavailable":
                        status_503 += 1
                    else:
                        tally.unexpected += 1
                        tally.note(f"status while down: {status.status_code} {status.text[:200]}")
                    time.sleep(down)
                    pg.start()
                    back = time.monotonic()
                    thread.join(RECOVERY_SECONDS)
                    recovered = not thread.is_alive()
                    recoveries.append(time.monotonic() - back)
                    done = client.complete(upload_id) if recovered else None
                    finished = (
                        done is not None
                        and done.status_code == 202
                        and done.json()["status"] == "validated"
                    )
                    if not finished:
                        tally.stuck += 1
                        why = f"{done.status_code} {done.text[:300]}" if done else "chunks stuck"
                        tally.note(f"round seed {round_seed}: not accepted: {why}")
                    after_status = client.status(upload_id).json()
                    forgotten = set(acked_before) & missing_chunks(after_status)
                    tally.lost += len(forgotten)
                    chunks_in_storage(
                        tally,
                        gateway.data_dir,
                        upload_id,
                        ((f, c, b) for (f, c), b in uploader.acked.items()),
                    )
                    refused += uploader.refused_503
                    print(
                        f"round {number + 1}/{rounds} seed {round_seed}: {total} chunks, "
                        f"PostgreSQL stopped ({mode}) after {len(acked_before)} acknowledged, "
                        f"down {down:.1f} s, {uploader.refused_503} chunk 503s; "
                        f"{'accepted' if finished else 'NOT accepted'} "
                        f"{recoveries[-1]:.1f} s after it was back",
                        flush=True,
                    )
                finally:
                    client.close()
                tally.rounds += 1
        finally:
            gateway.stop()
    figures["chunk answers 503 database_unavailable"] = refused
    figures["status answers 503 while down"] = status_503
    figures["gateway restarts"] = gateway.starts - 1
    if recoveries:
        figures["seconds from PostgreSQL back to the last chunk (max)"] = round(max(recoveries), 2)
    tally.figures.update(figures)
    return tally
