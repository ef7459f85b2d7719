"""The upload engine: discover, hash, then for each study init, send missing chunks, complete.

The server's ``missing_chunks`` is the truth: a run killed at any point and started again sends
exactly the chunks the server does not have.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaypacs.client.api import GatewayClient, RemoteUpload, StartOutcome
from relaypacs.client.discovery import Discovery, discover, extraction_workspace
from relaypacs.client.errors import (
    ApiError,
    AuthenticationError,
    ExitCode,
    ServerUnreachableError,
)
from relaypacs.client.follow import wait_for_delivery
from relaypacs.client.hashing import HashCache, Hasher
from relaypacs.client.link import fitted_chunk_size, measure_rtt
from relaypacs.client.manifest import FileProblem, StudyPlan, group_studies, hash_jobs
from relaypacs.client.results import (
    ACCEPTED,
    NullProgress,
    ProgressListener,
    RunSummary,
    StudyResult,
    StudyStatus,
    UploadOptions,
)
from relaypacs.client.sending import ChunkSender, UploadLost
from relaypacs.client.state import ensure_state_dir

__all__ = [
    "ACCEPTED",
    "ExitCode",
    "NullProgress",
    "ProgressListener",
    "RunSummary",
    "StudyResult",
    "StudyStatus",
    "UploadOptions",
    "run_upload",
    "upload_study",
    "wait_for_delivery",
]


@dataclass(slots=True)
class _StudyRun(ChunkSender):
    """One study's upload: its chunks sent (ChunkSender), then completed and its outcome read."""

    async def complete(self) -> None:
        assert self.upload is not None
        for _ in range(self.options.complete_rounds):
            try:
                final = await self.client.complete_upload(self.upload.id)
            except ApiError as exc:
                if exc.code == "upload_incomplete":
                    missing = _missing_from_details(exc.details)
                    if not missing:
                        missing = (await self.client.get_upload(self.upload.id)).missing_chunks
                    await self.send_chunks(missing)
                    if self.failed_files:
                        self.result.status = StudyStatus.FAILED
                        return
                    continue
                if exc.code == "upload_rejected":
                    self.reject(exc.details)
                    return
                if exc.code == "upload_not_found":
                    raise UploadLost from exc
                self.result.status = StudyStatus.FAILED
                self.result.message = f"complete refused: {exc.message} ({exc.code})"
                return
            await self.settle(final)
            return
        self.result.status = StudyStatus.INTERRUPTED
        self.result.message = "the server still misses chunks after several rounds; run again"

    async def settle(self, upload: RemoteUpload) -> None:
        """Turn the upload's status after ``complete`` into ours."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.validation_wait_seconds
        delay = 0.5
        while upload.status in ("received", "pending") and loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            upload = await self.client.get_upload(upload.id)
        if upload.instance_count is not None:
            self.result.instances = upload.instance_count
        if upload.status == "rejected":
            self.result.status = StudyStatus.REJECTED
            self.result.errors.extend(
                FileProblem(f.name, _error_code(f.error), _error_message(f.error))
                for f in upload.files
                if f.status == "rejected"
            )
        elif upload.status in ("received", "pending"):
            self.result.status = StudyStatus.INTERRUPTED
            self.result.message = "the server is still validating; run again to see the result"
        elif upload.status == "cancelled":
            self.result.status = StudyStatus.FAILED
            self.result.message = "the upload was cancelled on the server"
        elif upload.status == "expired":
            self.result.status = StudyStatus.FAILED
            self.result.message = "the upload expired on the server (abandoned); send it again"
        else:
            # validated, or any later delivery status; with refused files, the study goes on
            # without them (the gateway's partial acceptance).
            if upload.refused_files and not any(f.status == "rejected" for f in upload.files):
                upload = await self.client.get_upload(upload.id)
            refused = [f for f in upload.files if f.status == "rejected"]
            self.result.status = StudyStatus.PARTIAL if refused else StudyStatus.VALIDATED
            self.result.errors.extend(
                FileProblem(f.name, _error_code(f.error), _error_message(f.error)) for f in refused
            )

    def reject(self, details: dict[str, Any]) -> None:
        self.result.status = StudyStatus.REJECTED
        for item in details.get("files") or ():
            if not isinstance(item, dict):
                continue
            index = item.get("index")
            local = self.by_index.get(index) if isinstance(index, int) else None
            name = local.name if local is not None else str(item.get("name", f"#{index}"))
            self.result.errors.append(
                FileProblem(name, str(item.get("code", "rejected")), str(item.get("message", "")))
            )
        if not self.result.errors:
            self.result.message = "the server rejected the study"


def _missing_from_details(details: dict[str, Any]) -> list[tuple[int, int]]:
    missing: list[tuple[int, int]] = []
    for item in details.get("missing") or ():
        if isinstance(item, dict) and isinstance(item.get("file_index"), int):
            missing.extend((item["file_index"], int(c)) for c in item.get("missing_chunks") or ())
    return missing


def _error_code(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("code", "rejected"))
    return "rejected"


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return "" if error is None else str(error)


async def upload_study(
    client: GatewayClient,
    plan: StudyPlan,
    *,
    options: UploadOptions | None = None,
    progress: ProgressListener | None = None,
) -> StudyResult:
    """Upload one study and complete it.

    Never raises for the server's answers: giving up after retries or an authentication
    failure gives an INTERRUPTED result whose ``abort`` says the run should stop. A later
    ``--wait`` (PACS delivery) step plugs in after this returns VALIDATED: the result carries
    the upload id.
    """
    options = options or UploadOptions()
    progress = progress or NullProgress()
    result = StudyResult(
        study_instance_uid=plan.study_instance_uid,
        status=StudyStatus.NOT_STARTED,
        number=plan.number,
        files=plan.file_count,
        instances=len(plan.files),
        total_bytes=plan.total_bytes,
        duplicates_skipped=len(plan.duplicates),
        modalities=list(plan.modalities),
        study_date=plan.study_date,
    )
    try:
        for attempt in (1, 2):
            run = _StudyRun(client, plan, options, progress, result)
            try:
                await _upload(run, announce=attempt == 1)
                break
            except UploadLost:
                if attempt == 2:
                    raise
                # Cancelled or cleaned up on the server meanwhile, or not visible yet right
                # after its creation: init again, which resumes it or starts anew.
                await asyncio.sleep(1.0)
    except UploadLost:
        result.status = StudyStatus.INTERRUPTED
        result.message = "the upload was removed on the server; run again to start it anew"
    except ServerUnreachableError as exc:
        result.status = StudyStatus.INTERRUPTED
        result.message = str(exc)
        result.abort = "unreachable"
    except AuthenticationError as exc:
        result.status = StudyStatus.INTERRUPTED
        result.message = str(exc)
        result.abort = "auth"
    except ApiError as exc:
        result.status = StudyStatus.FAILED
        result.message = f"{exc.message} ({exc.code})"
        problems = exc.details.get("problems")
        if isinstance(problems, list) and problems:
            result.message += ": " + "; ".join(
                f"{p.get('field')}: {p.get('message')}" for p in problems if isinstance(p, dict)
            )
    if not result.accepted:
        result.instances = 0  # the gateway has none of them
    return result


async def _upload(run: _StudyRun, *, announce: bool) -> None:
    plan, result = run.plan, run.result
    manifest = plan.manifest()
    chunk_size = await _chunk_size(run.client, run.options, [f.size for f in plan.files])
    if chunk_size is not None:
        manifest["chunk_size"] = chunk_size
    start = await run.client.start_upload(manifest)
    result.upload_id = start.upload.id
    result.chunk_size = start.upload.chunk_size
    if start.outcome is StartOutcome.ALREADY_DELIVERED:
        result.status = StudyStatus.ALREADY_DELIVERED
        result.bytes_skipped = plan.total_bytes
        if start.upload.instance_count is not None:
            result.instances = start.upload.instance_count
        if announce:
            run.progress.study_started(plan, plan.total_bytes, plan.total_bytes)
        return
    run.upload = start.upload
    problem = run.map_files(start.upload)
    if problem is not None:
        result.status = StudyStatus.FAILED
        result.message = f"server manifest mismatch: {problem}"
        return
    missing = start.upload.missing_chunks if start.upload.status == "pending" else []
    missing_bytes = run.chunk_bytes(missing)
    result.bytes_skipped = plan.total_bytes - missing_bytes
    if announce:
        run.progress.study_started(plan, plan.total_bytes, result.bytes_skipped)
    await run.send_chunks(missing)
    if run.failed_files:
        result.status = StudyStatus.FAILED
        result.message = "some chunks were refused; the study was not completed"
        return
    await run.complete()


async def _chunk_size(
    client: GatewayClient, options: UploadOptions, sizes: Sequence[int]
) -> int | None:
    """The chunk size to ask for: the option, else fitted to the rate measured so far (the
    round trip decides before any is: measured once per run) and to the files' ``sizes``."""
    if options.chunk_size is not None:
        return options.chunk_size
    link = client.link
    if link.rate() is None and link.rtt is None:
        try:
            await measure_rtt(link, client.health)
        except (ApiError, AuthenticationError):
            link.rtt = 0.0  # no health answer to time: the server's own size
    return fitted_chunk_size(link.rate(), link.rtt, options.parallel, sizes)


