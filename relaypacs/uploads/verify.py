"""Verifying a received study (`complete`): each file's bytes against its manifest SHA-256 and as
DICOM (from the early check's result when there is one, else by the validator), then the rules
of the study as a whole."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import uuid
from collections.abc import Set
from dataclasses import dataclass, replace
from pathlib import Path

from relaypacs.dicom import DicomRejected, DicomSummary, DicomValidator
from relaypacs.storage import ObjectStorage
from relaypacs.uploads.early import EarlyResult, EarlyVerifier, sha256_of_path
from relaypacs.uploads.schemas import FileError


@dataclass(frozen=True, slots=True)
class FileToVerify:
    index: int
    sha256: str  # the manifest's
    chunk_count: int
    name: str = ""


@dataclass(frozen=True)
class FileVerdict:
    index: int
    summary: DicomSummary | None
    error: FileError | None
    # Valid, and the same bytes as that file of the upload (which is the one sent).
    duplicate_of: int | None = None

    @property
    def to_forward(self) -> bool:
        """A valid instance to send (not a DICOMDIR, not a second copy of the same bytes)."""
        return self.error is None and is_instance(self) and self.duplicate_of is None


_SHA256_MISMATCH = FileError(
    code="sha256_mismatch", message="The file's SHA-256 does not match the one in the manifest."
)


@dataclass(frozen=True, eq=False, kw_only=True)
class StudyVerifier:
    """Verifies the files of a received upload, `concurrency` at a time, spooling those that
    storage has no local file for (several chunks, or an object store) to `spool_dir`."""

    storage: ObjectStorage
    validator: DicomValidator
    spool_dir: Path
    concurrency: int
    early: EarlyVerifier | None = None

    async def verify(
        self,
        upload_id: uuid.UUID,
        *,
        declared_uid: str,
        files: list[FileToVerify],
        keys: dict[int, list[str]],
        forwarded: Set[int] = frozenset(),
    ) -> list[FileVerdict]:
        """Every file's verdict, by index (`keys`: the object keys of each file's chunks, in
        order; `forwarded`: the files sent while uploading, see judge_study)."""
        spool_dir = self.spool_dir / str(upload_id)
        await asyncio.to_thread(spool_dir.mkdir, parents=True, exist_ok=True)
        # A few workers pull files from one iterator: memory does not grow with the file count
        # (one task per file would hold thousands of coroutines for a large study).
        early = await self.early.take(upload_id) if self.early is not None else {}
        found: dict[int, FileVerdict] = {}
        left = []
        for file in files:
            result = early.get(file.index)
            if result is not None and [result.key] == keys[file.index]:
                found[file.index] = _early_verdict(file, result)
            else:
                left.append(file)
        pending = iter(left)

        async def work() -> None:
            for file in pending:
                found[file.index] = await verify_file(
                    self.storage,
                    self.validator,
                    file=file,
                    keys=keys[file.index],
                    spool_dir=spool_dir,
                )

        try:
            await asyncio.gather(*(work() for _ in range(self.concurrency)))
            return judge_study(declared_uid, files, [found[f.index] for f in files], forwarded)
        finally:
            await asyncio.to_thread(shutil.rmtree, spool_dir, ignore_errors=True)
            # The workers hold ~60 MiB each: they go as soon as no study is being verified
            # (they start again in ~0.5 s for the next), so forwarding and idling run without
            # them.
            await self.validator.release_idle()


async def _materialise(storage: ObjectStorage, keys: list[str], spool: Path) -> tuple[Path, str]:
    """A local path holding the file's bytes, and their SHA-256 as read from storage."""
    if len(keys) == 1:
        local = storage.local_path(keys[0])
        if local is not None:
            return local, await asyncio.to_thread(sha256_of_path, local)
    digest = hashlib.sha256()
    handle = await asyncio.to_thread(spool.open, "wb")
    try:
        for key in keys:
            async for block in storage.stream(key):
                digest.update(block)
                await asyncio.to_thread(handle.write, block)
    finally:
        await asyncio.to_thread(handle.close)
    return spool, digest.hexdigest()


async def verify_file(
    storage: ObjectStorage,
    validator: DicomValidator,
    *,
    file: FileToVerify,
    keys: list[str],
    spool_dir: Path,
) -> FileVerdict:
    """One file's verdict, from its stored chunks."""
    spool = spool_dir / f"{file.index}.dcm"
    try:
        path, sha256 = await _materialise(storage, keys, spool)
        if sha256 != file.sha256:
            return FileVerdict(file.index, None, _SHA256_MISMATCH)
        try:
            summary = await validator.inspect(path)
        except DicomRejected as exc:
            return FileVerdict(file.index, None, FileError(code=exc.code, message=exc.message))
        return FileVerdict(file.index, summary, None)
    finally:
        await asyncio.to_thread(spool.unlink, missing_ok=True)


