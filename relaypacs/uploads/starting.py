"""Starting an upload: a new one from its manifest, or the user's own upload of the same study
still in progress (resumed), or the one already accepted (refused, saying where it is)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.service import record_event
from relaypacs.auth.models import User
from relaypacs.uploads import repository
from relaypacs.uploads.chunks import chunk_count
from relaypacs.uploads.errors import InvalidManifest, StudyAlreadyDelivered
from relaypacs.uploads.models import ACCEPTED_STATUSES, IN_PROGRESS_STATUSES
from relaypacs.uploads.repository import read_rows
from relaypacs.uploads.schemas import UploadCreate, UploadRead
from relaypacs.uploads.views import read_upload, summary


def study_hash(sha256s: Sequence[str]) -> str:
    """A study's identity for uploads: the hash of its files' SHA-256s, in any order."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


@dataclass(frozen=True)
class UploadLimits:
    chunk_size: int
    max_files: int
    max_file_size: int


async def start_upload(
    session: AsyncSession,
    *,
    user: User,
    body: UploadCreate,
    limits: UploadLimits,
    client_ip: str | None,
) -> tuple[UploadRead, bool]:
    """Create the upload, or return the user's upload of the same study still in progress.

    Returns (its view, created).
    """
    if len(body.files) > limits.max_files:
        raise InvalidManifest(f"An upload may list at most {limits.max_files} files.")
    too_big = [i for i, f in enumerate(body.files) if f.size > limits.max_file_size]
    if too_big:
        raise InvalidManifest(
            f"File {too_big[0]} is larger than the limit of {limits.max_file_size} bytes."
        )
    # The same bytes twice are allowed: verification sends one copy.
    digest = study_hash([f.sha256 for f in body.files])
    await repository.serialise_starts(session, user.id, digest)

    accepted = await repository.accepted_upload(
        session, study_hash=digest, accepted=ACCEPTED_STATUSES, user_id=user.id
    )
    if accepted is not None:  # this user's own, already accepted: say where it is
        received = await session.run_sync(read_rows.received_bytes, accepted.id)
        details: dict[str, Any] = {
            "status": accepted.status.value,
            "upload": summary(accepted, received).model_dump(mode="json"),
        }
        raise StudyAlreadyDelivered(details=details)

    existing = await repository.users_upload_of_study(
        session, user_id=user.id, study_hash=digest, statuses=IN_PROGRESS_STATUSES
    )
    if existing is not None:
        await record_event(
            session,
            action="upload.resume",
            actor=user.actor(client_ip),
            object_type="upload",
            object_id=existing.id,
            study_instance_uid=existing.study_instance_uid,
        )
        return await read_upload(session, existing), False

    # The client may ask for smaller chunks (a cut link then resends less); never larger.
    chunk_size = min(body.chunk_size or limits.chunk_size, limits.chunk_size)
    upload = await repository.create_upload(
        session,
        user_id=user.id,
        study_instance_uid=body.study_instance_uid,
        study_hash=digest,
        study_metadata=body.metadata.model_dump(exclude_none=True),
        chunk_size=chunk_size,
        all_or_nothing=body.all_or_nothing,
        files=[
            repository.NewFile(f.name, f.size, f.sha256, chunk_count(f.size, chunk_size))
            for f in body.files
        ],
    )
    await record_event(
        session,
        action="upload.start",
        actor=user.actor(client_ip),
        object_type="upload",
        object_id=upload.id,
        study_instance_uid=upload.study_instance_uid,
        details={"files": upload.file_count, "bytes": upload.total_bytes},
    )
    return await read_upload(session, upload), True
