"""How long the daily statistics take to compute: one day of N uploads (each with a file, one
in ten refused with a code, nine in ten delivered to one of two targets) on a fresh PostgreSQL
database; `compute_day` (a past day stored by the job, or today live) timed over a few runs,
and the read of the default range (7 days, all computed live).

    .venv/bin/python -m bench.stats_day [--uploads 10000] [--postgres postgresql://postgres@127.0.0.1:5432]

Not a test: it asserts nothing."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import statistics
import subprocess
import time
import uuid

from sqlalchemy import insert

from relaypacs import migrate
from relaypacs.audit.models import SYSTEM
from relaypacs.auth.models import Role, User
from relaypacs.db import Database
from relaypacs.forwarding.models import ForwardJob
from relaypacs.stats.service import compute_day, read_range
from relaypacs.uploads.models import Upload, UploadFile, UploadStatus


async def _fill(db: Database, day: dt.date, count: int) -> None:
    user = uuid.uuid4()
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    async with db.sessionmaker() as session, session.begin():
        session.add(
            User(
                id=user,
                username="bench",
                username_key="bench",
                password_hash="x",
                role=Role.CLINICIAN,
            )
        )
    for at in range(0, count, 1000):
        uploads, files, jobs = [], [], []
        for i in range(at, min(at + 1000, count)):
            upload_id = uuid.uuid4()
            created = start + dt.timedelta(seconds=i * 86_000 / count)
            refused = i % 10 == 0
            uploads.append(
                {
                    "id": upload_id,
                    "user_id": user,
                    "study_instance_uid": f"2.25.{i}",
                    "study_hash": "0" * 64,
                    "chunk_size": 1 << 20,
                    "file_count": 1,
                    "total_bytes": 1_000_000 + i,
                    "instance_count": 0 if refused else 1,
                    "status": UploadStatus.REJECTED if refused else UploadStatus.DELIVERED,
                    "metadata": {},
                    "created_at": created,
                    "updated_at": created,
                    "completed_at": created,
                    "delivered_at": None if refused else created + dt.timedelta(seconds=5 + i % 97),
                }
            )
            files.append(
                {
                    "upload_id": upload_id,
                    "index": 0,
                    "name": "f",
                    "size": 1,
                    "sha256": "0" * 64,
                    "chunk_count": 1,
                    "status": "rejected" if refused else "valid",
                    "error_code": "not_dicom" if refused else None,
                }
            )
            if not refused:
                jobs.append(
                    {
                        "id": uuid.uuid4(),
                        "upload_id": upload_id,
                        "target": f"pacs{i % 2}",
                        "status": "done",
                    }
                )
        async with db.sessionmaker() as session, session.begin():
            await session.execute(insert(Upload), uploads)
            await session.execute(insert(UploadFile), files)
            await session.execute(insert(ForwardJob), jobs)


async def _run(url: str, count: int) -> None:
    db = Database.open(url)
    try:
        today = dt.datetime.now(dt.UTC).date()
        await _fill(db, today, count)
        times = []
        for _ in range(5):
            began = time.perf_counter()
            figures = await compute_day(db, today)
            times.append(time.perf_counter() - began)
        print(
            f"uploads in the day: {figures.uploads}, delivered {figures.delivered}, "
            f"P50 {figures.latency_p50_seconds} s, P95 {figures.latency_p95_seconds} s"
        )
        print(
            f"compute_day: median {statistics.median(times) * 1000:.0f} ms, "
            f"max {max(times) * 1000:.0f} ms (5 runs)"
        )
        began = time.perf_counter()
        await read_range(db, actor=SYSTEM, first=None, last=None)
        print(
            f"7 days live (GET /admin/stats default): {(time.perf_counter() - began) * 1000:.0f} ms"
        )
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=10_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    name = f"relaypacs_bench_{secrets.token_hex(4)}"
    psql = ["psql", f"{args.postgres}/postgres", "-qc"]
    subprocess.run([*psql, f'CREATE DATABASE "{name}"'], check=True)
    try:
        url = f"postgresql+asyncpg://{args.postgres.removeprefix('postgresql://')}/{name}"
        migrate.upgrade(url)
        asyncio.run(_run(url, args.uploads))
    finally:
        subprocess.run([*psql, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=True)


if __name__ == "__main__":
    main()
