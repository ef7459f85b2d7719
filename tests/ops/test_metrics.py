"""/metrics: who may read it, and what an upload leaves in it (no id, no patient data)."""

from __future__ import annotations

from pathlib import Path

from relaypacs.devtools.synth import DEFAULT_PATIENT
from relaypacs.telemetry.metrics import exported_metric_names
from tests.api.uploading import make_study, upload_study
from tests.ops.conftest import account, client_of, metric_value, ops_settings, started

CHUNK_ROUTE = "/api/v1/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}"


class TestAccess:
    async def test_loopback_only_without_a_token(self, tmp_path: Path) -> None:
        async with started(ops_settings(tmp_path)) as app:
            async with client_of(app) as local:
                response = await local.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            async with client_of(app, "10.20.30.40") as remote:
                refused = await remote.get("/metrics")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "metrics_loopback_only"

    async def test_the_token_opens_it_to_any_address_and_only_the_token(
        self, tmp_path: Path
    ) -> None:
        settings = ops_settings(tmp_path, metrics_token="scrape-" + "t" * 30)
        async with started(settings) as app, client_of(app, "10.20.30.40") as remote:
            missing = await remote.get("/metrics")
            wrong = await remote.get("/metrics", headers={"Authorization": "Bearer nope"})
            right = await remote.get(
                "/metrics", headers={"Authorization": "Bearer scrape-" + "t" * 30}
            )
            async with client_of(app) as local:  # loopback needs it too, once configured
                local_missing = await local.get("/metrics")
        assert missing.status_code == wrong.status_code == local_missing.status_code == 401
        assert wrong.json()["error"]["code"] == "metrics_token_required"
        assert right.status_code == 200


class TestWhatAnUploadLeaves:
    async def test_counters_gauges_and_route_templates(self, tmp_path: Path) -> None:
        study = make_study(3, rows=400, columns=400)  # > 1 chunk per file
        async with started(ops_settings(tmp_path)) as app, client_of(app) as client:
            before = (await client.get("/metrics")).text
            clinician = await account(app, client)
            done = await upload_study(client, clinician, study)
            assert done.status_code == 202, done.text
            upload_id = done.json()["id"]
            # the same chunk again: already stored
            again = await client.put(
                f"/api/v1/uploads/{upload_id}/files/0/chunks/0",
                content=study.files[0][: 256 * 1024],
                headers={
                    **clinician.headers,
                    "Content-Digest": _digest(study.files[0][: 256 * 1024]),
                },
            )
            assert again.status_code in (200, 409)
            after = (await client.get("/metrics")).text

        def grew(name: str, **labels: str) -> float:
            return metric_value(after, name, **labels) - metric_value(before, name, **labels)

        chunks = sum(-(-len(f) // (256 * 1024)) for f in study.files)
        assert grew("relaypacs_upload_chunks_total", outcome="stored") == chunks
        assert grew("relaypacs_upload_bytes_total", outcome="stored") == sum(
            len(f) for f in study.files
        )
        assert grew("relaypacs_upload_files_total", outcome="accepted") == 3
        assert grew("relaypacs_upload_files_total", outcome="refused") == 0
        # no PACS configured: the study stays validated, counted by status
        assert metric_value(after, "relaypacs_uploads", status="validated") >= 1
        assert metric_value(after, "relaypacs_forward_queue_jobs") == 0
        assert (
            grew(
                "relaypacs_http_request_duration_seconds_count",
                method="PUT",
                route=CHUNK_ROUTE,
                status="200",
            )
            >= chunks
        )
        assert grew("relaypacs_http_request_duration_seconds_count", route="/metrics") >= 1
        # labels carry templates, never what identifies an upload, a study or a patient
        for secret in (upload_id, study.uid, DEFAULT_PATIENT.name, clinician.username):
            assert secret not in after
        assert metric_value(after, "process_resident_memory_bytes") > 0

    async def test_every_exported_name_is_in_the_exposition(self, tmp_path: Path) -> None:
        async with started(ops_settings(tmp_path)) as app, client_of(app) as client:
            exposition = (await client.get("/metrics")).text
        families = {
            line.split()[2].removesuffix("_total")
            for line in exposition.splitlines()
            if line.startswith("# TYPE")
        }
        for name in exported_metric_names():
            family = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            family = family.removesuffix("_total").removesuffix("_created")
            assert family in families, name


def _digest(data: bytes) -> str:
    from tests.api.uploading import content_digest

    return content_digest(data)


class TestGatewayProcesses:
    """relaypacs/telemetry/processes.py: which processes the multi-worker process metrics
    count. A killed worker leaves its registration behind; a pid can be reused."""

    def test_only_registered_processes_still_running_count(self, tmp_path: Path) -> None:
        import os
        import subprocess
        import sys

        from relaypacs.telemetry.processes import (
            GatewayProcessesCollector,
            live_processes,
            register_process,
            unregister_process,
        )

        register_process(tmp_path)
        gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        register_process(tmp_path, gone.pid)
        assert live_processes(tmp_path) == sorted([os.getpid(), gone.pid])
        gone.kill()  # killed: it never unregisters
        gone.wait()
        # a registration whose start time is not the running process's: a reused pid
        reused = tmp_path / "processes" / str(os.getppid())
        reused.write_text("1")
        assert live_processes(tmp_path) == [os.getpid()]
        assert not (tmp_path / "processes" / str(gone.pid)).exists()
        assert not reused.exists()

        families = {f.name: f for f in GatewayProcessesCollector(tmp_path).collect()}
        assert families["relaypacs_processes"].samples[0].value == 1
        rss = families["process_resident_memory_bytes"].samples[0].value
        assert rss > 10 * 2**20  # this Python process, with the gateway imported
        assert families["process_cpu_seconds"].samples[0].name == "process_cpu_seconds_total"

        unregister_process(tmp_path)
        assert live_processes(tmp_path) == []
        families = {f.name: f for f in GatewayProcessesCollector(tmp_path).collect()}
        assert families["relaypacs_processes"].samples[0].value == 0
        assert "process_resident_memory_bytes" not in families
