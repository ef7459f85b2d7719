"""An in-memory stand-in of the gateway's upload API (docs/api.md) for httpx.MockTransport.

Only for client unit tests (retries, re-login, resume bookkeeping, error mapping, following
the forwarding to a PACS); the integration tests run the real server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from relaypacs.client import study_hash

# Statuses in which the study counts as accepted (a second upload of it is a duplicate).
ACCEPTED = ("validated", "queued", "forwarding", "delivered", "failed")


@dataclass
class FakePacs:
    """How the fake gateway's forwarding goes: each GET of a queued or forwarding upload moves
    it on by one step, so a client's polls see it progress."""

    target: str = "pacs"
    # Instances sent and settled (confirmed, or refused when in ``refuse``) per step.
    per_step: int = 2
    # File index -> the PACS's FailureReason (``forward_error``) for the instances it refuses.
    refuse: dict[int, str] = field(default_factory=dict)
    # The PACS does not answer: the job stays queued, retrying, for ever.
    down: bool = False
    # Steps spent queued before forwarding starts.
    queued_steps: int = 1


@dataclass
class FakeForwarding:
    forward_status: list[str]
    forward_error: list[str | None]
    status: str = "queued"  # of the job: queued, done, cancelled
    attempts: int = 0
    last_error: str | None = None
    delivered_at: str | None = None
    steps: int = 0


