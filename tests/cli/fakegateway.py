"""An in-memory stand-in of the gateway's upload API (docs/api.md) for httpx.MockTransport.

Only for client unit tests (retries, re-login, resume bookkeeping, error mapping); the
integration tests run the real server.
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


@dataclass
class FakeUpload:
    id: str
    study_uid: str
    study_hash: str
    files: list[dict[str, Any]]
    chunk_size: int
    status: str = "pending"
    chunks: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def chunk_count(self, index: int) -> int:
        size = int(self.files[index]["size"])
        return -(-size // self.chunk_size)

    def missing(self, index: int) -> list[int]:
        return [c for c in range(self.chunk_count(index)) if (index, c) not in self.chunks]

    def read(self) -> dict[str, Any]:
        files = [
            {
                "index": i,
                "name": f["name"],
                "size": f["size"],
                "sha256": f["sha256"],
                "chunk_count": self.chunk_count(i),
                "missing_chunks": self.missing(i),
                "status": "pending",
                "kind": None,
                "error": None,
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
            "instance_count": len(self.files) if self.status == "validated" else None,
            "total_bytes": sum(int(f["size"]) for f in self.files),
            "received_bytes": sum(len(b) for b in self.chunks.values()),
            "files": files,
        }


def _error(status: int, code: str, details: dict[str, Any] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": code.replace("_", " "), "details": details or {}}}
    return httpx.Response(status, json=body)


class FakeGateway:
    def __init__(self, *, chunk_size: int = 64 * 1024, password: str = "secret") -> None:
        self.chunk_size = chunk_size
        self.password = password
        self.uploads: dict[str, FakeUpload] = {}
        self.tokens: set[str] = set()
        self.logins = 0
        self.chunk_puts: list[tuple[int, int]] = []
        # Answers forced on the next chunk PUTs, before anything is stored.
        self.chunk_faults: list[Callable[[], httpx.Response | Exception]] = []
        # Per-file errors the validation reports at complete (file index -> code).
        self.reject: dict[int, str] = {}
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
            return httpx.Response(200, json=upload.read())
        if request.method == "PUT" and len(parts) == 6:
            return self._chunk(upload, int(parts[3]), int(parts[5]), request)
        if request.method == "POST" and parts[2:] == ["complete"]:
            return self._complete(upload)
        return _error(404, "not_found")

    def _start(self, body: dict[str, Any]) -> httpx.Response:
        digest = study_hash(f["sha256"] for f in body["files"])
        for upload in self.uploads.values():
            if upload.study_hash == digest and upload.status == "validated":
                return _error(409, "study_already_delivered", {"upload": upload.read()})
            if upload.study_hash == digest and upload.status == "pending":
                return httpx.Response(200, json=upload.read())
        upload = FakeUpload(
            id=str(uuid.uuid4()),
            study_uid=body["study_instance_uid"],
            study_hash=digest,
            files=body["files"],
            chunk_size=self.chunk_size,
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
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        if request.headers.get("content-md5") != md5:
            return _error(400, "content_md5_mismatch")
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
        if problems:
            upload.status = "rejected"
            return _error(422, "upload_rejected", {"files": problems})
        upload.status = "validated"
        return httpx.Response(202, json=upload.read())