def _early_verdict(file: FileToVerify, result: EarlyResult) -> FileVerdict:
    """What verify_file would say, from the early check of the same stored bytes."""
    if result.sha256 != file.sha256:
        return FileVerdict(file.index, None, _SHA256_MISMATCH)
    if result.rejection is not None:
        error = FileError(code=result.rejection.code, message=result.rejection.message)
        return FileVerdict(file.index, None, error)
    return FileVerdict(file.index, result.summary, None)


def judge_study(
    declared_uid: str,
    files: list[FileToVerify],
    verdicts: list[FileVerdict],
    forwarded: Set[int] = frozenset(),
) -> list[FileVerdict]:
    """The rules of the study as a whole, on each file's own verdict: every instance belongs
    to the declared study; of valid files with one SOP Instance UID, identical bytes are sent
    once and differing ones are all refused (the gateway cannot know which one is right; a
    refused copy, truncated say, was refused for what it is and does not count); an upload
    holds at least one instance. A file in `forwarded` was sent to the PACS while the study
    was uploading (pipelined relay): its copy is the one the PACS keeps, so it stays the
    instance; identical copies are duplicates of it, differing ones are refused."""
    sha256 = {f.index: f.sha256 for f in files}
    names = {f.index: f.name for f in files}
    judged: dict[int, FileVerdict] = {}
    by_sop: dict[str, list[FileVerdict]] = {}
    for verdict in verdicts:
        summary = verdict.summary
        if verdict.error is None and summary is not None and summary.kind == "instance":
            if summary.study_instance_uid != declared_uid:
                verdict = replace(verdict, error=_STUDY_UID_MISMATCH)
            else:
                by_sop.setdefault(summary.sop_instance_uid or "", []).append(verdict)
        judged[verdict.index] = verdict
    for copies in by_sop.values():
        if len(copies) == 1:
            continue
        sent = [c for c in copies if c.index in forwarded]
        if sent:  # one copy went to the PACS while uploading (pipelined): it is the instance
            _judge_after_sent(judged, sent[0], copies, sha256, names)
            continue
        first_of: dict[str, int] = {}
        for copy in copies:
            first_of.setdefault(sha256[copy.index], copy.index)
        if len(first_of) == 1:  # the same bytes several times: the first copy is sent
            for copy in copies[1:]:
                judged[copy.index] = replace(copy, duplicate_of=copies[0].index)
            continue
        for copy in copies:
            others = sorted(i for i in first_of.values() if sha256[i] != sha256[copy.index])
            named = ", ".join(f"{names[i]} (file {i})" for i in others)
            judged[copy.index] = replace(
                copy,
                error=FileError(
                    code="duplicate_sop_instance",
                    message=f"Same SOP Instance UID as {named}, with other content; none of "
                    "these copies is sent, since the gateway cannot know which one is right.",
                ),
            )
    result = [judged[v.index] for v in verdicts]
    if not any(v.error is not None for v in result) and not any(is_instance(v) for v in result):
        first = result[0]
        no_instances = FileError(code="no_instances", message="The upload holds no DICOM instance.")
        result[0] = replace(first, error=no_instances)
    return result


def _judge_after_sent(
    judged: dict[int, FileVerdict],
    sent: FileVerdict,
    copies: list[FileVerdict],
    sha256: dict[int, str],
    names: dict[int, str],
) -> None:
    for copy in copies:
        if copy.index == sent.index:
            continue
        if sha256[copy.index] == sha256[sent.index]:
            judged[copy.index] = replace(copy, duplicate_of=sent.index)
            continue
        judged[copy.index] = replace(
            copy,
            error=FileError(
                code="duplicate_sop_instance",
                message=f"Same SOP Instance UID as {names[sent.index]} (file {sent.index}), "
                "with other content. That file was sent to the PACS while the study was "
                "uploading, and a PACS keeps the first copy of an instance: this one is not "
                "sent.",
            ),
        )


_STUDY_UID_MISMATCH = FileError(
    code="study_uid_mismatch", message="This file belongs to another study than the one declared."
)


def is_instance(verdict: FileVerdict) -> bool:
    """A DICOM instance (not a DICOMDIR), whether accepted or not."""
    return verdict.summary is not None and verdict.summary.kind == "instance"
