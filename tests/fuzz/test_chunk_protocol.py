"""Hypothesis drives the chunk protocol of a real gateway process (`relaypacs serve`).

A stateful machine uploads a small study of real DICOM files in 64 KiB chunks in the order
and with the faults hypothesis chooses: any permutation, duplicates (the same bytes again:
idempotent), conflicts (other bytes for an acknowledged chunk), wrong checksums, wrong
sizes, out-of-range indexes, several chunks at once, chunk batches (parts right, lying about
their digest, or conflicting, each answered on its own), status reads (what is missing) and
`complete` at any point. Invariants, checked after every step:

- never a 5xx; every refusal is a 4xx with a known machine-readable `code`;
- what was acknowledged is never lost or altered: the status lists as missing exactly the
  chunks never acknowledged, and each acknowledged chunk's stored object holds its bytes;
- `complete` succeeds if and only if every chunk is there; refused, it names exactly the
  missing chunks;
- at the end (resumption: the status's missing chunks are sent), the upload completes, and
  the file assembled from the stored chunks has the manifest's SHA-256.

A short run here (RELAYPACS_TEST_FUZZ_EXAMPLES machines, 6 by default); a long one by
`RELAYPACS_TEST_FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/fuzz`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from relaypacs.devtools.synth import DEFAULT_PATIENT, make_instance
from relaypacs.uploads.batches import FRAMING as BATCH_FRAMING
from relaypacs.uploads.repository import chunk_key
from tests.security.live import LiveGateway, live_gateway

EXAMPLES = int(os.environ.get("RELAYPACS_TEST_FUZZ_EXAMPLES", "6"))
CHUNK = 64 * 1024  # the smallest chunk size the gateway takes: several chunks per small file
API = "/api/v1"

# Every refusal the chunk protocol may give here, by status.
CHUNK_REFUSALS = {
    400: {"content_md5_mismatch", "content_digest_mismatch", "chunk_size_mismatch"},
    404: {"chunk_out_of_range"},
    409: {"chunk_conflict", "upload_not_writable"},
    413: {"chunk_too_large"},
    422: {"invalid_request"},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, Path]]:
    tmp = tmp_path_factory.mktemp("chunkfuzz")
    env = {
        "RELAYPACS_CHUNK_SIZE": str(CHUNK),
        "RELAYPACS_RATE_LIMIT_UPLOAD_INIT": "100000/minute",
        "RELAYPACS_RATE_LIMIT_UPLOAD_CHUNK": "1000000/minute",
    }
    with live_gateway(tmp / "data", tmp / "gateway.log", {"clin": "clinician"}, env) as live:
        yield live, tmp / "data" / "objects"


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def fixed_uid() -> str:
    """A new UID of always the same length: the files' sizes depend only on what hypothesis
    drew (it replays a case from its draws)."""
    return f"2.25.1{uuid.uuid4().int:039d}"


def _study(sizes: list[int], seed: int) -> tuple[str, list[bytes]]:
    """Real DICOM files of one study, of these pixel sizes (rows = columns)."""
    uid, series = fixed_uid(), fixed_uid()
    files = [
        make_instance(
            study_uid=uid,
            series_uid=series,
            sop_uid=fixed_uid(),
            rows=side,
            columns=side,
            instance_number=i + 1,
            seed=seed + i,
        )
        for i, side in enumerate(sizes)
    ]
    return uid, files


class ChunkProtocol(RuleBasedStateMachine):
    live: LiveGateway
    objects: Path

    def __init__(self) -> None:
        super().__init__()
        self.http = httpx.Client(
            base_url=self.live.base_url + API,
            headers=self.live.accounts["clin"].headers,
            timeout=60,
        )
        self.pool = ThreadPoolExecutor(4)
        self.upload_id = ""
        self.files: list[bytes] = []
        self.acked: dict[tuple[int, int], bytes] = {}
        self.completed = False

    # -- helpers ---------------------------------------------------------------------------

    def chunks(self, file_index: int) -> list[bytes]:
        data = self.files[file_index]
        return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]

    def all_chunks(self) -> list[tuple[int, int]]:
        return [(f, c) for f in range(len(self.files)) for c in range(len(self.chunks(f)))]

    def missing(self) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        for f, c in self.all_chunks():
            if (f, c) not in self.acked:
                found.setdefault(f, []).append(c)
        return found

    def stored(self, f: int, c: int, body: bytes) -> bytes:
        """The stored object of that chunk with these bytes (named by their SHA-256)."""
        digest = hashlib.sha256(body).hexdigest()
        return (self.objects / chunk_key(uuid.UUID(self.upload_id), f, c, digest)).read_bytes()

    def put(self, f: int, c: int, body: bytes, checksum: dict[str, str]) -> httpx.Response:
        return self.http.put(
            f"/uploads/{self.upload_id}/files/{f}/chunks/{c}", content=body, headers=checksum
        )

    @staticmethod
    def refused(response: httpx.Response, *codes: str) -> str:
        """The answer is a 4xx with one of ``codes`` (or any known refusal of its status)."""
        assert response.status_code < 500, response.text
        assert 400 <= response.status_code < 500, response.text
        code: str = response.json()["error"]["code"]
        assert response.json()["error"]["message"]
        allowed = set(codes) or CHUNK_REFUSALS.get(response.status_code, set())
        assert code in allowed, (response.status_code, code, allowed)
        return code

    def put_good(self, f: int, c: int, use_digest: bool) -> httpx.Response:
        body = self.chunks(f)[c]
        response = self.put(
            f,
            c,
            body,
            {"Content-Digest": _digest(body)} if use_digest else {"Content-MD5": _md5(body)},
        )
        return response

    def check_good(self, f: int, c: int, response: httpx.Response) -> None:
        if self.completed:
            self.refused(response, "upload_not_writable")
            return
        assert response.status_code == 200, response.text
        assert response.json()["already_stored"] == ((f, c) in self.acked)
        assert response.json()["size"] == len(self.chunks(f)[c])
        self.acked[(f, c)] = self.chunks(f)[c]

    # -- the upload ------------------------------------------------------------------------

    @initialize(
        sides=st.lists(st.sampled_from([16, 120, 200, 260]), min_size=1, max_size=3),
        seed=st.integers(0, 1000),
    )
    def start(self, sides: list[int], seed: int) -> None:
        uid, self.files = _study(sides, seed)
        manifest = {
            "study_instance_uid": uid,
            "metadata": {"patient_name": DEFAULT_PATIENT.name, "modality": "CT"},
            "files": [
                {"name": f"IM{i}.dcm", "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                for i, d in enumerate(self.files)
            ],
        }
        response = self.http.post("/uploads", json=manifest)
        assert response.status_code == 201, response.text
        self.upload_id = response.json()["id"]
        assert response.json()["chunk_size"] == CHUNK

    @rule(data=st.data(), use_digest=st.booleans())
    def send(self, data: st.DataObject, use_digest: bool) -> None:
        """A chunk with its right bytes: new, or again (idempotent), in any order."""
        f, c = data.draw(st.sampled_from(self.all_chunks()), label="chunk")
        self.check_good(f, c, self.put_good(f, c, use_digest))

    @rule(data=st.data())
    def send_at_once(self, data: st.DataObject) -> None:
        """Several chunks in parallel, the same one possibly twice."""
        picked = data.draw(
            st.lists(st.sampled_from(self.all_chunks()), min_size=2, max_size=4), label="chunks"
        )
        answers = list(self.pool.map(lambda fc: self.put_good(fc[0], fc[1], True), picked))
        for (f, c), response in zip(picked, answers, strict=True):
            if self.completed:
                self.refused(response, "upload_not_writable")
                continue
            assert response.status_code == 200, response.text
            self.acked[(f, c)] = self.chunks(f)[c]
        for f, c in picked:  # one of the copies stored it, the others found it stored
            stored_now = sum(
                not r.json()["already_stored"]
                for (g, d), r in zip(picked, answers, strict=True)
                if (g, d) == (f, c) and r.status_code == 200
            )
            assert stored_now <= 1

    @rule(data=st.data())
    def send_batch(self, data: st.DataObject) -> None:
        """Several distinct chunks in one chunk batch, each right, lying about its digest, or
        other bytes for an acknowledged chunk: each part answered on its own, the right ones
        stored (or found stored), the others refused with their code and nothing kept."""
        picked = data.draw(
            st.lists(st.sampled_from(self.all_chunks()), min_size=1, max_size=5, unique=True),
            label="chunks",
        )
        kinds = [
            data.draw(st.sampled_from(["right", "lying", "other"]), label="kind") for _ in picked
        ]
        # Other bytes only for an acknowledged chunk (a conflict); for a chunk never
        # acknowledged they would be stored, as a single chunk's would, and `complete` refuse
        # the file: not what this machine models.
        kinds = [
            "right" if kind == "other" and fc not in self.acked else kind
            for fc, kind in zip(picked, kinds, strict=True)
        ]
        parts: list[tuple[int, int, bytes, str]] = []
        for (f, c), kind in zip(picked, kinds, strict=True):
            body = self.chunks(f)[c]
            if kind == "other":
                body = bytes([body[0] ^ 0x55]) + body[1:]
            digest = hashlib.sha256(body).hexdigest()
            if kind == "lying":
                digest = hashlib.sha256(body + b"!").hexdigest()
            parts.append((f, c, body, digest))
        header = json.dumps(
            {
                "parts": [
                    {"file_index": f, "chunk_index": c, "size": len(b), "sha256": d}
                    for f, c, b, d in parts
                ]
            }
        ).encode()
        content = struct.pack(">I", len(header)) + header + b"".join(p[2] for p in parts)
        response = self.http.post(
            f"/uploads/{self.upload_id}/chunks:batch",
            content=content,
            headers={"Content-Type": "application/vnd.relaypacs.chunk-batch"},
        )
        if len(content) > CHUNK + BATCH_FRAMING:
            # A batch holds at most a chunk size of parts (and its framing): refused whole,
            # before its body is read, nothing stored (acknowledged_bytes_are_stored checks).
            self.refused(response, "chunk_batch_too_large")
            assert response.status_code == 413
            return
        if self.completed:
            # Refused whole once completed: or, when every part was refused for its digest
            # before the upload's state was looked at, answered part by part.
            if response.status_code == 200:
                assert {p["code"] for p in response.json()["parts"]} == {"content_digest_mismatch"}
            else:
                self.refused(response, "upload_not_writable")
            return
        assert response.status_code == 200, response.text
        results = response.json()["parts"]
        assert [(r["file_index"], r["chunk_index"]) for r in results] == picked
        for (f, c, body, _), kind, result in zip(parts, kinds, results, strict=True):
            if kind == "lying":
                assert (result["status"], result["code"]) == ("refused", "content_digest_mismatch")
            elif kind == "other":
                assert (result["status"], result["code"]) == ("refused", "chunk_conflict")
            else:
                expected = "already_stored" if (f, c) in self.acked else "stored"
                assert result["status"] == expected, result
                self.acked[(f, c)] = body

    @precondition(lambda self: bool(self.acked))
    @rule(data=st.data(), use_digest=st.booleans())
    def conflict(self, data: st.DataObject, use_digest: bool) -> None:
        """Other bytes (with their own right checksum) for an acknowledged chunk."""
        f, c = data.draw(st.sampled_from(sorted(self.acked)), label="chunk")
        changed = bytearray(self.acked[(f, c)])
        at = data.draw(st.integers(0, len(changed) - 1), label="byte")
        changed[at] ^= data.draw(st.integers(1, 255), label="xor")
        body = bytes(changed)
        checksum = {"Content-Digest": _digest(body)} if use_digest else {"Content-MD5": _md5(body)}
        response = self.put(f, c, body, checksum)
        self.refused(response, "upload_not_writable" if self.completed else "chunk_conflict")

    @rule(data=st.data(), use_digest=st.booleans(), right_bytes=st.booleans())
    def wrong_checksum(self, data: st.DataObject, use_digest: bool, right_bytes: bool) -> None:
        """A checksum that does not match the body: nothing is kept."""
        f, c = data.draw(st.sampled_from(self.all_chunks()), label="chunk")
        body = self.chunks(f)[c]
        sent = body if right_bytes else bytes([body[0] ^ 1]) + body[1:]
        lying = bytes([sent[-1] ^ 0x80]) + sent[:-1] if len(sent) > 1 else b"x"
        checksum = (
            {"Content-Digest": _digest(lying)} if use_digest else {"Content-MD5": _md5(lying)}
        )
        response = self.put(f, c, sent, checksum)
        expected = "content_digest_mismatch" if use_digest else "content_md5_mismatch"
        # Once completed, the checksum is checked first, or the upload's state.
        also = ("upload_not_writable",) if self.completed else ()
        self.refused(response, expected, *also)

    @rule(data=st.data())
    def wrong_size(self, data: st.DataObject) -> None:
        f, c = data.draw(st.sampled_from(self.all_chunks()), label="chunk")
        body = self.chunks(f)[c]
        cut = data.draw(st.integers(0, len(body) - 1), label="length")
        sent = body[:cut]
        self.refused(self.put(f, c, sent, {"Content-MD5": _md5(sent)}))

    @rule(
        where=st.sampled_from(["file", "chunk"]),
        index=st.one_of(st.integers(-3, -1), st.integers(0, 2**62)),
    )
    def out_of_range(self, where: str, index: int) -> None:
        body = self.chunks(0)[0]
        if where == "file":
            if 0 <= index < len(self.files):
                index = len(self.files) + index
            f, c = index, 0
        else:
            if 0 <= index < len(self.chunks(0)):
                index = len(self.chunks(0)) + index
            f, c = 0, index
        response = self.put(f, c, body, {"Content-MD5": _md5(body)})
        self.refused(response, "chunk_out_of_range", "upload_not_writable")

    @rule()
    def status(self) -> None:
        """What the status says is missing is exactly what was never acknowledged."""
        response = self.http.get(f"/uploads/{self.upload_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if self.completed:
            assert body["status"] == "validated", body["status"]
            return
        assert body["status"] == "pending"
        missing = self.missing()
        for item in body["files"]:
            assert item["missing_chunks"] == missing.get(item["index"], []), item
        assert body["received_bytes"] == sum(len(b) for b in self.acked.values())

    @rule()
    def complete(self) -> None:
        response = self.http.post(f"/uploads/{self.upload_id}/complete")
        missing = self.missing()
        if missing:
            self.refused(response, "upload_incomplete")
            details = response.json()["error"]["details"]["missing"]
            assert {m["file_index"]: m["missing_chunks"] for m in details} == missing
            return
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "validated"
        assert all(item["status"] == "valid" for item in response.json()["files"])
        self.completed = True

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def acknowledged_bytes_are_stored(self) -> None:
        """Every acknowledged chunk's object holds the acknowledged bytes (named by their
        SHA-256: a conflict or a failed write never replaced it)."""
        if not self.upload_id:
            return
        for (f, c), body in self.acked.items():
            assert self.stored(f, c, body) == body

    def teardown(self) -> None:
        try:
            if self.upload_id and not self.completed:
                self.resume_and_complete()
        finally:
            self.http.close()
            self.pool.shutdown()

    def resume_and_complete(self) -> None:
        """Resumption: send what the status says is missing, then complete; the file
        assembled from the stored chunks has the manifest's SHA-256."""
        body = self.http.get(f"/uploads/{self.upload_id}").json()
        for item in body["files"]:
            for c in item["missing_chunks"]:
                self.check_good(item["index"], c, self.put_good(item["index"], c, False))
        self.complete()
        assert self.completed
        for f, data in enumerate(self.files):
            assembled = b"".join(self.stored(f, c, chunk) for c, chunk in enumerate(self.chunks(f)))
            assert hashlib.sha256(assembled).hexdigest() == hashlib.sha256(data).hexdigest()


def test_chunk_protocol(gateway: tuple[LiveGateway, Path]) -> None:
    live, objects = gateway
    machine: Any = type("ChunkProtocolLive", (ChunkProtocol,), {"live": live, "objects": objects})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=25,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        ),
    )