@dataclass
class FakeUpload:
    id: str
    study_uid: str
    study_hash: str
    files: list[dict[str, Any]]
    chunk_size: int
    status: str = "pending"
    chunks: dict[tuple[int, int], bytes] = field(default_factory=dict)
    forwarding: FakeForwarding | None = None
    all_or_nothing: bool = False
    # After complete: the refused files (index -> error), as the gateway's verdicts.
    refused: dict[int, dict[str, str]] | None = None

    def chunk_count(self, index: int) -> int:
        size = int(self.files[index]["size"])
        return -(-size // self.chunk_size)

    def missing(self, index: int) -> list[int]:
        return [c for c in range(self.chunk_count(index)) if (index, c) not in self.chunks]

    def read(self, pacs: FakePacs | None = None) -> dict[str, Any]:
        fw = self.forwarding
        files = [
            {
                "index": i,
                "name": f["name"],
                "size": f["size"],
                "sha256": f["sha256"],
                "chunk_count": self.chunk_count(i),
                "missing_chunks": self.missing(i),
                "status": "pending"
                if self.refused is None
                else "rejected"
                if i in self.refused
                else "valid",
                "kind": None,
                "error": (self.refused or {}).get(i),
                "forward_status": fw.forward_status[i]
                if fw and fw.forward_status[i] != "refused"
                else None,
                "forward_error": fw.forward_error[i] if fw else None,
            }
            for i, f in enumerate(self.files)
        ]
        return {
            "id": self.id,
            "status": self.status,
            "study_instance_uid": self.study_uid,
            "study_hash": self.study_hash,
            "chunk_size": self.chunk_size,
            "file_count": len(self.files),
            "instance_count": len(self.files) - len(self.refused or ())
            if self.status in ACCEPTED
            else None,
            "refused_files": None if self.refused is None else len(self.refused),
            "all_or_nothing": self.all_or_nothing,
            "total_bytes": sum(int(f["size"]) for f in self.files),
            "received_bytes": sum(len(b) for b in self.chunks.values()),
            "files": files,
            "forwarding": None if fw is None else self._forwarding(fw, pacs),
        }

    def summary(self) -> dict[str, Any]:
        """``UploadSummary``: no files, no forwarding (as in a 409's ``details.upload``)."""
        body = self.read()
        del body["files"], body["forwarding"]
        return body

    def _forwarding(self, fw: FakeForwarding, pacs: FakePacs | None) -> dict[str, Any]:
        confirmed = fw.forward_status.count("confirmed")
        return {
            "target": pacs.target if pacs else "pacs",
            "status": fw.status,
            "instances": len(fw.forward_status) - fw.forward_status.count("refused"),
            "sent": confirmed + fw.forward_status.count("sent"),
            "confirmed": confirmed,
            "failed": fw.forward_status.count("failed"),
            "attempts": fw.attempts,
            "next_attempt_at": "2026-01-01T00:00:10Z" if fw.status == "queued" else None,
            "last_error": fw.last_error,
            "delivered_at": fw.delivered_at,
        }

    def forward_step(self, pacs: FakePacs) -> None:
        """One step of the forwarding job."""
        fw = self.forwarding
        if fw is None or self.status not in ("queued", "forwarding"):
            return
        fw.steps += 1
        if pacs.down:
            fw.attempts += 1
            fw.last_error = "http_503"
            return
        if fw.steps <= pacs.queued_steps:
            return
        if self.status == "queued":
            self.status = "forwarding"
            fw.attempts += 1
        pending = [i for i, status in enumerate(fw.forward_status) if status == "pending"]
        for i in pending[: pacs.per_step]:
            if i in pacs.refuse:
                fw.forward_status[i], fw.forward_error[i] = "failed", pacs.refuse[i]
            else:
                fw.forward_status[i] = "confirmed"
        if "pending" not in fw.forward_status:
            fw.status = "done"
            if "failed" in fw.forward_status:
                self.status = "failed"
            else:
                self.status = "delivered"
                fw.delivered_at = "2026-01-01T00:00:00Z"


def _error(status: int, code: str, details: dict[str, Any] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": code.replace("_", " "), "details": details or {}}}
    return httpx.Response(status, json=body)


class FakeGateway:
    def __init__(
        self, *, chunk_size: int = 64 * 1024, password: str = "secret", pacs: FakePacs | None = None
    ) -> None:
        self.chunk_size = chunk_size
        # Without a PACS, accepted uploads stay "validated" with ``forwarding: null``.
        self.pacs = pacs
        self.upload_gets = 0
        # Answers forced on the next GETs of an upload.
        self.get_faults: list[Callable[[], httpx.Response | Exception]] = []
        # Called at each GET of an upload (e.g. to make it take time on a fake clock).
        self.on_upload_get: Callable[[], None] | None = None
        self.password = password
        self.uploads: dict[str, FakeUpload] = {}
        self.tokens: set[str] = set()
        self.logins = 0
        self.chunk_puts: list[tuple[int, int]] = []
        # Answers forced on the next chunk PUTs, before anything is stored.
        self.chunk_faults: list[Callable[[], httpx.Response | Exception]] = []
        # Per-file errors the validation reports at complete (file index -> code).
        self.reject: dict[int, str] = {}
        # ... and by file name, in any upload (file name -> code).
        self.reject_names: dict[str, str] = {}
        # Chunks "lost" by the server right before the first complete.
        self.lose_before_complete: list[tuple[int, int]] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        if path == "/auth/login":
            body = json.loads(request.content)
            self.logins += 1
            if body.get("password") != self.password:
                return _error(401, "invalid_credentials")
            token = uuid.uuid4().hex
            self.tokens.add(token)
            return httpx.Response(200, json={"access_token": token, "token_type": "bearer"})
        auth = request.headers.get("authorization", "")
        if auth.removeprefix("Bearer ") not in self.tokens:
            return _error(401, "not_authenticated")
        parts = path.strip("/").split("/")
        if request.method == "POST" and parts == ["uploads"]:
            return self._start(json.loads(request.content))
        upload = self.uploads.get(parts[1]) if len(parts) > 1 else None
        if upload is None:
            return _error(404, "upload_not_found")
        if request.method == "GET" and len(parts) == 2:
            self.upload_gets += 1
            if self.on_upload_get is not None:
                self.on_upload_get()
            if self.get_faults:
                fault = self.get_faults.pop(0)()
                if isinstance(fault, Exception):
                    raise fault
                return fault
            if self.pacs is not None:
                upload.forward_step(self.pacs)
            return httpx.Response(200, json=upload.read(self.pacs))
        if request.method == "PUT" and len(parts) == 6:
            return self._chunk(upload, int(parts[3]), int(parts[5]), request)
        if request.method == "POST" and parts[2:] == ["complete"]:
            return self._complete(upload)
        return _error(404, "not_found")

    def _start(self, body: dict[str, Any]) -> httpx.Response:
        digest = study_hash(f["sha256"] for f in body["files"])
        for upload in self.uploads.values():
            if upload.study_hash == digest and upload.status in ACCEPTED:
                details = {"status": upload.status, "upload": upload.summary()}
                return _error(409, "study_already_delivered", details)
            if upload.study_hash == digest and upload.status == "pending":
                return httpx.Response(200, json=upload.read())
        upload = FakeUpload(
            id=str(uuid.uuid4()),
            study_uid=body["study_instance_uid"],
            study_hash=digest,
            files=body["files"],
            chunk_size=self.chunk_size,
            all_or_nothing=bool(body.get("all_or_nothing")),
        )
        self.uploads[upload.id] = upload
        return httpx.Response(201, json=upload.read())

    def _chunk(
        self, upload: FakeUpload, file_index: int, chunk_index: int, request: httpx.Request
    ) -> httpx.Response:
        if self.chunk_faults:
            fault = self.chunk_faults.pop(0)()
            if isinstance(fault, Exception):
                raise fault
            return fault
        if upload.status != "pending":
            return _error(409, "upload_not_writable")
        if file_index >= len(upload.files) or chunk_index >= upload.chunk_count(file_index):
            return _error(404, "chunk_out_of_range")
        data = request.content
        digest = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
        if request.headers.get("content-digest") != digest:
            return _error(400, "content_digest_mismatch")
        self.chunk_puts.append((file_index, chunk_index))
        key = (file_index, chunk_index)
        if key in upload.chunks:
            if upload.chunks[key] != data:
                return _error(409, "chunk_conflict")
            return httpx.Response(200, json={"size": len(data), "already_stored": True})
        upload.chunks[key] = data
        return httpx.Response(200, json={"size": len(data), "already_stored": False})

    def _complete(self, upload: FakeUpload) -> httpx.Response:
        for key in self.lose_before_complete:
            upload.chunks.pop(key, None)
        self.lose_before_complete = []
        missing = [
            {"file_index": i, "missing_chunks": upload.missing(i)}
            for i in range(len(upload.files))
            if upload.missing(i)
        ]
        if missing:
            return _error(409, "upload_incomplete", {"missing": missing})
        problems = []
        for i, f in enumerate(upload.files):
            data = b"".join(upload.chunks[(i, c)] for c in range(upload.chunk_count(i)))
            if hashlib.sha256(data).hexdigest() != f["sha256"]:
                problems.append({"index": i, "name": f["name"], "code": "sha256_mismatch"})
            elif i in self.reject:
                problems.append({"index": i, "name": f["name"], "code": self.reject[i]})
            elif f["name"] in self.reject_names:
                code = self.reject_names[f["name"]]
                problems.append({"index": i, "name": f["name"], "code": code})
        upload.refused = {
            p["index"]: {"code": p["code"], "message": p["code"].replace("_", " ")}
            for p in problems
        }
        # As the gateway: the study goes on without its refused files, unless it asked for all
        # or nothing or none is left.
        if problems and (upload.all_or_nothing or len(problems) == len(upload.files)):
            upload.status = "rejected"
            return _error(422, "upload_rejected", {"files": problems})
        upload.status = "validated"
        if self.pacs is not None:
            # Queued for the PACS in the same transaction.
            upload.status = "queued"
            upload.forwarding = FakeForwarding(
                forward_status=[
                    "refused" if i in upload.refused else "pending"
                    for i in range(len(upload.files))
                ],
                forward_error=[None] * len(upload.files),
            )
        return httpx.Response(202, json=upload.read(self.pacs))
