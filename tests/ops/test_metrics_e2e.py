"""After an end-to-end upload and forward to a real Orthanc, every metric the gateway exports
is there with sane values (one process; tests/ops/test_workers.py covers several)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relaypacs.telemetry.metrics import exported_metric_names
from tests.api.uploading import make_study, upload_study
from tests.ops.conftest import account, client_of, metric_value, ops_settings, started
from tests.pacs import run_orthanc

API = "/api/v1"


async def test_every_metric_after_an_upload_delivered_to_orthanc(tmp_path: Path) -> None:
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        settings = ops_settings(
            tmp_path / "gateway",
            pacs_url=orthanc.dicomweb_url,
            pacs_username=orthanc.auth[0],
            pacs_password=orthanc.auth[1],
            pacs_profile="orthanc",
        )
        async with started(settings) as app, client_of(app) as client:
            # counters are the process's: other tests in this process counted too
            before = (await client.get("/metrics")).text
            clinician = await account(app, client)
            study = make_study(3, rows=400, columns=400)
            done = await upload_study(client, clinician, study)
            assert done.status_code == 202, done.text
            upload_id = done.json()["id"]
            for _ in range(300):
                status = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
                if status.json()["status"] == "delivered":
                    break
                await asyncio.sleep(0.1)
            assert status.json()["status"] == "delivered", status.text
            assert (await client.get("/health/ready")).json()["status"] == "ready"
            exposition = (await client.get("/metrics")).text

    def value(name: str, **labels: str) -> float:
        """A gauge's value now, or how much a counter or histogram series grew."""
        now = metric_value(exposition, name, **labels)
        if name.endswith(("_total", "_count", "_sum", "_bucket")):
            return now - metric_value(before, name, **labels)
        return now

    size = sum(len(f) for f in study.files)
    assert value("relaypacs_upload_bytes_total", outcome="stored") == size
    assert value("relaypacs_upload_chunks_total", outcome="stored") >= 3
    assert value("relaypacs_upload_files_total", outcome="accepted") == 3
    assert value("relaypacs_uploads", status="delivered") == 1
    assert value("relaypacs_uploads", status="queued") == 0
    assert value("relaypacs_forward_queue_jobs") == 0
    assert value("relaypacs_forward_oldest_job_age_seconds") == 0
    assert value("relaypacs_forward_breaker_open", target="pacs") == 0
    assert value("relaypacs_forward_attempts_total", target="pacs", outcome="delivered") == 1
    assert value("relaypacs_forward_instances_total", target="pacs", disposition="stored") == 3
    assert value("relaypacs_forward_delivery_seconds_count", target="pacs") == 1
    assert 0 < value("relaypacs_forward_delivery_seconds_sum", target="pacs") < 30
    for operation in ("stow", "qido", "verify", "probe"):
        assert (
            value(
                "relaypacs_pacs_request_duration_seconds_count", target="pacs", operation=operation
            )
            >= 1
        ), operation
    assert value("relaypacs_pacs_request_errors_total") == 0
    assert value("relaypacs_validation_duration_seconds_count") == 1
    assert value("relaypacs_validation_refusals_total") == 0
    assert value("relaypacs_dependency_up", dependency="database") == 1
    assert value("relaypacs_dependency_up", dependency="pacs:pacs") == 1
    assert value("relaypacs_database_pool_connections", state="idle") >= 1
    assert value("relaypacs_sse_connections") == 0  # no notification stream open
    assert value("relaypacs_storage_full_total") == 0
    assert value("relaypacs_database_unavailable_total") == 0
    assert value("relaypacs_upload_chunks_lost_total") == 0
    assert value("relaypacs_http_request_duration_seconds_count", route="/api/v1/uploads") >= 1
    assert value("process_resident_memory_bytes") > 0
    # every family the gateway exports is in the exposition
    present = {
        line.split()[2].removesuffix("_total")
        for line in exposition.splitlines()
        if line.startswith("# TYPE")
    }
    for name in exported_metric_names():
        family = name
        for suffix in ("_bucket", "_sum", "_count", "_total", "_created"):
            family = family.removesuffix(suffix)
        assert family in present, name
    assert upload_id not in exposition
    assert study.uid not in exposition
