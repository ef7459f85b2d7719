"""Chunk batches: several chunks (whole small files, mostly) in one request,
``POST /uploads/{id}/chunks:batch`` (docs/api.md, "Chunk batches").

A study of thousands of small instances (a thin-slice CT: 0.5 MB per file) costs the gateway
per request more than per byte: the HTTP and ASGI machinery, authentication, the policy, a
storage put with two fsyncs (the file, its directory) and a database row. A batch pays the
request's cost once for many files, syncs their directory once (the files' own fsyncs run at
once in the storage's threads, so the journal commits coalesce) and records every row in one
transaction, while keeping what a single chunk has: each part's SHA-256 checked against the
bytes before anything is acknowledged, each part durable before the answer, the early DICOM
verification of each whole file, and idempotence (a part stored before with the same digest is
``already_stored``; with another digest it is refused, ``chunk_conflict``).

The framing is ours, length-prefixed, rather than multipart/form-data or multipart/related:

    4 bytes, big-endian: H, the length of the header (1 .. 65,536)
    H bytes: the header, JSON: {"parts": [{"file_index", "chunk_index", "size", "sha256"}, ...]}
    then the parts' bytes, back to back, in the header's order

Content-Length must be exactly 4 + H + the sum of the sizes. Why not multipart: a multipart
parser must scan every byte of every part for the boundary (python-multipart does so in Python
callbacks, and copies each part out), and a part's length is known only once it ends; here the
header comes first, every size is checked against the upload's manifest before a byte is
stored, and each part is a zero-copy slice (memoryview) of the body as read. The header is
parsed by pydantic (strict), the same as every other request body.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError

from relaypacs.auth.models import User
from relaypacs.storage import ChecksumMismatch, ObjectStorage
from relaypacs.uploads.chunks import (
    ChunkIntake,
    ChunkOutcome,
    chunk_count,
    count_chunk,
    expected_chunk_size,
    uploader_facts,
)
from relaypacs.uploads.errors import (
    ChunkBatchTooLarge,
    ChunkConflict,
    ChunkOutOfRange,
    ChunkSizeMismatch,
    ContentDigestMismatch,
    InvalidChunkBatch,
    UploadNotWritable,
)
from relaypacs.uploads.repository import chunk_key
from relaypacs.uploads.repository.chunk_rows import ChunkRow
from relaypacs.uploads.schemas import (
    ChunkBatchHeader,
    ChunkBatchPart,
    ChunkBatchStored,
    ChunkPartResult,
    ChunkPartStatus,
)

MEDIA_TYPE = "application/vnd.relaypacs.chunk-batch"
PREFIX = struct.Struct(">I")
MAX_HEADER = 64 * 1024
# What a batch body may hold beyond its parts' bytes (RELAYPACS_CHUNK_SIZE at most).
FRAMING = PREFIX.size + MAX_HEADER
# Parts in one batch: at most one group commit of rows (ChunkRecorder's max_batch).
MAX_PARTS = 256


@dataclass(frozen=True, slots=True)
class _Part:
    spec: ChunkBatchPart
    data: memoryview
    whole_file: bool


def parse_batch(body: bytes | bytearray) -> list[tuple[ChunkBatchPart, memoryview]]:
    """The parts of a batch body, each with its bytes (a slice of ``body``); InvalidChunkBatch
    for anything not of the framing."""
    if len(body) < PREFIX.size:
        raise InvalidChunkBatch("The body is shorter than its 4-byte header length.")
    (header_length,) = PREFIX.unpack_from(body)
    if not 1 <= header_length <= MAX_HEADER or PREFIX.size + header_length > len(body):
        raise InvalidChunkBatch(
            f"The header length ({header_length}) must be 1 to {MAX_HEADER} bytes and within "
            "the body."
        )
    start = PREFIX.size + header_length
    try:
        header = ChunkBatchHeader.model_validate_json(body[PREFIX.size : start])
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "header"
        raise InvalidChunkBatch(
            f"The batch header is not valid: {where}: {first['msg']}."
        ) from None
    if len(header.parts) > MAX_PARTS:
        raise InvalidChunkBatch(f"A batch has at most {MAX_PARTS} parts.")
    if start + sum(p.size for p in header.parts) != len(body):
        raise InvalidChunkBatch(
            "The body's length is not 4 + the header's length + the sum of the parts' sizes."
        )
    if len({(p.file_index, p.chunk_index) for p in header.parts}) != len(header.parts):
        raise InvalidChunkBatch("A chunk appears twice in the batch.")
    view = memoryview(body)
    parts = []
    for part in header.parts:
        parts.append((part, view[start : start + part.size]))
        start += part.size
    return parts


async def store_batch(
    intake: ChunkIntake,
    storage: ObjectStorage,
    *,
    user: User,
    upload_id: uuid.UUID,
    content_length: int | None,
    read_body: Callable[[int], Awaitable[bytes | bytearray]],
) -> ChunkBatchStored:
    """Check what can be checked before the body is read, read it (within the body budget),
    check every part against the manifest, then store the parts durably and record them."""
    facts, content_length = await uploader_facts(
        intake.db, intake.facts, user=user, upload_id=upload_id, content_length=content_length
    )
    if content_length > intake.batch_max_bytes:
        raise ChunkBatchTooLarge(
            f"A chunk batch is at most {intake.batch_max_bytes} bytes; this one declares "
            f"{content_length}."
        )
    async with intake.bodies.hold(user.id, content_length):
        body = await read_body(content_length)
        if len(body) != content_length:
            raise InvalidChunkBatch("The body's length is not its Content-Length.")
        parts: list[_Part] = []
        for spec, data in parse_batch(body):
            if not 0 <= spec.file_index < len(facts.file_sizes):
                raise ChunkOutOfRange()
            file_size = facts.file_sizes[spec.file_index]
            if not 0 <= spec.chunk_index < chunk_count(file_size, facts.chunk_size):
                raise ChunkOutOfRange()
            expected = expected_chunk_size(file_size, facts.chunk_size, spec.chunk_index)
            if spec.size != expected:
                raise ChunkSizeMismatch(
                    f"Chunk {spec.chunk_index} of file {spec.file_index} must be exactly "
                    f"{expected} bytes; the batch declares {spec.size}."
                )
            parts.append(_Part(spec, data, whole_file=expected == file_size))
        return await _store_parts(intake, storage, upload_id, parts, facts.legacy_chunks)


async def _store_parts(
    intake: ChunkIntake,
    storage: ObjectStorage,
    upload_id: uuid.UUID,
    parts: list[_Part],
    needs_md5: bool,
) -> ChunkBatchStored:
    keys = [
        chunk_key(upload_id, p.spec.file_index, p.spec.chunk_index, p.spec.sha256) for p in parts
    ]
    # Checked by the storage in the same step as the write (nothing stored if it differs).
    failures = await storage.put_many(
        [(key, p.data, p.spec.sha256) for key, p in zip(keys, parts, strict=True)]
    )
    results: list[ChunkPartResult | None] = [None] * len(parts)
    for i, failure in enumerate(failures):
        if isinstance(failure, ChecksumMismatch):
            count_chunk("rejected", parts[i].spec.size)
            results[i] = _refused(parts[i], ContentDigestMismatch())
        elif failure is not None:  # the storage failed: the client sends the batch again
            for part in parts:
                count_chunk("failed", part.spec.size)
            raise failure
    stored = [i for i, result in enumerate(results) if result is None]
    md5s: list[str | None] = [None] * len(parts)
    if needs_md5 and stored:  # an upload from before migration 0004: its rows carry an MD5
        md5s = await asyncio.to_thread(_md5s, [p.data for p in parts])
    rows = [
        ChunkRow(
            upload_id,
            parts[i].spec.file_index,
            parts[i].spec.chunk_index,
            parts[i].spec.size,
            parts[i].spec.sha256,
            md5s[i],
        )
        for i in stored
    ]
    try:
        found = await intake.recorder.record_many(rows) if rows else []
    except Exception:
        for i in stored:
            count_chunk("failed", parts[i].spec.size)
        raise
    if ChunkOutcome.CANCELLED in found:
        for i in stored:
            count_chunk("not_writable", parts[i].spec.size)
            await storage.delete(keys[i])  # a cancelled or expired upload keeps no chunks
        raise UploadNotWritable("This upload was cancelled or has expired.")
    if ChunkOutcome.NOT_WRITABLE in found:
        for i in stored:
            count_chunk("not_writable", parts[i].spec.size)
        # Never delete here: a key may be a recorded chunk of a completed upload.
        raise UploadNotWritable()
    for i, outcome in zip(stored, found, strict=True):
        part = parts[i]
        size = part.spec.size
        if outcome == ChunkOutcome.CONFLICT:
            await storage.delete(keys[i])  # ours: the recorded chunk has another key
            count_chunk("conflict", size)
            results[i] = _refused(part, ChunkConflict())
            continue
        if outcome == ChunkOutcome.ALREADY_STORED_LEGACY:
            await storage.delete(keys[i])  # the recorded copy is under its MD5-named key
        count_chunk("stored" if outcome == ChunkOutcome.STORED else "already_stored", size)
        if intake.early is not None and part.whole_file and outcome == ChunkOutcome.STORED:
            intake.early.submit(upload_id, part.spec.file_index, keys[i], part.spec.sha256)
        results[i] = ChunkPartResult(
            file_index=part.spec.file_index,
            chunk_index=part.spec.chunk_index,
            size=size,
            status=(
                ChunkPartStatus.STORED
                if outcome == ChunkOutcome.STORED
                else ChunkPartStatus.ALREADY_STORED
            ),
        )
    return ChunkBatchStored(parts=[r for r in results if r is not None])


def _refused(part: _Part, error: ContentDigestMismatch | ChunkConflict) -> ChunkPartResult:
    return ChunkPartResult(
        file_index=part.spec.file_index,
        chunk_index=part.spec.chunk_index,
        size=part.spec.size,
        status=ChunkPartStatus.REFUSED,
        code=error.code,
        message=error.message,
    )


def _md5s(datas: list[memoryview]) -> list[str | None]:
    return [hashlib.md5(d, usedforsecurity=False).hexdigest() for d in datas]
