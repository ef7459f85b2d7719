"""``relaypacs upload PATH...``: upload DICOM studies to the gateway, resumably."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

# Light: no httpx, rich or DICOM here. The rest is imported when the command runs, so that
# `relaypacs --help` and the gateway's own commands do not pay for it.
from relaypacs.client.errors import ExitCode

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from relaypacs.client import (
        CodePrompt,
        Delivery,
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
ZIP archives, in any mix. Files are grouped by StudyInstanceUID: one upload per study. An
interrupted upload (network cut, Ctrl-C, killed) resumes when the same command is run again,
without re-sending what the server already has. Hashes are cached in $RELAYPACS_STATE_DIR
(default ~/.local/state/relaypacs).

With --wait, once every study is accepted the command follows each one until the PACS has
confirmed every instance (or refused some): the gateway forwards studies on its own, the
command only watches. A study the gateway has already forwarded (or is forwarding) is followed
too.

The progress and the summary number every study (Study 4/9) whatever happens to it; the
summary says what happened to each and ends with the totals: what the gateway accepted
(studies, instances, bytes), what it did not (rejected or failed studies, their files, the
refused ones) and, with --wait, what the PACS confirmed. The files not sent are counted and
named by reason: not DICOM, without StudyInstanceUID, damaged DICOM (cut or broken before its
StudyInstanceUID), DICOMDIR (the CD's index: never sent), unreadable, archive in an archive,
link to a folder (not followed); the first few names per reason, all with -v. The modality is
each file's own (a study's joined: CT/SR); dates are shown as YYYY-MM-DD (an ACR-NEMA
YYYY.MM.DD too), a value that is not a date as it is.

\b
--json prints one object instead:
  exit_code, error, archives, timings
  studies: in order; each: number, study_instance_uid, upload_id, status,
    accepted, files, instances (the gateway's: 0 unless accepted), total_bytes,
    bytes_sent, bytes_skipped, chunks_sent, chunks_already_stored,
    duplicates_skipped, modalities, study_date (YYYY-MM-DD, or as given),
    errors [{{file, code, message}}], message, delivery (with --wait)
  skipped: {{reason: count}}; skipped_files: {{reason: [name, ...]}}; reasons:
    not_dicom, no_study_uid, damaged, dicomdir, unreadable, nested_archive,
    folder_link
  totals: studies and a count per status; studies_accepted,
    studies_not_accepted; files, instances, total_bytes (of the accepted
    studies); bytes_sent, bytes_skipped, chunks_sent, chunks_already_stored,
    hash_cache_hits (this run); files_found, bytes_found, files_not_accepted,
    files_refused, files_skipped, duplicates_skipped; pacs_confirmed,
    pacs_refused (with --wait)

An account with a second factor (TOTP; required for radiologists and administrators) signs in
with the current code of its authenticator app: --totp-code or RELAYPACS_TOTP_CODE, or asked for
on a terminal; a recovery code (--recovery-code) works once instead. A code works once: if the
session ends during a long upload and cannot be renewed, a terminal asks for a new code; a
script stops (exit 4) and resumes when run again with a fresh code. The session is ended
(signed out) when the command ends.

\b
Exit codes:
  {ExitCode.OK}  every study validated by the gateway, or already delivered; with --wait,
     every study confirmed by the PACS (or the gateway has no PACS configured, which is said)
  {ExitCode.REJECTED}  some study rejected by validation, or a file failed permanently
  {ExitCode.USAGE}  usage error, unusable input (e.g. unsafe ZIP), or nothing to upload
  {ExitCode.UNREACHABLE}  could not reach the server, or gave up after retries (also: the gateway
     rate-limits sign-ins for now): run again (later) to resume; with --wait, also: stopped
     waiting (timed out, or the gateway became unreachable) while the gateway goes on
     forwarding: run again to follow it
  {ExitCode.AUTH}  authentication failed: wrong password, TOTP code refused, a code needed but
     none given (not on a terminal), or the account must first enrol TOTP (or change its
     password) in the web app
  {ExitCode.NOT_DELIVERED}  with --wait: the PACS refused some instance for good (the files and
     reasons are listed), or forwarding was cancelled on the gateway
  130  interrupted (Ctrl-C): run again to resume
When several apply, the first of 4, 3, 1, 5 wins.
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
    "--totp-code",
    envvar="RELAYPACS_TOTP_CODE",
    metavar="CODE",
    help="[env RELAYPACS_TOTP_CODE] The current code of your authenticator app, for an account "
    "with TOTP; asked for on a terminal when needed and missing.",
)
@click.option(
    "--recovery-code",
    envvar="RELAYPACS_RECOVERY_CODE",
    metavar="CODE",
    help="[env RELAYPACS_RECOVERY_CODE] One of your TOTP recovery codes instead (each works "
    "once). Prefer the environment variable: a command line is visible to other users.",
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
    help="Print one JSON summary object on stdout and nothing else (its keys: above).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Then wait until the PACS has confirmed every instance of every study.",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0.0),
    default=3600.0,
    show_default=True,
    metavar="SECONDS",
    help="With --wait (given alone, it implies --wait): stop waiting after this long (exit 3; "
    "the gateway goes on forwarding).",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Log retries and requests on stderr, and name every skipped file in the summary.",
)
@click.pass_context
def upload(
    ctx: click.Context,
    paths: tuple[Path, ...],
    server: str,
    username: str | None,
    password: str | None,
    totp_code: str | None,
    recovery_code: str | None,
    parallel: int,
    retries: int,
    timeout: float,
    as_json: bool,
    wait: bool,
    wait_timeout: float,
    verbose: bool,
) -> None:
    if ctx.get_parameter_source("wait_timeout") is click.core.ParameterSource.COMMANDLINE:
        wait = True
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
    options = UploadOptions(parallel=parallel, wait=wait, wait_timeout=wait_timeout)
    try:
        summary = asyncio.run(
            _run(
                list(paths),
                server=server,
                username=username,
                password=password,
                totp_code=totp_code or None,
                recovery_code=recovery_code or None,
                ask_code=_code_prompt(display) if interactive else None,
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
        _print_summary(summary, server, verbose)
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
    totp_code: str | None,
    recovery_code: str | None,
    ask_code: CodePrompt | None,
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
        totp_code=totp_code,
        recovery_code=recovery_code,
        ask_code=ask_code,
        timeout=request_timeout,
        retry=RetryPolicy(retries=retries),
        max_connections=parallel + 1,
    ) as client:
        try:
            return await run_upload(paths, client, options=options, progress=display)
        except InputError as exc:
            return RunSummary(error=str(exc), error_kind="input")
        finally:
            # A run is a session: end it (best effort; it never changes the exit code).
            await client.logout()


def _code_prompt(display: _Display) -> CodePrompt:
    """Asks for a TOTP code on the terminal, the progress display paused meanwhile. The code
    is read in a daemon thread: Ctrl-C at the prompt ends the command at once."""

    async def ask(message: str) -> str | None:
        def read() -> str:
            value: str = click.prompt(message, default="", show_default=False, err=True)
            return value

        display.pause()
        try:
            return await _in_daemon_thread(read)
        except click.Abort:  # end of input
            return None
        finally:
            display.resume()

    return ask


async def _in_daemon_thread(function: Callable[[], str]) -> str:
    """``function()`` in a daemon thread (asyncio.to_thread's threads are waited for at exit:
    a blocked prompt would keep an interrupted command alive)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def settle(result: str | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    def run() -> None:
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="relaypacs-prompt", daemon=True).start()
    return await future


