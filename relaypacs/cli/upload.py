"""``relaypacs upload PATH...``: upload DICOM studies to the gateway, resumably."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

# Light: no httpx, rich or DICOM here. The rest is imported when the command runs, so that
# `relaypacs --help` and the gateway's own commands do not pay for it.
from relaypacs.cli.display import Display, PlainDisplay, RichDisplay
from relaypacs.cli.summary import print_summary
from relaypacs.client.errors import ExitCode

if TYPE_CHECKING:
    from relaypacs.client import (
        CodePrompt,
        RunSummary,
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
  studies: in order; each: number, study_instance_uid, upload_id, status (validated,
    partial: accepted without the files in errors, already_delivered, rejected, failed,
    interrupted, not_started),
    accepted, files, instances (the gateway accepted: 0 unless accepted), total_bytes,
    bytes_sent, bytes_skipped, chunks_sent, chunks_already_stored, batches_sent (chunk
    batches among them), chunk_size (the upload's), duplicates_skipped, modalities,
    study_date (YYYY-MM-DD, or as given),
    errors [{{file, code, message}}], message, delivery (with --wait)
  skipped: {{reason: count}}; skipped_files: {{reason: [name, ...]}}; reasons:
    not_dicom, no_study_uid, damaged, dicomdir, unreadable, nested_archive,
    folder_link
  totals: studies and a count per status; studies_accepted,
    studies_not_accepted; files, instances, total_bytes (of the accepted
    studies); bytes_sent, bytes_skipped, chunks_sent, chunks_already_stored,
    batches_sent, hash_cache_hits (this run); files_found, bytes_found, files_not_accepted,
    files_refused, files_refused_in_accepted (partial studies), files_skipped,
    duplicates_skipped; pacs_confirmed,
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
  {ExitCode.PARTIAL}  some study was accepted without some of its files (each is listed with its
     code: damaged, not of the study, two valid copies of one instance that differ...); its
     other instances go on to the PACS. With --all-or-nothing such a study is rejected (1)
  130  interrupted (Ctrl-C): run again to resume
When several apply, the first of 4, 3, 1, 5, 6 wins.
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
    "--chunk-size",
    default="auto",
    show_default=True,
    metavar="SIZE|auto",
    help="The chunk size to ask the gateway for (bytes, or with KiB / MiB; 64KiB at least, "
    "the gateway's own size at most): a cut connection sends the chunks in flight again. "
    "auto: fitted to the link's measured rate, the gateway's size on a local network.",
)
@click.option(
    "--batch-size",
    envvar="RELAYPACS_BATCH_SIZE",
    default="2MiB",
    show_default=True,
    metavar="SIZE|0",
    help="[env RELAYPACS_BATCH_SIZE] Whole files up to 1 MiB go several per request (a chunk "
    "batch) of up to this many bytes (the chunk size at most): one request, one fsync of the "
    "directory and one database transaction for many small files. 0: one file per request.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="A chunk's transfer that makes no progress this long is sent again on a new "
    "connection (a link that silently stopped).",
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
    "--all-or-nothing",
    is_flag=True,
    help="Strict mode: a study with any refused file is rejected whole (exit 1), nothing of it "
    "forwarded. By default its valid instances go on without the refused files (exit 6).",
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
    chunk_size: str,
    batch_size: str,
    stall_timeout: float,
    retries: int,
    timeout: float,
    as_json: bool,
    wait: bool,
    wait_timeout: float,
    all_or_nothing: bool,
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

        display: Display = RichDisplay(Console(stderr=True))
    elif not as_json:
        display = PlainDisplay(sys.stderr)
    else:
        display = Display()
    options = UploadOptions(
        parallel=parallel,
        wait=wait,
        wait_timeout=wait_timeout,
        all_or_nothing=all_or_nothing,
        chunk_size=_chunk_size_option(chunk_size),
        batch_bytes=_batch_size_option(batch_size),
    )
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
                stall_timeout=stall_timeout,
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
        print_summary(summary, server, verbose)
    sys.exit(summary.exit_code)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1 << 20, "mib": 1 << 20}


def _chunk_size_option(value: str) -> int | None:
    """``--chunk-size``: None for auto, else bytes within the gateway's bounds."""
    text = value.strip().lower()
    if text == "auto":
        return None
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :].strip()
    if not digits.strip().isdigit() or unit not in _SIZE_UNITS:
        raise click.BadParameter(f"{value!r}: a size such as 256KiB, 1MiB or 262144, or auto")
    size = int(digits) * _SIZE_UNITS[unit]
    if not 64 * 1024 <= size <= 64 << 20:
        raise click.BadParameter(f"{value!r}: from 64KiB to 64MiB")
    return size


def _batch_size_option(value: str) -> int:
    """``--batch-size``: 0 (no batches), else bytes, 64KiB to 64MiB."""
    if value.strip() == "0":
        return 0
    size = _chunk_size_option(value)
    if size is None:
        raise click.BadParameter(f"{value!r}: a size such as 2MiB, or 0")
    return size


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
    stall_timeout: float,
    parallel: int,
    options: UploadOptions,
    display: Display,
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
        stall_timeout=stall_timeout,
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


def _code_prompt(display: Display) -> CodePrompt:
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
