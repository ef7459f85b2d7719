"""Verifying what the PACS holds, beyond its listing of the UIDs (QIDO-RS): the content of the
instances it answered stored, as the target's `verify` setting asks.

- `uids`: nothing more (QIDO-RS lists every SOP Instance UID: the worker checks that).
- `content`: every instance. With the orthanc profile, the MD5 of the file Orthanc stores (its
  REST API) against the MD5 of the bytes the gateway sent; with any other PACS, a WADO-RS
  retrieval in the original transfer syntax, its SHA-256 against the bytes sent.
- `sample`: the same for `verify_sample` instances of the study, picked at random.

A PACS keeps the first copy of a SOP instance: an instance stored earlier with other bytes is
answered "stored" and listed by QIDO-RS, and only its content tells it apart.

With `content`, a study sent while it uploads (the pipelined relay) has its instances checked
pass by pass (`check_early`), so that only the last ones are left for the end; what the PACS
was found to hold then (the very bytes sent) is passed back as `known`. A copy the PACS holds
is kept, not replaced, so what it held then it holds at the end: QIDO-RS still lists every
instance at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from relaypacs.forwarding.source import SentInstance
from relaypacs.pacs.dicomweb import DicomWebClient, InstancePart

CONTENT_MISMATCH = (
    "content_mismatch: the PACS holds other bytes under this SOP Instance UID than the gateway "
    "sent (an earlier instance with the same UID, which a PACS keeps)"
)


class ContentUnverifiable(Exception):
    """The PACS lists an instance its content check does not find: verify again later."""


@dataclass(frozen=True)
class ContentCheck:
    mismatched: dict[int, str] = field(default_factory=dict)  # file index -> reason
    verified: set[int] = field(default_factory=set)  # the PACS holds these very bytes
    md5s: dict[int, str] = field(default_factory=dict)  # of the bytes sent, where known


async def check_content(
    client: DicomWebClient,
    study_uid: str,
    sent: Sequence[SentInstance],
    listed: set[str],
    *,
    known: Mapping[int, str] | None = None,
) -> ContentCheck:
    """Check the content of the listed instances as the target's setting asks. `known`: file
    index -> MD5 of the bytes sent, for instances an earlier `check_early` of this job found
    the PACS to hold as sent (not asked again when that is still the MD5 sent). Raises
    httpx.HTTPError or StorageError (verify again later) or ContentUnverifiable."""
    target = client.target
    mode = target.verify_mode
    candidates = [i for i in sent if i.part.sop_instance_uid in listed]
    if mode == "uids" or not candidates:
        return ContentCheck(md5s={i.part.file_index: i.md5 for i in sent if i.md5})
    if mode == "sample" and len(candidates) > target.verify_sample:
        candidates = random.sample(candidates, target.verify_sample)
    done = {
        i.part.file_index
        for i in candidates
        if known and i.md5 is not None and known.get(i.part.file_index) == i.md5
    }
    rest = [i for i in candidates if i.part.file_index not in done]
    if not rest:
        check = ContentCheck()
    elif target.profile == "orthanc":
        check = await _by_orthanc_md5(client, study_uid, rest)
    else:
        check = await _by_wado(client, study_uid, rest)
    for instance in candidates:
        if instance.part.file_index in done:
            assert instance.md5 is not None
            check.verified.add(instance.part.file_index)
            check.md5s[instance.part.file_index] = instance.md5
    return check


def checks_early(client: DicomWebClient) -> bool:
    """Whether `check_early` does anything for this target: every instance's content is
    verified (`content`), by Orthanc's MD5s (one small request per instance; a WADO-RS
    retrieval of every instance while the study uploads would take the uplink's bandwidth)."""
    return client.target.verify_mode == "content" and client.target.profile == "orthanc"


async def check_early(
    client: DicomWebClient, study_uid: str, stored: Mapping[int, tuple[str, str]]
) -> dict[int, str]:
    """While the study still uploads: which of these instances (file index -> its SOP Instance
    UID and the MD5 of the bytes sent, just answered stored) the PACS holds as sent: file index
    -> that MD5. Anything else (not found yet, other bytes) is simply left to the check at the
    end. Raises httpx.HTTPError."""
    if not stored or not checks_early(client):
        return {}
    held = await client.orthanc_md5s(study_uid, [uid for uid, _ in stored.values()])
    return {index: md5 for index, (uid, md5) in stored.items() if held.get(uid) == md5}


async def _digest(client: DicomWebClient, part: InstancePart, name: str) -> str:
    digest = hashlib.new(name, usedforsecurity=False)
    async for block in client.sent_bytes(part):
        digest.update(block)
    return digest.hexdigest()


async def _by_orthanc_md5(
    client: DicomWebClient, study_uid: str, instances: Sequence[SentInstance]
) -> ContentCheck:
    held = await client.orthanc_md5s(study_uid, [i.part.sop_instance_uid for i in instances])
    check = ContentCheck()
    for instance in instances:
        index = instance.part.file_index
        expected = instance.md5 or await _digest(client, instance.part, "md5")
        check.md5s[index] = expected
        found = held.get(instance.part.sop_instance_uid)
        if found is None:
            raise ContentUnverifiable("listed by QIDO-RS, not found by Orthanc's REST API")
        if found == expected:
            check.verified.add(index)
        else:
            check.mismatched[index] = CONTENT_MISMATCH
    return check


async def _by_wado(
    client: DicomWebClient, study_uid: str, instances: Sequence[SentInstance]
) -> ContentCheck:
    semaphore = asyncio.Semaphore(client.target.max_in_flight)
    check = ContentCheck(md5s={i.part.file_index: i.md5 for i in instances if i.md5})

    async def one(instance: SentInstance) -> None:
        part = instance.part
        if instance.series_instance_uid is None:
            return  # not addressable by WADO-RS: its UID alone was verified
        async with semaphore:
            found = await client.retrieve_sha256(
                study_uid, instance.series_instance_uid, part.sop_instance_uid
            )
        if found is None:
            raise ContentUnverifiable("listed by QIDO-RS, not retrievable by WADO-RS")
        expected = await _digest(client, part, "sha256") if part.zero_preamble else instance.sha256
        if found == expected:
            check.verified.add(part.file_index)
        else:
            check.mismatched[part.file_index] = CONTENT_MISMATCH

    await asyncio.gather(*(one(i) for i in instances))
    return check