# -- progress displays --------------------------------------------------------------------


class _Display:
    """No display (``--json`` without a terminal); the base of the others."""

    def __init__(self) -> None:
        self._study_count = 0

    def _label(self, study: StudyPlan | StudyResult) -> str:
        """``Study 3/12 CT/SR, 240 files``: every study by its number, whether it started or
        not (a study that fails before it starts, one never started)."""
        return _study_label(study.number, self._study_count, study.modalities, study.file_count)

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

    def waiting(self, results: Sequence[StudyResult]) -> None:
        pass

    def delivery_progress(self, result: StudyResult) -> None:
        pass

    def delivery_finished(self, result: StudyResult) -> None:
        pass

    def pause(self) -> None:
        """Stop drawing (a prompt is shown)."""

    def resume(self) -> None:
        """Draw again after :meth:`pause`."""

    def close(self) -> None:
        pass


class _RichDisplay(_Display):
    """Progress bars on the terminal (stderr): bytes, MB/s, ETA; then the PACS's progress."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        super().__init__()
        self._console = console
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
        self._study_tasks: dict[str, TaskID] = {}  # by Study Instance UID
        self._delivery: Progress | None = None
        self._delivery_tasks: dict[str, TaskID] = {}

    def hashing(self, total_bytes: int) -> None:
        self._hash_task = self._progress.add_task("Hashing", total=total_bytes)

    def hashed(self, n_bytes: int) -> None:
        if self._hash_task is not None:
            self._progress.advance(self._hash_task, n_bytes)

    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None:
        self._study_task = self._progress.add_task(
            self._label(plan), total=total_bytes, completed=already_bytes
        )
        self._study_tasks[plan.study_instance_uid] = self._study_task

    def sent(self, n_bytes: int) -> None:
        if self._study_task is not None:
            self._progress.advance(self._study_task, n_bytes)

    def study_finished(self, result: StudyResult) -> None:
        label = f"{self._label(result)} {result.status.value.replace('_', ' ')}"
        task = self._study_tasks.get(result.study_instance_uid)
        if task is None:  # ended before it started: a line of its own all the same
            self._progress.add_task(
                label,
                total=result.total_bytes,
                completed=result.bytes_sent + result.bytes_skipped,
            )
        else:
            self._progress.update(task, description=label)
        self._study_task = None

    def waiting(self, results: Sequence[StudyResult]) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        # The byte columns of the upload make no sense for instances: a display of its own.
        self._progress.stop()
        self._delivery = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=self._console,
            transient=False,
        )
        self._delivery.start()
        for result in results:
            self._delivery_tasks[result.study_instance_uid] = self._delivery.add_task(
                f"{self._label(result)}: PACS", total=None, state="asking the gateway"
            )

    def delivery_progress(self, result: StudyResult) -> None:
        task = self._delivery_tasks.get(result.study_instance_uid)
        delivery = result.delivery
        if self._delivery is None or task is None or delivery is None:
            return
        self._delivery.update(
            task,
            description=f"{self._label(result)}: {_pacs_count(delivery)}",
            total=delivery.instances or None,
            completed=delivery.confirmed + delivery.failed,
            state=_short_state(delivery),
        )

    def delivery_finished(self, result: StudyResult) -> None:
        self.delivery_progress(result)

    def pause(self) -> None:
        (self._delivery or self._progress).stop()

    def resume(self) -> None:
        (self._delivery or self._progress).start()

    def close(self) -> None:
        self._progress.stop()
        if self._delivery is not None:
            self._delivery.stop()


class _PlainDisplay(_Display):
    """Without a terminal: a plain line at each step, and every few seconds while sending
    or waiting."""

    def __init__(self, stream: TextIO, every: float = 10.0) -> None:
        super().__init__()
        self._stream = stream
        self._every = every
        self._last = 0.0
        self._started_studies: set[str] = set()
        self._total = 0
        self._done = 0
        self._started = 0.0
        self._base = 0
        self._said: dict[str, tuple[str, float]] = {}

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def discovered(self, discovery: Discovery, studies: Sequence[StudyPlan]) -> None:
        super().discovered(discovery, studies)
        skipped = len(discovery.skipped)
        self._line(
            f"found {_count(len(discovery.files), 'DICOM file')} in "
            f"{_count(len(studies), 'study', 'studies')}"
            + (f", {_count(skipped, 'file')} skipped" if skipped else "")
        )

    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None:
        self._started_studies.add(plan.study_instance_uid)
        self._total, self._done = total_bytes, already_bytes
        self._base = already_bytes
        self._started = self._last = time.monotonic()
        self._line(
            f"uploading {self._label(plan)}: {_size(total_bytes - already_bytes)} to send, "
            f"{_size(already_bytes)} already on the server"
        )

    def sent(self, n_bytes: int) -> None:
        self._done += n_bytes
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            rate = (self._done - self._base) / max(now - self._started, 1e-6)
            percent = 100 * self._done / self._total if self._total else 100.0
            self._line(
                f"  {_size(self._done)} / {_size(self._total)} ({percent:.0f}%), "
                f"{rate / 1e6:.1f} MB/s"
            )

    def study_finished(self, result: StudyResult) -> None:
        # Under its "uploading" line; a study that ended before it started on a line of its own.
        indent = "  " if result.study_instance_uid in self._started_studies else ""
        self._line(f"{indent}{self._label(result)}: {result.status.value.replace('_', ' ')}")

    def waiting(self, results: Sequence[StudyResult]) -> None:
        count = len(results)
        self._line(
            f"waiting for the PACS to confirm {count} " + ("study" if count == 1 else "studies")
        )

    def delivery_progress(self, result: StudyResult) -> None:
        """A line when the study moved, at most every few seconds."""
        delivery = result.delivery
        if delivery is None:
            return
        text = f"  {self._label(result)}: {_pacs_count(delivery)} ({_delivery_state(delivery)})"
        said, when = self._said.get(result.study_instance_uid, ("", -self._every))
        now = time.monotonic()
        if text != said and now - when >= self._every:
            self._said[result.study_instance_uid] = (text, now)
            self._line(text)

    def delivery_finished(self, result: StudyResult) -> None:
        delivery = result.delivery
        if delivery is not None:
            self._line(f"  {self._label(result)}: {_delivery_line(delivery)}")


def _study_label(number: int, count: int, modalities: Sequence[str], files: int) -> str:
    return f"Study {number}/{count} {_modalities(modalities)}, {_count(files, 'file')}"


def _modalities(modalities: Sequence[str]) -> str:
    """``CT``, ``CT/SR``; ``no modality`` when no file of the study has its own."""
    return "/".join(modalities) or "no modality"


def _size(n_bytes: int) -> str:
    """``512 B``, ``12.3 kB``, ``4.5 MB``, ``1.2 GB``: a small file never shows as 0.0 MB."""
    if n_bytes < 1000:
        return f"{n_bytes} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6)):
        if n_bytes < scale * 999.95:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1e9:.1f} GB"


def _pacs_count(delivery: Delivery) -> str:
    from relaypacs.client.delivery import DeliveryStatus

    if delivery.status is DeliveryStatus.NO_PACS:
        return "no PACS"
    if not delivery.instances:
        return "PACS"
    return f"PACS confirmed {delivery.confirmed}/{delivery.instances}"


def _delivery_state(delivery: Delivery) -> str:
    """A few words on where the study stands with the PACS."""
    from relaypacs.client.delivery import DeliveryStatus

    status = delivery.status
    refused = delivery.failed or len(delivery.failures)
    if status is DeliveryStatus.WAITING:
        state = delivery.upload_status or "queued"
        if refused:
            state += f", {refused} refused"
        if delivery.last_error and delivery.upload_status == "queued":
            state += f", retrying after {delivery.last_error} (attempt {delivery.attempts})"
        return state
    if status is DeliveryStatus.DELIVERED:
        return f"delivered to {delivery.target}" if delivery.target else "delivered"
    if status is DeliveryStatus.FAILED:
        return f"not delivered: the PACS refused {refused} " + (
            "instance" if refused == 1 else "instances"
        )
    if status is DeliveryStatus.NO_PACS:
        return "the gateway has no PACS configured: the study is kept there, not forwarded"
    if status is DeliveryStatus.TIMED_OUT:
        return "stopped waiting (--wait-timeout): the gateway goes on forwarding"
    if status is DeliveryStatus.UNREACHABLE:
        return "stopped waiting (the gateway does not answer): it goes on forwarding"
    return f"not delivered: {delivery.message or status.value}"


def _short_state(delivery: Delivery) -> str:
    """The state column of the terminal display (the summary tells the rest)."""
    from relaypacs.client.delivery import DeliveryStatus

    status = delivery.status
    if status is DeliveryStatus.WAITING:
        if delivery.last_error and delivery.upload_status == "queued":
            return f"retrying ({delivery.last_error})"
        return delivery.upload_status or "queued"
    if status is DeliveryStatus.FAILED:
        return f"{delivery.failed or len(delivery.failures)} refused"
    return {
        DeliveryStatus.NO_PACS: "no PACS configured",
        DeliveryStatus.TIMED_OUT: "stopped waiting",
        DeliveryStatus.UNREACHABLE: "gateway unreachable",
    }.get(status, status.value)


def _delivery_line(delivery: Delivery) -> str:
    from relaypacs.client.delivery import DeliveryStatus

    if delivery.status is DeliveryStatus.NO_PACS:
        return _delivery_state(delivery)
    return f"{_pacs_count(delivery)}, {_delivery_state(delivery)}"


# -- human summary ------------------------------------------------------------------------

_STATUS_STYLE = {
    "validated": "green",
    "already_delivered": "green",
    "rejected": "red",
    "failed": "red",
    "interrupted": "yellow",
    "not_started": "yellow",
}
_DELIVERY_STYLE = {
    "delivered": "green",
    "failed": "red",
    "cancelled": "red",
}


def _print_summary(summary: RunSummary, server: str, verbose: bool = False) -> None:
    """Per study, by its number (as in the progress): status, modality, date, counts and the
    Study Instance UID, then where it stands with the PACS (--wait); never the patient's
    name."""
    from rich.console import Console
    from rich.text import Text

    from relaypacs.client.delivery import DeliveryStatus

    _replace_unencodable(sys.stdout)
    console = Console(highlight=False, soft_wrap=True)  # long lines: the terminal wraps
    if summary.studies:
        console.print(f"Upload to {server}:", markup=False)
    count = len(summary.studies)
    for study in summary.studies:
        style = _STATUS_STYLE.get(study.status.value, "yellow")
        status = study.status.value.replace("_", " ")
        line = Text.assemble(
            f"{study.number:>{len(str(count))}}/{count} ",
            (f"{status:<17} ", style),
            f"{_modalities(study.modalities)} {study.study_date or '-'}  {_what_happened(study)}",
        )
        console.print(line)
        console.print(f"  study {study.study_instance_uid}", markup=False)
        if study.duplicates_skipped:
            copies = _count(study.duplicates_skipped, "identical duplicate file")
            console.print(f"  {copies} sent once", markup=False)
        if study.message:
            console.print(f"  {study.message}", markup=False)
        for problem in study.errors:
            console.print(f"  {problem.name}: {problem.code}: {problem.message}", markup=False)
        delivery = study.delivery
        if delivery is not None:
            style = _DELIVERY_STYLE.get(delivery.status.value, "yellow")
            console.print(Text(f"  {_delivery_line(delivery)}", style=style))
            for problem in delivery.failures:
                console.print(
                    f"    {problem.name}: {problem.code} ({problem.message})", markup=False
                )
            if delivery.status is DeliveryStatus.UNREACHABLE:
                console.print(f"  {delivery.message}", markup=False)
    _print_totals(console, summary)
    _print_skipped(console, summary, verbose)
    if summary.error:
        console.print(Text.assemble(("Error: ", "red"), summary.error))
    if summary.exit_code == ExitCode.UNREACHABLE:
        if summary.wait_unfinished and summary.error is None:
            console.print(
                "The gateway has the studies and goes on forwarding them: run the same "
                "command again to follow them."
            )
        else:
            console.print("Run the same command again to resume; nothing acknowledged is lost.")


def _replace_unencodable(stream: TextIO) -> None:
    """A file name that the terminal's encoding cannot show (an ASCII or Latin-1 locale) is
    shown with '?' rather than ending the command before its summary."""
    if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
        stream.reconfigure(errors="replace")


def _what_happened(study: StudyResult) -> str:
    """What the gateway has of the study, what was sent."""
    from relaypacs.client import StudyStatus

    files = _count(study.files, "file")
    if study.accepted:
        text = _count(study.instances, "instance")
        if study.bytes_sent:
            text += f", {_size(study.bytes_sent)} sent"
            if study.bytes_skipped:
                text += f", {_size(study.bytes_skipped)} already there"
        elif study.total_bytes:
            text += ", all already there"
        return text
    if study.status is StudyStatus.REJECTED:
        return f"{files}, {study.files_refused} refused: not accepted"
    if study.status is StudyStatus.INTERRUPTED:
        there = study.bytes_sent + study.bytes_skipped
        return f"{files}, {_size(there)} of {_size(study.total_bytes)} there: not accepted yet"
    if study.bytes_sent:
        return f"{files}, {_size(study.bytes_sent)} sent: not accepted"
    return f"{files}, not sent"


def _print_totals(console: Console, summary: RunSummary) -> None:
    """What the gateway accepted (and the PACS, with --wait), then what it did not."""
    if not summary.studies:
        return
    totals = summary.as_dict()["totals"]
    count = totals["studies"]
    accepted = totals["studies_accepted"]
    console.print(
        f"{accepted} of {count} {'study' if count == 1 else 'studies'} accepted: "
        f"{_count(totals['instances'], 'instance')}, {_size(totals['total_bytes'])}; "
        f"{_size(totals['bytes_sent'])} sent by this run",
        markup=False,
    )
    _print_pacs_totals(console, summary.deliveries)
    not_accepted = totals["studies_not_accepted"]
    if not_accepted:
        by_status = ", ".join(
            f"{n} {status.replace('_', ' ')}"
            for status, n in totals.items()
            if status in _NOT_ACCEPTED and n
        )
        refused = totals["files_refused"]
        console.print(
            f"{_count(not_accepted, 'study', 'studies')} not accepted ({by_status}): "
            f"{_count(totals['files_not_accepted'], 'file')}"
            + (f", {refused} refused" if refused else ""),
            markup=False,
        )


_NOT_ACCEPTED = ("rejected", "failed", "interrupted", "not_started")


def _print_pacs_totals(console: Console, deliveries: Sequence[Delivery]) -> None:
    """With --wait: the instances the PACS confirmed, refused, not yet."""
    from relaypacs.client.delivery import DeliveryStatus

    followed = [d for d in deliveries if d.status is not DeliveryStatus.NO_PACS]
    if not followed:
        if deliveries:
            console.print("PACS: none configured on the gateway (the studies are kept there)")
        return
    instances = sum(d.instances for d in followed)
    confirmed = sum(d.confirmed for d in followed)
    refused = sum(d.failed or len(d.failures) for d in followed)
    text = f"PACS: {confirmed} of {_count(instances, 'instance')} confirmed"
    if refused:
        text += f", {refused} refused"
    if instances - confirmed - refused > 0:
        text += f", {instances - confirmed - refused} not yet"
    console.print(text, markup=False)


# How many names of skipped files the summary shows per reason (-v: all of them).
_SKIPPED_NAMES_SHOWN = 5
# Each reason a file is skipped for (relaypacs.client.SkipReason): singular, plural.
_SKIP_REASONS = {
    "not_dicom": ("not DICOM", "not DICOM"),
    "no_study_uid": ("without StudyInstanceUID", "without StudyInstanceUID"),
    "damaged": ("damaged DICOM", "damaged DICOM"),
    "dicomdir": ("DICOMDIR", "DICOMDIR"),
    "unreadable": ("unreadable", "unreadable"),
    "nested_archive": ("archive in an archive", "archives in an archive"),
    "folder_link": ("link to a folder (not followed)", "links to folders (not followed)"),
}


def _skip_reason(reason: str, count: int) -> str:
    singular, plural = _SKIP_REASONS.get(reason, (reason.replace("_", " "),) * 2)
    return singular if count == 1 else plural


def _print_skipped(console: Console, summary: RunSummary, verbose: bool) -> None:
    """The files not sent, counted by reason, then named: the first few per reason, or all
    of them with ``verbose``."""
    if not summary.skipped:
        return
    total = sum(summary.skipped.values())
    counts = ", ".join(f"{n} {_skip_reason(r, n)}" for r, n in summary.skipped.items())
    console.print(f"Skipped {_count(total, 'file')}: {counts}", markup=False)
    for reason, names in summary.skipped_files.items():
        label = _skip_reason(reason, len(names))
        if verbose:
            console.print(f"  {label}:", markup=False)
            for name in names:
                console.print(f"    {name}", markup=False)
            continue
        shown = ", ".join(names[:_SKIPPED_NAMES_SHOWN])
        more = len(names) - _SKIPPED_NAMES_SHOWN
        if more > 0:
            shown += f" and {more} more (-v lists them all)"
        console.print(f"  {label}: {shown}", markup=False)


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
