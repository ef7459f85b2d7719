"""`diskfull`: the chunk storage on a small filesystem that fills up during chunk writes.

Each round: a fresh gateway whose object storage (`data/objects`) is a tmpfs of its own,
filled with a ballast file so that only part of the round's study fits (20-70 %, drawn);
every chunk is sent, four at a time in a random order. Expected: each answer a 200 or a
507 `storage_full` (or a 503), never another error; the status then lists as missing exactly
the chunks not acknowledged; the ballast is deleted (space freed), the client resumes (sends
what the status says is missing) and `complete` accepts the study. Counted: acknowledged
chunks gone or altered in storage (lost, corrupted), studies that did not complete (stuck),
other answers (unexpected).

Needs permission to mount a tmpfs (root, or CAP_SYS_ADMIN): refused, the scenario says so
and exits 2."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import tempfile
from collections.abc import Iterator
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

DISK_BYTES = 8 << 20  # the tmpfs of the object storage: this, and per round:
ROUND_BYTES = 4 << 20  # more than a round's study (at most 10 files of 288 KiB)


@contextlib.contextmanager
def small_disk(path: Path, size: int) -> Iterator[None]:
    """A tmpfs of ``size`` bytes mounted at ``path`` (writes past it fail with ENOSPC)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ScenarioError(
            f"cannot mount a tmpfs at {path} (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}"
        )
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _fill(path: Path, free: int) -> None:
    """A ballast file that leaves about ``free`` bytes of the filesystem at ``path``."""
    stats = os.statvfs(path)
    room = stats.f_bavail * stats.f_frsize - free
    with (path / "ballast").open("wb") as out:
        block = bytes(1 << 20)
        while room > 0:
            written = out.write(block[: min(len(block), room)])
            room -= written


def run(rounds: int, seed: int) -> Tally:
    tally = Tally("diskfull", seed)
    figures = {"507": 0, "503": 0, "rounds where the disk filled": 0, "chunks sent again": 0}
    with tempfile.TemporaryDirectory(prefix="relaypacs-chaos-diskfull-") as tmp:
        work = Path(tmp)
        objects = work / "data" / "objects"
        # One gateway for the run; the filesystem holds every round's study (rounds after
        # the first find their predecessors' chunks there: the ballast is sized on what is
        # free).
        with small_disk(objects, DISK_BYTES + rounds * ROUND_BYTES):
            gateway = new_gateway(work)
            gateway.start()
            try:
                for number in range(rounds):
                    round_seed, rng, study = round_study(
                        work, seed, number, instances=(4, 10), sides=(256, 384)
                    )
                    fits = rng.uniform(0.2, 0.7)
                    _fill(objects, int(study.total_bytes * fits))
                    client = Client(gateway.base_url)
                    try:
                        full = _round(tally, figures, client, study, objects, rng)
                    finally:
                        client.close()
                    figures["rounds where the disk filled"] += int(full)
                    print(
                        f"round {number + 1}/{rounds} seed {round_seed}: {len(study.files)} "
                        f"files {study.total_bytes // 1024} KiB, {fits:.0%} fitted; "
                        f"{'the disk filled' if full else 'the disk did NOT fill'}",
                        flush=True,
                    )
                    tally.rounds += 1
            finally:
                gateway.stop()
    tally.figures.update(figures)
    if figures["rounds where the disk filled"] < tally.rounds:
        tally.note("in some rounds the disk did not fill: the fault was not exercised")
        tally.unexpected += tally.rounds - figures["rounds where the disk filled"]
    return tally


def _round(
    tally: Tally,
    figures: dict[str, int],
    client: Client,
    study: StudyFiles,
    objects: Path,
    rng: random.Random,
) -> bool:
    """One upload through a full disk; whether the disk filled (some 507)."""
    data_dir = objects.parent
    created = client.start(study)
    if created.status_code != 201:
        raise ScenarioError(f"the upload was refused: {created.status_code} {created.text[:300]}")
    upload_id: str = created.json()["id"]
    chunks = study.chunks()
    rng.shuffle(chunks)
    acked: dict[tuple[int, int], bytes] = {}
    full = False

    def send(chunk: tuple[int, int, bytes]) -> httpx.Response:
        return client.put(upload_id, *chunk)

    with ThreadPoolExecutor(4) as pool:
        for (f, c, body), answer in zip(chunks, pool.map(send, chunks), strict=True):
            if answer.status_code == 200:
                acked[(f, c)] = body
            elif answer.status_code == 507 and error_code(answer) == "storage_full":
                figures["507"] += 1
                full = True
            elif answer.status_code == 503:
                figures["503"] += 1
            else:
                tally.unexpected += 1
                tally.note(f"chunk {f}/{c}: {answer.status_code} {answer.text[:200]}")
    # Nothing acknowledged is lost; what is missing is exactly what was refused.
    chunks_in_storage(tally, data_dir, upload_id, ((f, c, b) for (f, c), b in acked.items()))
    status = client.status(upload_id).json()
    expected_missing = {(f, c) for f, c, _ in chunks} - set(acked)
    if missing_chunks(status) != expected_missing:
        forgotten = set(acked) & missing_chunks(status)
        tally.lost += len(forgotten)
        tally.note(f"the status disagrees: {len(forgotten)} acknowledged chunks listed missing")
    early = client.complete(upload_id)
    if expected_missing and early.status_code != 409:
        tally.unexpected += 1
        tally.note(f"complete with chunks missing: {early.status_code} {early.text[:200]}")

    (objects / "ballast").unlink()  # space freed: the client resumes
    resent = missing_chunks(client.status(upload_id).json())
    figures["chunks sent again"] += len(resent)
    by_key = {(f, c): body for f, c, body in chunks}
    for f, c in sorted(resent):
        answer = client.put(upload_id, f, c, by_key[(f, c)])
        if answer.status_code != 200:
            tally.unexpected += 1
            tally.note(f"chunk {f}/{c} after space was freed: {answer.status_code}")
    done = client.complete(upload_id)
    if done.status_code != 202 or done.json()["status"] != "validated":
        tally.stuck += 1
        tally.note(f"complete after space was freed: {done.status_code} {done.text[:300]}")
    chunks_in_storage(tally, data_dir, upload_id, iter(chunks))
    return full
