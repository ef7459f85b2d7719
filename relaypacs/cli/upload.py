"""``relaypacs upload PATH...``: upload DICOM studies to the gateway, resumably."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

# Light: no httpx, rich or DICOM here. The rest is imported when the command runs, so that
# `relaypacs --help` and the gateway's own commands do not pay for it.
from relaypacs.client.errors import ExitCode

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from relaypacs.client import (
        Discovery,
        RunSummary,
        StudyPlan,
        StudyResult,
        UploadOptions,
    )

__all__ = ["upload"]

DEFAULT_SERVER = "http://127.0.0.1:8080"

_HELP = f"""Upload the DICOM studies found in PATH... to a RelayPACS gateway.

PATH may be folders (searched recursively, e.g. a CD export with a DICOMDIR), single files and
ZIP archives, in any mix. Non-DICOM files are ignored and counted; the DICOMDIR is not sent.
Files are grouped by StudyInstanceUID: one upload per study. An interrupted upload (network
cut, Ctrl-C, killed) resumes when the same command is run again, without re-sending what the
server already has. Hashes are cached in $RELAYPACS_STATE_DIR (default
~/.local/state/relaypacs).

\b
Exit codes:
  {ExitCode.OK}  every study validated by the gateway, or already delivered
  {ExitCode.REJECTED}  some study rejected by validation, or a file failed permanently
  {ExitCode.USAGE}  usage error, unusable input (e.g. unsafe ZIP), or nothing to upload
  {ExitCode.UNREACHABLE}  could not reach the server, or gave up after retries: run again to resume
  {ExitCode.AUTH}  authentication failed
  130  interrupted (Ctrl-C): run again to resume
When several apply, the first of 4, 3, 1 wins.
"""


@click.command("upload", help=_HELP)
@click.argument(
    "paths",
    nargs=-1,
    required=True,
    metavar="PATH...",
    type=click.Path(exists=True, path_type=Path),
)
@click.option(
    "--server",
    envvar="RELAYPACS_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="Gateway base URL [env RELAYPACS_SERVER].",
)
@click.option("--username", envvar="RELAYPACS_USERNAME", help="[env RELAYPACS_USERNAME]")
@click.option(
    "--password",
    envvar="RELAYPACS_PASSWORD",
    help="[env RELAYPACS_PASSWORD]; asked for on a terminal when missing.",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 32),
    default=4,
    show_default=True,
    help="Chunks in flight at once (memory used: about this times the chunk size).",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 1000),
    default=8,
    show_default=True,
    help="Retries per request on network errors, timeouts, 429 and 5xx (with backoff).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="Seconds without progress before a request is abandoned (then retried).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON summary object on stdout and nothing else.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log retries and requests on stderr.")
def upload(
    paths: tuple[Path, ...],
    server: str,
    username: str | None,
    password: str | None,
    parallel: int,
    retries: int,
    timeout: float,
    as_json: bool,
    verbose: bool,
) -> None:
    if verbose:
        # Requests (httpx logs method, URL and status: no bodies, no headers) and retries.
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
        )
        logging.getLogger("relaypacs").setLevel(logging.DEBUG)
    interactive = sys.stdin.isatty()
    if not username:
        if not interactive:
            raise click.UsageError("--username (or RELAYPACS_USERNAME) is required")
        username = click.prompt("Username", err=True)
    if not password:
        if not interactive:
            raise click.UsageError("--password (or RELAYPACS_PASSWORD) is required")
        password = click.prompt("Password", hide_input=True, err=True)
    assert username is not None
    assert password is not None

    _without_httpx_command_line()
    from relaypacs.client import UploadOptions

    if sys.stderr.isatty():
        from rich.console import Console

        display: _Display = _RichDisplay(Console(stderr=True))
    elif not as_json:
        display = _PlainDisplay(sys.stderr)
    else:
        display = _Display()
    options = UploadOptions(parallel=parallel)
    try:
        summary = asyncio.run(
            _run(
                list(paths),
                server=server,
                username=username,
                password=password,
                retries=retries,
                request_timeout=timeout,
                parallel=parallel,
                options=options,
                display=display,
            )
        )
    except KeyboardInterrupt:
        display.close()
        click.echo("Interrupted: run the same command again to resume.", err=True)
        sys.exit(130)
    display.close()
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        _print_summary(summary, server)
    sys.exit(summary.exit_code)


def _without_httpx_command_line() -> None:
    """httpx imports its own command line (``httpx._main``: click, rich, pygments) whenever
    rich is installed: 0.1-0.25 s of start-up for nothing in this command. An empty module
    stands in for it in this process, unless httpx is loaded already."""
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    stub = types.ModuleType("httpx._main", "Not loaded by `relaypacs upload`.")

    def main() -> None:
        raise SystemExit("the httpx command line is not loaded in this process")

    setattr(stub, "main", main)  # noqa: B010 - a module has no declared attributes
    sys.modules["httpx._main"] = stub


async def _run(
    paths: Sequence[Path],
    *,
    server: str,
    username: str,
    password: str,
    retries: int,
    request_timeout: float,
    parallel: int,
    options: UploadOptions,
    display: _Display,
) -> RunSummary:
    from relaypacs.client import GatewayClient, InputError, RetryPolicy, RunSummary, run_upload

    async with GatewayClient(
        server,
        username=username,
        password=password,
        timeout=request_timeout,
        retry=RetryPolicy(retries=retries),
        max_connections=parallel + 1,
    ) as client:
        try:
            return await run_upload(paths, client, options=options, progress=display)
        except InputError as exc:
            return RunSummary(error=str(exc), error_kind="input")


# -- progress displays --------------------------------------------------------------------


class _Display:
    """No display (``--json`` without a terminal); the base of the others."""

    _study_count = 0
    _study_position = 0

    def _next_label(self, plan: StudyPlan) -> str:
        self._study_position += 1
        modality = "/".join(plan.modalities) or "?"
        return (
            f"Study {self._study_position}/{self._study_count} {modality}, {len(plan.files)} files"
        )

    def discovered(self, discovery: Discovery, studies: Sequence[StudyPlan]) -> None:
        self._study_count = len(studies)

    def hashing(self, total_bytes: int) -> None:
        pass

    def hashed(self, n_bytes: int) -> None:
        pass

    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None:
        pass

    def sent(self, n_bytes: int) -> None:
        pass

    def study_finished(self, result: StudyResult) -> None:
        pass

    def close(self) -> None:
        pass


class _RichDisplay(_Display):
    """Progress bars on the terminal (stderr): bytes, MB/s, ETA."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._progress.start()
        self._hash_task: TaskID | None = None
        self._study_task: TaskID | None = None
        self._label = ""

    def hashing(self, total_bytes: int) -> None:
        self._hash_task = self._progress.add_task("Hashing", total=total_bytes)

    def hashed(self, n_bytes: int) -> None:
        if self._hash_task is not None:
            self._progress.advance(self._hash_task, n_bytes)

    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None:
        self._label = self._next_label(plan)
        self._study_task = self._progress.add_task(
            self._label, total=total_bytes, completed=already_bytes
        )

    def sent(self, n_bytes: int) -> None:
        if self._study_task is not None:
            self._progress.advance(self._study_task, n_bytes)

    def study_finished(self, result: StudyResult) -> None:
        if self._study_task is not None:
            label = f"{self._label} {result.status.value.replace('_', ' ')}"
            self._progress.update(self._study_task, description=label)
            self._study_task = None

    def close(self) -> None:
        self._progress.stop()