async def run_upload(
    paths: Sequence[Path],
    client: GatewayClient,
    *,
    options: UploadOptions | None = None,
    progress: ProgressListener | None = None,
) -> RunSummary:
    """Discover, hash (logging in meanwhile) and upload every study under ``paths``, one after
    the other; then, with ``options.wait``, follow them until the PACS has them.

    Raises InputError (a missing path, an unsafe archive) before anything is sent. Other
    failures end up in the summary, whose ``exit_code`` the CLI returns.
    """
    options = options or UploadOptions()
    progress = progress or NullProgress()
    state_dir = ensure_state_dir(options.state_dir)
    summary = RunSummary()
    clock = time.perf_counter
    started = clock()
    with (
        extraction_workspace(state_dir) as workspace,
        HashCache(state_dir / "hashes.sqlite3") as cache,
    ):
        # Each instance is hashed as soon as discovery finds it: reading headers (Python) and
        # hashing (C, in threads) overlap instead of taking turns.
        hash_progress = _HashProgress(progress)
        hasher = Hasher(cache=cache, workers=options.hash_workers, on_bytes=hash_progress)
        try:
            discovery = await discover(
                paths,
                workspace=workspace,
                archive_limits=options.archive_limits,
                on_file=lambda file: hasher.add(hash_jobs([file])[0]),
                exclude=[state_dir],
            )
        except BaseException:
            hasher.cancel()
            raise
        summary.timings["discover_seconds"] = clock() - started
        summary.archives = len(discovery.archives)
        summary.skipped_files = {
            reason.value: names for reason, names in discovery.skipped_names().items()
        }
        summary.skipped = {reason: len(names) for reason, names in summary.skipped_files.items()}
        if not discovery.files:
            hasher.cancel()
            summary.error = "no DICOM instance found in the given paths"
            summary.error_kind = "input"
            progress.discovered(discovery, [])
            return summary
        hash_progress.start(sum(file.size for file in discovery.files))
        # Log in while the files are hashed: the token (and a connection) are ready when the
        # first study is. Its errors are raised where it is awaited, as before.
        login = asyncio.create_task(client.login())
        try:
            started = clock()
            try:
                studies = group_studies(discovery.files, await hasher.results())
                for study in studies:
                    study.all_or_nothing = options.all_or_nothing
            finally:
                summary.hash_cache_hits = cache.hits
                summary.timings["hash_seconds"] = clock() - started
            await _upload_studies(studies, discovery, client, login, options, progress, summary)
        finally:
            if not login.done():
                login.cancel()
            login.add_done_callback(_retrieve)
    return summary


