"""The forwarding baseline: a plain STOW-RS client sending the study's files straight to the PACS.

httpx (async), `multipart/related; type="application/dicom"` bodies of `per_request` files read
from disk, `in_flight` requests at once, basic auth, `Accept: application/dicom+json`; the same
URL as the gateway's (`POST {dicomweb}/studies/{StudyInstanceUID}`). Timed from the first
request to the last answer; then a QIDO-RS listing of the study's instances (paged with
limit/offset like the gateway's verification) is timed on its own.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SOP_INSTANCE_UID = "00080018"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
QIDO_PAGE = 1000  # the gateway's page size for its verification


@dataclass
class DirectRun:
    stow_seconds: float
    qido_seconds: float
    requests: int
    stored: set[str] = field(default_factory=set)  # ReferencedSOPSequence of every answer
    failed: dict[str, Any] = field(default_factory=dict)  # FailedSOPSequence items
    listed: set[str] = field(default_factory=set)  # what QIDO-RS lists afterwards
    qido_requests: int = 0
    client_cpu_seconds: float = 0.0  # this process, STOW + QIDO


def _batches(files: Sequence[Path], per_request: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(files), per_request):
        yield files[start : start + per_request]


def _body(paths: Sequence[Path], boundary: str) -> bytes:
    pieces: list[bytes] = []
    for path in paths:
        data = path.read_bytes()
        pieces.append(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        pieces.append(data)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return b"".join(pieces)


def _uids(items: Any, sequence: str) -> list[dict[str, Any]]:
    datasets = items if isinstance(items, list) else [items]
    found: list[dict[str, Any]] = []
    for dataset in datasets:
        if isinstance(dataset, dict):
            found.extend(
                item
                for item in (dataset.get(sequence) or {}).get("Value") or []
                if isinstance(item, dict)
            )
    return found


def _uid(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values and isinstance(values[0], str) else None


async def _stow(
    client: httpx.AsyncClient,
    files: Sequence[Path],
    study_uid: str,
    run: DirectRun,
    *,
    per_request: int,
    in_flight: int,
) -> None:
    pending = _batches(files, per_request)

    async def sender() -> None:
        for paths in pending:  # the senders pull from one iterator: in_flight at once
            boundary = secrets.token_hex(16)
            body = await asyncio.to_thread(_body, paths, boundary)
            response = await client.post(
                f"/studies/{study_uid}",
                content=body,
                headers={
                    "Content-Type": (
                        f'multipart/related; type="application/dicom"; boundary={boundary}'
                    ),
                    "Accept": "application/dicom+json",
                },
            )
            run.requests += 1
            if response.status_code not in (200, 202):
                raise RuntimeError(
                    f"STOW-RS answered {response.status_code}: {response.text[:300]!r}"
                )
            answer = response.json()
            for item in _uids(answer, REFERENCED_SOP_SEQUENCE):
                uid = _uid(item, REFERENCED_SOP_INSTANCE_UID)
                if uid:
                    run.stored.add(uid)
            for item in _uids(answer, FAILED_SOP_SEQUENCE):
                run.failed[_uid(item, REFERENCED_SOP_INSTANCE_UID) or "?"] = item

    await asyncio.gather(*(sender() for _ in range(in_flight)))


async def _qido(client: httpx.AsyncClient, study_uid: str, run: DirectRun) -> None:
    offset = 0
    while True:
        response = await client.get(
            f"/studies/{study_uid}/instances",
            params={"limit": QIDO_PAGE, "offset": offset},
            headers={"Accept": "application/dicom+json"},
        )
        run.qido_requests += 1
        response.raise_for_status()
        items = response.json() if response.content else []
        for item in items:
            uid = _uid(item, SOP_INSTANCE_UID)
            if uid:
                run.listed.add(uid)
        if len(items) < QIDO_PAGE:
            return
        offset += len(items)


async def _run(
    files: Sequence[Path],
    study_uid: str,
    dicomweb_url: str,
    auth: tuple[str, str],
    per_request: int,
    in_flight: int,
) -> DirectRun:
    run = DirectRun(0.0, 0.0, 0)
    async with httpx.AsyncClient(
        base_url=dicomweb_url,
        auth=httpx.BasicAuth(*auth),
        timeout=httpx.Timeout(300.0, connect=10.0),
        limits=httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight),
    ) as client:
        cpu = time.process_time()
        started = time.perf_counter()
        await _stow(client, files, study_uid, run, per_request=per_request, in_flight=in_flight)
        stowed = time.perf_counter()
        await _qido(client, study_uid, run)
        run.qido_seconds = time.perf_counter() - stowed
        run.stow_seconds = stowed - started
        run.client_cpu_seconds = time.process_time() - cpu
    return run


def send(
    files: Sequence[Path],
    study_uid: str,
    dicomweb_url: str,
    auth: tuple[str, str],
    *,
    per_request: int = 10,
    in_flight: int = 4,
) -> DirectRun:
    """STOW-RS every file, then list the study with QIDO-RS; both timed."""
    return asyncio.run(_run(files, study_uid, dicomweb_url, auth, per_request, in_flight))
