"""A real Orthanc for tests: the Debian ``Orthanc`` binary with its DICOMweb plugin on a free
127.0.0.1 port (through ``scripts/orthanc.sh``'s loopback shim: Orthanc 1.10 has no option for
its listening address), with authentication and our own configuration."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

from tests.pacs.dicomweb import SOP_INSTANCE_UID, JsonDict
from tests.pacs.loopback import LOOPBACK
from tests.servers import free_port

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
ORTHANC_BIN: Final = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN: Final = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
LOOPBACK_SHIM: Final = REPO_ROOT / ".tools" / "orthanc" / "loopback-bind.so"
"""Built by ``scripts/orthanc.sh install``: makes Orthanc listen on 127.0.0.1, not 0.0.0.0."""


def orthanc_missing_reason() -> str | None:
    """Why Orthanc cannot run here, or None when it can."""
    missing = [
        str(path)
        for path in (ORTHANC_BIN, DICOMWEB_PLUGIN, LOOPBACK_SHIM)
        if not (path.is_file() and os.access(path, os.R_OK))
    ]
    if not missing:
        return None
    return (
        f"Orthanc is not installed ({', '.join(missing)} missing): run scripts/orthanc.sh install"
    )


def orthanc_available() -> bool:
    """Whether the Orthanc binary, its DICOMweb plugin and the loopback shim are installed."""
    return orthanc_missing_reason() is None


class OrthancStartError(RuntimeError):
    pass


@dataclass
class OrthancServer:
    """An Orthanc process with its own configuration, storage and log in ``work_dir``."""

    work_dir: Path
    port: int
    username: str
    password: str
    timeout: float = 10.0
    process: subprocess.Popen[bytes] | None = None
    frozen: bool = False
    config_path: Path = field(init=False)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.work_dir / "orthanc.json"
        self.log_path = self.work_dir / "orthanc.log"

    # -- addresses ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def client(self, *, timeout: float | None = None) -> httpx.Client:
        """An httpx client on ``base_url`` with the credentials (close it, or use ``with``)."""
        return httpx.Client(base_url=self.base_url, auth=self.auth, timeout=timeout or self.timeout)

    # -- process -----------------------------------------------------------------------

    def write_config(self) -> None:
        settings: JsonDict = {
            "Name": f"relaypacs-test-{self.port}",
            "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "index"),
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomServerEnabled": False,
            "OverwriteInstances": False,
            "StorageCompression": False,
            "SaveJobs": False,
            "HttpThreadsCount": 20,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }
        self.config_path.write_text(json.dumps(settings, indent=2), encoding="utf-8")
        self.config_path.chmod(0o600)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start Orthanc (again) on the same port, storage and configuration; return once
        ``GET /system`` answers 200 with the credentials."""
        if self.running:
            raise RuntimeError("Orthanc is already running")
        reason = orthanc_missing_reason()
        if reason:
            raise OrthancStartError(reason)
        self.write_config()
        env = dict(os.environ)
        env["LD_PRELOAD"] = ":".join(p for p in (str(LOOPBACK_SHIM), env.get("LD_PRELOAD")) if p)
        # The port may still be held for an instant after a stop: try a few times.
        for attempt in range(5):
            with (self.work_dir / "orthanc.stderr").open("ab") as stderr:
                self.process = subprocess.Popen(
                    [str(ORTHANC_BIN), f"--logfile={self.log_path}", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=env,
                )
            self.frozen = False
            try:
                self._wait_ready()
                return
            except OrthancStartError:
                if self.process.poll() is None or attempt == 4:
                    self.kill()
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.timeout * 3
        with httpx.Client(auth=self.auth, timeout=1.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise OrthancStartError(
                        f"Orthanc exited with code {self.process.returncode} on port "
                        f"{self.port}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.base_url}/system").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise OrthancStartError(
                        f"Orthanc did not answer on port {self.port}:\n{self.log_tail()}"
                    )
                time.sleep(0.02)

    def stop(self) -> None:
        """Graceful stop (SIGTERM, wait; Orthanc 1.10 takes about 2.5 s). Data stays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.thaw()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash (committed data survives; Orthanc's index is SQLite)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing is answered."""
        assert self.process is not None
        assert self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self.frozen and self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def log_tail(self, chars: int = 4000) -> str:
        text = ""
        for path in (self.log_path, self.work_dir / "orthanc.stderr"):
            if path.exists():
                text += path.read_text(errors="replace")[-chars:]
        return text

    # -- inspection (Orthanc REST API and QIDO-RS) ----------------------------------------

    def _get(self, path: str, **params: str | int) -> httpx.Response:
        with self.client() as client:
            response = client.get(path, params=params)
        response.raise_for_status()
        return response

    def instances(self) -> list[str]:
        """Orthanc identifiers of every stored instance."""
        ids: list[str] = self._get("/instances").json()
        return ids

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file, as Orthanc returns it."""
        return self._get(f"/instances/{orthanc_id}/file").content

    def lookup_instance(self, sop_instance_uid: str) -> str | None:
        """The Orthanc identifier of the instance with this SOP Instance UID, if stored."""
        with self.client() as client:
            response = client.post("/tools/lookup", content=sop_instance_uid)
        response.raise_for_status()
        for match in response.json():
            if match.get("Type") == "Instance":
                found: str = match["ID"]
                return found
        return None

    def file_by_sop_uid(self, sop_instance_uid: str) -> bytes | None:
        orthanc_id = self.lookup_instance(sop_instance_uid)
        return None if orthanc_id is None else self.instance_file(orthanc_id)

    def sop_instance_uids(self, study_uid: str, *, page_size: int = 100) -> set[str]:
        """SOP Instance UIDs of the study as QIDO-RS lists them (paged with limit/offset)."""
        found: set[str] = set()
        offset = 0
        while True:
            page = self._get(
                f"/dicom-web/studies/{study_uid}/instances", limit=page_size, offset=offset
            ).json()
            for item in page:
                found.update(item.get(SOP_INSTANCE_UID, {}).get("Value", []))
            if len(page) < page_size:
                return found
            offset += page_size

    def delete_all(self) -> None:
        """Delete every patient (so every study, series and instance)."""
        with self.client() as client:
            response = client.get("/patients")
            response.raise_for_status()
            for patient in response.json():
                client.delete(f"/patients/{patient}").raise_for_status()


@contextlib.contextmanager
def run_orthanc(
    work_dir: Path,
    *,
    username: str = "relay",
    password: str | None = None,
    timeout: float = 10.0,
) -> Iterator[OrthancServer]:
    """Run Orthanc with the DICOMweb plugin on a free 127.0.0.1 port, storage under
    ``work_dir``; killed on exit. Raises (never skips) when Orthanc is not installed."""
    reason = orthanc_missing_reason()
    if reason:
        raise OrthancStartError(reason)
    work_dir.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_urlsafe(16)
    server: OrthancServer | None = None
    for attempt in range(3):  # free_port() is racy: another process may take the port
        server = OrthancServer(work_dir, free_port(), username, password, timeout=timeout)
        try:
            server.start()
            break
        except OrthancStartError:
            if attempt == 2:
                raise
    assert server is not None
    try:
        yield server
    finally:
        server.kill()  # a graceful stop takes 2.5 s and the data is thrown away anyway
