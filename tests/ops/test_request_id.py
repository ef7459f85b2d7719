"""The request id follows a study into the background: the `complete` request's X-Request-ID is
kept with the forward job, the forwarding worker logs under it, and every request the worker
makes to the PACS (STOW-RS, QIDO-RS, the content check) carries it as X-Request-ID. A real
gateway process (JSON logs) forwards to a real Orthanc through a recording proxy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.uploading import make_study
from tests.forwarding.test_orthanc import PASSWORD, GatewayProcess, gateway
from tests.forwarding.test_receipts import Api
from tests.gateway import create_user
from tests.pacs import OrthancServer, RecordingProxy, run_orthanc


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def proxy(orthanc: OrthancServer) -> Iterator[RecordingProxy]:
    with RecordingProxy(orthanc.base_url) as recording:
        yield recording


@pytest.fixture
def process(
    tmp_path: Path, orthanc: OrthancServer, proxy: RecordingProxy
) -> Iterator[GatewayProcess]:
    started = gateway(
        tmp_path,
        "gw",
        proxy.dicomweb_url,
        orthanc,
        RELAYPACS_LOG_FORMAT="json",
        RELAYPACS_LOG_LEVEL="info",
    )
    started.data_dir.mkdir(parents=True, exist_ok=True)
    create_user(started.data_dir, "clinician1", PASSWORD, env=started.env)
    started.start()
    try:
        yield started
    finally:
        started.stop()


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_the_complete_request_id_reaches_the_job_log_and_the_pacs(
    process: GatewayProcess, proxy: RecordingProxy, orthanc: OrthancServer
) -> None:
    api = Api(process.base)
    study = make_study(3, rows=64, columns=64)
    upload_id = api.send(study)
    proxy.clear()  # the start-up probe of the PACS is no request of the upload
    done = api.complete(upload_id)
    assert done.status_code == 202, done.text
    request_id = done.headers["x-request-id"]
    assert request_id
    body = api.wait(upload_id)
    assert body["status"] == "delivered", body
    assert len(orthanc.sop_instance_uids(study.uid)) == 3

    # Every request the worker made to the PACS for this study carries the id.
    to_pacs = [r for r in proxy.records if "/dicom-web/" in r.path]
    assert proxy.stow_posts(), [r.path for r in to_pacs]
    qido = [r for r in to_pacs if r.method == "GET" and r.path.split("?")[0].endswith("/instances")]
    assert qido, [r.path for r in to_pacs]
    for record in to_pacs:
        assert record.request_headers.get("x-request-id") == request_id, (
            record.method,
            record.path,
        )

    # The worker's log lines of this job are under the id of the request that queued it.
    lines = log_lines(process.log)
    worker = [line for line in lines if line["logger"] == "relaypacs.forwarding.worker"]
    of_job = [line for line in worker if line["request_id"] == request_id]
    assert any("attempt with lease" in line["message"] for line in of_job), worker
    assert any("delivered" in line["message"] for line in of_job), worker
    # ... and the request itself logged under it too (the access line of the complete).
    assert any(
        line["request_id"] == request_id and "/complete" in line["message"]
        for line in lines
        if line["logger"] == "relaypacs.access"
    )
    # The other requests' ids are not on the job's lines.
    assert {line["request_id"] for line in worker if "attempt with lease" in line["message"]} == {
        request_id
    }