class _PlainDisplay(_Display):
    """Without a terminal: a plain line at each step, and every few seconds while sending."""

    def __init__(self, stream: TextIO, every: float = 10.0) -> None:
        self._stream = stream
        self._every = every
        self._last = 0.0
        self._label = ""
        self._total = 0
        self._done = 0
        self._started = 0.0
        self._base = 0

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def discovered(self, discovery: Discovery, studies: Sequence[StudyPlan]) -> None:
        super().discovered(discovery, studies)
        skipped = len(discovery.skipped)
        self._line(
            f"found {len(discovery.files)} DICOM files in {len(studies)} "
            + ("study" if len(studies) == 1 else "studies")
            + (f", {skipped} files skipped" if skipped else "")
        )

    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None:
        self._label, self._total, self._done = self._next_label(plan), total_bytes, already_bytes
        self._base = already_bytes
        self._started = self._last = time.monotonic()
        self._line(
            f"uploading {self._label}: {_mb(total_bytes - already_bytes)} to send, "
            f"{_mb(already_bytes)} already on the server"
        )

    def sent(self, n_bytes: int) -> None:
        self._done += n_bytes
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            rate = (self._done - self._base) / max(now - self._started, 1e-6)
            percent = 100 * self._done / self._total if self._total else 100.0
            self._line(
                f"  {_mb(self._done)} / {_mb(self._total)} ({percent:.0f}%), {rate / 1e6:.1f} MB/s"
            )

    def study_finished(self, result: StudyResult) -> None:
        self._line(f"  {result.study_instance_uid}: {result.status.value}")


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


# -- human summary ------------------------------------------------------------------------

_STATUS_STYLE = {
    "validated": "green",
    "already_delivered": "green",
    "rejected": "red",
    "failed": "red",
    "interrupted": "yellow",
    "not_started": "yellow",
}


def _print_summary(summary: RunSummary, server: str) -> None:
    """Per study: status, modality, date, counts and the Study Instance UID; never the
    patient's name."""
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)
    if summary.studies:
        console.print(f"Upload to {server}:", markup=False)
    for study in summary.studies:
        style = _STATUS_STYLE.get(study.status.value, "yellow")
        status = study.status.value.replace("_", " ")
        modality = "/".join(study.modalities) or "?"
        line = Text.assemble(
            (f"{status:<17} ", style),
            f"{modality} {_format_date(study.study_date)}  {study.instances} instances  "
            f"{_mb(study.bytes_sent)} sent, {_mb(study.bytes_skipped)} already there",
        )
        console.print(line)
        console.print(f"  study {study.study_instance_uid}", markup=False)
        if study.duplicates_skipped:
            console.print(f"  {study.duplicates_skipped} identical duplicate files sent once")
        if study.message:
            console.print(f"  {study.message}", markup=False)
        for problem in study.errors:
            console.print(f"  {problem.name}: {problem.code}: {problem.message}", markup=False)
    if summary.skipped:
        parts = ", ".join(
            f"{n} {reason.replace('_', ' ')}" for reason, n in summary.skipped.items()
        )
        console.print(f"Skipped files: {parts}", markup=False)
    if summary.error:
        console.print(Text.assemble(("Error: ", "red"), summary.error))
    if summary.exit_code == ExitCode.UNREACHABLE:
        console.print("Run the same command again to resume; nothing acknowledged is lost.")


def _format_date(value: str) -> str:
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or "-"
