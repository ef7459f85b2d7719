"""Group discovered instances into studies and build each study's upload manifest."""

from __future__ import annotations

import datetime
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from relaypacs.client.discovery import DiscoveredFile, printable
from relaypacs.client.hashing import HashJob, study_hash

__all__ = [
    "FileProblem",
    "StudyFile",
    "StudyPlan",
    "file_modalities",
    "group_studies",
    "hash_jobs",
    "iso_date",
]


@dataclass(frozen=True, slots=True)
class StudyFile:
    """One file of a study's manifest, and where its bytes are on disk."""

    name: str
    path: Path
    size: int
    mtime_ns: int
    sha256: str
    sop_instance_uid: str | None

    def manifest_entry(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class FileProblem:
    """An error about one file, local or reported by the server."""

    name: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.name, "code": self.code, "message": self.message}


@dataclass(slots=True)
class StudyPlan:
    """What will be uploaded for one StudyInstanceUID."""

    study_instance_uid: str
    metadata: dict[str, str]
    files: list[StudyFile]
    modalities: list[str]  # of its files (file_modalities), the most frequent first
    study_date: str  # YYYY-MM-DD, or as given when not a date (iso_date); "" for none
    # Exact copies (same SOP Instance UID, same bytes) sent only once. Copies with other
    # bytes are all sent: the gateway judges them once it has validated each one (a truncated
    # copy is refused for what it is; valid copies that differ are all refused).
    duplicates: list[str] = field(default_factory=list)
    # Its place among the studies of the run (1, 2, ...): how progress and summary name it.
    number: int = 0
    # Strict mode: one refused file refuses the whole study (`--all-or-nothing`).
    all_or_nothing: bool = False

    @property
    def file_count(self) -> int:
        """The files of the study that are sent."""
        return len(self.files)

    @property
    def study_hash(self) -> str:
        return study_hash(f.sha256 for f in self.files)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def manifest(self) -> dict[str, Any]:
        """The body of ``POST /uploads``."""
        body: dict[str, Any] = {
            "study_instance_uid": self.study_instance_uid,
            "metadata": dict(self.metadata),
            "files": [f.manifest_entry() for f in self.files],
        }
        if self.all_or_nothing:
            body["all_or_nothing"] = True
        return body


# A date as DICOM writes it (DA: YYYYMMDD), as ACR-NEMA did (YYYY.MM.DD), or already ISO.
_DATE_FORMS: Final = tuple(
    re.compile(form)
    for form in (
        r"([0-9]{4})([0-9]{2})([0-9]{2})",
        r"([0-9]{4})\.([0-9]{2})\.([0-9]{2})",
        r"([0-9]{4})-([0-9]{2})-([0-9]{2})",
    )
)
_MAX_SHOWN_DATE: Final = 32


def iso_date(value: str | None) -> str:
    """A file's date as ``YYYY-MM-DD``, whichever form it was written in; a value that is not
    a date as given (printable, at most 32 characters); "" for none. Never raises."""
    text = printable((value or "").strip(" \x00"))[:_MAX_SHOWN_DATE]
    for form in _DATE_FORMS:
        match = form.fullmatch(text)
        if match is not None:
            try:
                return datetime.date(*(int(part) for part in match.groups())).isoformat()
            except ValueError:  # 20241301, 00000000: not a date
                return text
    return text


def file_modalities(value: str | None) -> list[str]:
    """The modalities a file's own Modality (0008,0060) gives, read the same way for every
    file: upper case, without padding, each value of a (non-conforming) multi-valued one,
    as the fast reader gives it (``CT\\PT``) or pydicom (``['CT', 'PT']``). Characters that
    a code string may not hold are shown as '?'."""
    text = (value or "").strip(" \x00")
    if text.startswith("[") and text.endswith("]"):
        parts = [part.strip().strip("'\"") for part in text[1:-1].split(",")]
    else:
        parts = text.split("\\")
    found: list[str] = []
    for part in parts:
        code = part.strip(" \x00").upper()[:16]
        code = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_ ") else "?" for ch in code)
        if code and code not in found:
            found.append(code)
    return found


def hash_jobs(files: Sequence[DiscoveredFile]) -> list[HashJob]:
    return [
        HashJob(
            path=f.path,
            key=f.cache_key,
            size=f.size,
            mtime_ns=f.cache_mtime_ns,
            same_file=not f.from_archive,
        )
        for f in files
    ]


def _metadata(files: Sequence[DiscoveredFile], modality: str) -> dict[str, str]:
    header = files[0].header
    values = {
        "patient_name": header.patient_name,
        "patient_id": header.patient_id,
        "study_date": header.study_date,
        "modality": modality,
        "study_description": header.study_description,
        "accession_number": header.accession_number,
    }
    # The server takes at most 256 characters per value.
    return {key: value[:256] for key, value in values.items() if value}


def _is_iso_date(text: str) -> bool:
    return len(text) == 10 and _DATE_FORMS[2].fullmatch(text) is not None


def group_studies(files: Sequence[DiscoveredFile], hashes: Mapping[str, str]) -> list[StudyPlan]:
    """One plan per StudyInstanceUID, in order of first appearance (numbered 1, 2, ... in that
    order); files sorted by name.

    ``hashes`` maps each file's ``cache_key`` to its SHA-256.
    """
    by_study: dict[str, list[DiscoveredFile]] = {}
    for f in files:
        by_study.setdefault(f.header.study_instance_uid, []).append(f)

    plans: list[StudyPlan] = []
    for number, (uid, members) in enumerate(by_study.items(), start=1):
        members = sorted(members, key=lambda f: (f.name, f.cache_key))
        kept: dict[str, StudyFile] = {}
        duplicates: list[str] = []
        for f in members:
            entry = StudyFile(
                name=f.name,
                path=f.path,
                size=f.size,
                mtime_ns=f.mtime_ns,
                sha256=hashes[f.cache_key],
                sop_instance_uid=f.header.sop_instance_uid,
            )
            if entry.sha256 in kept:  # the same bytes: sent once
                duplicates.append(entry.name)
            else:
                kept[entry.sha256] = entry
        # Each file's own Modality: the study's are all those found, the most frequent first
        # (a study of several series: CT/SR), whichever file comes first.
        modality_counts = Counter(m for f in members for m in file_modalities(f.header.modality))
        modalities = [m for m, _ in modality_counts.most_common()]
        # The earliest date among the files' (ISO), or a value that is not a date as given.
        dates = [iso_date(f.header.study_date) for f in members]
        valid = sorted(d for d in dates if _is_iso_date(d))
        given = [d for d in dates if d]
        study_date = valid[0] if valid else given[0] if given else ""
        plans.append(
            StudyPlan(
                study_instance_uid=uid,
                metadata=_metadata(members, modalities[0] if modalities else ""),
                files=list(kept.values()),
                modalities=modalities,
                study_date=study_date,
                duplicates=duplicates,
                number=number,
            )
        )
    return plans
