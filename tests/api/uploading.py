"""Small helpers that speak the upload protocol in API tests."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import httpx

from relaypacs.devtools.synth import DEFAULT_PATIENT, make_instance
from relaypacs.uploads.service import study_hash
from tests.api.conftest import CHUNK_SIZE, Account

API = "/api/v1"


def content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def content_digest(data: bytes) -> str:
    """RFC 9530 Content-Digest (sha-256) of ``data``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Study:
    uid: str
    files: list[bytes]
    names: list[str]
    all_or_nothing: bool = False  # strict mode: one refused file refuses the study

    def manifest(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.uid,
            "metadata": {"patient_name": DEFAULT_PATIENT.name, "modality": "CT"},
            "files": [
                {"name": name, "size": len(data), "sha256": sha256_hex(data)}
                for name, data in zip(self.names, self.files, strict=True)
            ],
        } | ({"all_or_nothing": True} if self.all_or_nothing else {})

    @property
    def hash(self) -> str:
        return study_hash([sha256_hex(f) for f in self.files])


_counter = iter(range(1, 1_000_000))


def new_uid() -> str:
    return f"2.25.{next(_counter)}{__import__('uuid').uuid4().int % 10**20}"


def make_study(instances: int = 3, *, rows: int = 64, columns: int = 64) -> Study:
    uid = new_uid()
    series = new_uid()
    files = [
        make_instance(
            study_uid=uid,
            series_uid=series,
            sop_uid=new_uid(),
            rows=rows,
            columns=columns,
            instance_number=i + 1,
            seed=i,
        )
        for i in range(instances)
    ]
    return Study(uid, files, [f"IM{i:04d}.dcm" for i in range(instances)])


def chunks_of(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]


def chunk_url(upload_id: str, file_index: int, chunk_index: int) -> str:
    return f"{API}/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}"


async def init(client: httpx.AsyncClient, account: Account, study: Study) -> httpx.Response:
    return await client.post(f"{API}/uploads", json=study.manifest(), headers=account.headers)


async def put_chunk(
    client: httpx.AsyncClient,
    account: Account,
    upload_id: str,
    file_index: int,
    chunk_index: int,
    data: bytes,
    *,
    md5: str | None = None,
    digest: str | None = None,
) -> httpx.Response:
    """PUT with Content-MD5 (``md5``, or the bytes' own), or with Content-Digest only when
    ``digest`` is given."""
    checksum = (
        {"Content-Digest": digest}
        if digest is not None
        else {"Content-MD5": md5 or content_md5(data)}
    )
    return await client.put(
        chunk_url(upload_id, file_index, chunk_index),
        content=data,
        headers={**account.headers, **checksum},
    )


async def send_all(
    client: httpx.AsyncClient,
    account: Account,
    upload_id: str,
    study: Study,
    *,
    with_digest: bool = False,
) -> None:
    """Every chunk, with Content-MD5 (or Content-Digest, ``with_digest``)."""
    for file_index, data in enumerate(study.files):
        for chunk_index, chunk in enumerate(chunks_of(data)):
            digest = content_digest(chunk) if with_digest else None
            response = await put_chunk(
                client, account, upload_id, file_index, chunk_index, chunk, digest=digest
            )
            assert response.status_code == 200, response.text


async def complete(client: httpx.AsyncClient, account: Account, upload_id: str) -> httpx.Response:
    return await client.post(f"{API}/uploads/{upload_id}/complete", headers=account.headers)


async def upload_study(client: httpx.AsyncClient, account: Account, study: Study) -> httpx.Response:
    """init + every chunk + complete; returns the complete response."""
    response = await init(client, account, study)
    assert response.status_code == 201, response.text
    upload_id = response.json()["id"]
    await send_all(client, account, upload_id, study)
    return await complete(client, account, upload_id)


def error_code(response: httpx.Response) -> str:
    body = response.json()
    code: str = body["error"]["code"]
    return code


def read_uid(data: bytes, keyword: str) -> str:
    """A UID from a test file's header (StudyInstanceUID, SOPInstanceUID...)."""
    import io

    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    return str(dataset[keyword].value)


def batch_url(upload_id: str) -> str:
    return f"{API}/uploads/{upload_id}/chunks:batch"


def batch_body(
    parts: list[tuple[int, int, bytes]], *, digests: dict[int, str] | None = None
) -> bytes:
    """A chunk batch (docs/api.md): the 4-byte header length, the JSON header, the parts'
    bytes. ``digests``: a declared sha256 (hex) other than the bytes' own, by part position."""
    import json
    import struct

    header = json.dumps(
        {
            "parts": [
                {
                    "file_index": f,
                    "chunk_index": c,
                    "size": len(data),
                    "sha256": (digests or {}).get(i) or sha256_hex(data),
                }
                for i, (f, c, data) in enumerate(parts)
            ]
        }
    ).encode()
    return struct.pack(">I", len(header)) + header + b"".join(data for _, _, data in parts)


async def put_batch(
    client: httpx.AsyncClient, account: Account, upload_id: str, body: bytes
) -> httpx.Response:
    return await client.post(
        batch_url(upload_id),
        content=body,
        headers={**account.headers, "Content-Type": "application/vnd.relaypacs.chunk-batch"},
    )