class _HashProgress:
    """The hashing progress, counted from the first file discovered, shown once the total is
    known (when discovery ends)."""

    def __init__(self, progress: ProgressListener) -> None:
        self._progress = progress
        self._early = 0
        self._started = False

    def __call__(self, n_bytes: int) -> None:
        if self._started:
            self._progress.hashed(n_bytes)
        else:
            self._early += n_bytes

    def start(self, total_bytes: int) -> None:
        self._progress.hashing(total_bytes)
        self._started = True
        if self._early:
            self._progress.hashed(self._early)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark the exception of a task nobody awaits as seen."""
    if not task.cancelled():
        task.exception()


async def _upload_studies(
    studies: list[StudyPlan],
    discovery: Discovery,
    client: GatewayClient,
    login: asyncio.Task[None],
    options: UploadOptions,
    progress: ProgressListener,
    summary: RunSummary,
) -> None:
    clock = time.perf_counter
    progress.discovered(discovery, studies)
    results = [
        StudyResult(
            study_instance_uid=plan.study_instance_uid,
            status=StudyStatus.NOT_STARTED,
            number=plan.number,
            files=plan.file_count,
            total_bytes=plan.total_bytes,
            modalities=list(plan.modalities),
            study_date=plan.study_date,
        )
        for plan in studies
    ]
    summary.studies = results
    started = clock()
    try:
        await login
        for position, plan in enumerate(studies):
            result = await upload_study(client, plan, options=options, progress=progress)
            results[position] = result
            progress.study_finished(result)
            if result.abort is not None:
                summary.error, summary.error_kind = result.message, result.abort
                break
        summary.timings["upload_seconds"] = clock() - started
        if options.wait and summary.error_kind is None:
            started = clock()
            try:
                await wait_for_delivery(client, results, options=options, progress=progress)
            finally:
                summary.timings["wait_seconds"] = clock() - started
    except AuthenticationError as exc:
        summary.error, summary.error_kind = str(exc), "auth"
    except ServerUnreachableError as exc:
        summary.error, summary.error_kind = str(exc), "unreachable"
    summary.timings.setdefault("upload_seconds", clock() - started)
