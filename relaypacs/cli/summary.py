"""The summary `relaypacs upload` prints at its end: what happened to each study, the totals of
what the gateway accepted and the PACS confirmed, and the files not sent, by reason."""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

# Light: no httpx, rich or DICOM here. The rest is imported when the command runs, so that
# `relaypacs --help` and the gateway's own commands do not pay for it.
from relaypacs.cli.display import count_of, delivery_line, modalities_text, size_text
from relaypacs.client.errors import ExitCode

if TYPE_CHECKING:
    from rich.console import Console

    from relaypacs.client import (
        Delivery,
        RunSummary,
        StudyResult,
    )


# -- human summary ------------------------------------------------------------------------

_STATUS_STYLE = {
    "validated": "green",
    "partial": "yellow",
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
    "expired": "red",
}


def print_summary(summary: RunSummary, server: str, verbose: bool = False) -> None:
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
            f"{modalities_text(study.modalities)} {study.study_date or '-'}  "
            f"{_what_happened(study)}",
        )
        console.print(line)
        console.print(f"  study {study.study_instance_uid}", markup=False)
        if study.duplicates_skipped:
            copies = count_of(study.duplicates_skipped, "identical duplicate file")
            console.print(f"  {copies} sent once", markup=False)
        if study.message:
            console.print(f"  {study.message}", markup=False)
        for problem in study.errors:
            console.print(f"  {problem.name}: {problem.code}: {problem.message}", markup=False)
        delivery = study.delivery
        if delivery is not None:
            style = _DELIVERY_STYLE.get(delivery.status.value, "yellow")
            console.print(Text(f"  {delivery_line(delivery)}", style=style))
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

    files = count_of(study.files, "file")
    if study.accepted:
        text = count_of(study.instances, "instance")
        if study.status is StudyStatus.PARTIAL:
            refused = study.files_refused
            text = (
                f"accepted {study.files - refused} of {files}; {refused} refused (listed "
                f"below): {text}"
            )
        if study.bytes_sent:
            text += f", {size_text(study.bytes_sent)} sent"
            if study.bytes_skipped:
                text += f", {size_text(study.bytes_skipped)} already there"
        elif study.total_bytes:
            text += ", all already there"
        return text
    if study.status is StudyStatus.REJECTED:
        return f"{files}, {study.files_refused} refused: not accepted"
    if study.status is StudyStatus.INTERRUPTED:
        there = study.bytes_sent + study.bytes_skipped
        return (
            f"{files}, {size_text(there)} of {size_text(study.total_bytes)} there: not accepted yet"
        )
    if study.bytes_sent:
        return f"{files}, {size_text(study.bytes_sent)} sent: not accepted"
    return f"{files}, not sent"


def _print_totals(console: Console, summary: RunSummary) -> None:
    """What the gateway accepted (and the PACS, with --wait), then what it did not."""
    if not summary.studies:
        return
    totals = summary.as_dict()["totals"]
    count = totals["studies"]
    accepted = totals["studies_accepted"]
    partial = totals["files_refused_in_accepted"]
    console.print(
        f"{accepted} of {count} {'study' if count == 1 else 'studies'} accepted: "
        f"{count_of(totals['instances'], 'instance')}, {size_text(totals['total_bytes'])}"
        + (f" ({count_of(partial, 'file')} of them refused, listed above)" if partial else "")
        + f"; {size_text(totals['bytes_sent'])} sent by this run",
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
        refused = totals["files_refused"] - partial
        console.print(
            f"{count_of(not_accepted, 'study', 'studies')} not accepted ({by_status}): "
            f"{count_of(totals['files_not_accepted'], 'file')}"
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
    text = f"PACS: {confirmed} of {count_of(instances, 'instance')} confirmed"
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
    console.print(f"Skipped {count_of(total, 'file')}: {counts}", markup=False)
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
