"""The progress of `relaypacs upload` on a terminal (rich) or as plain lines, and the words
both it and the summary use for a study and its delivery."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

# Light: no httpx, rich or DICOM here. The rest is imported when the command runs, so that
# `relaypacs --help` and the gateway's own commands do not pay for it.

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from relaypacs.client import (
        Delivery,
        Discovery,
        StudyPlan,
        StudyResult,
    )

# -- progress displays --------------------------------------------------------------------


class Display:
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


class RichDisplay(Display):
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


class PlainDisplay(Display):
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
            f"found {count_of(len(discovery.files), 'DICOM file')} in "
            f"{count_of(len(studies), 'study', 'studies')}"
            + (f", {count_of(skipped, 'file')} skipped" if skipped else "")
        )

    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None:
        self._started_studies.add(plan.study_instance_uid)
        self._total, self._done = total_bytes, already_bytes
        self._base = already_bytes
        self._started = self._last = time.monotonic()
        self._line(
            f"uploading {self._label(plan)}: {size_text(total_bytes - already_bytes)} to send, "
            f"{size_text(already_bytes)} already on the server"
        )

    def sent(self, n_bytes: int) -> None:
        self._done += n_bytes
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            rate = (self._done - self._base) / max(now - self._started, 1e-6)
            percent = 100 * self._done / self._total if self._total else 100.0
            self._line(
                f"  {size_text(self._done)} / {size_text(self._total)} ({percent:.0f}%), "
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
            self._line(f"  {self._label(result)}: {delivery_line(delivery)}")


def _study_label(number: int, count: int, modalities: Sequence[str], files: int) -> str:
    return f"Study {number}/{count} {modalities_text(modalities)}, {count_of(files, 'file')}"


def modalities_text(modalities: Sequence[str]) -> str:
    """``CT``, ``CT/SR``; ``no modality`` when no file of the study has its own."""
    return "/".join(modalities) or "no modality"


def size_text(n_bytes: int) -> str:
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


def delivery_line(delivery: Delivery) -> str:
    from relaypacs.client.delivery import DeliveryStatus

    if delivery.status is DeliveryStatus.NO_PACS:
        return _delivery_state(delivery)
    return f"{_pacs_count(delivery)}, {_delivery_state(delivery)}"


def count_of(n: int, noun: str, plural: str | None = None) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
