"""`uv run python -m bench.document [--quick [--full NAME,...]] [--only NAME,...] [--out FILE]`:
run every benchmark and chaos scenario and write their tables into one Markdown document,
with the machine's description and the date.

Each entry is a command of its own (the same one a reader would type), run as a child process
one after the other; its standard output is the table, kept as printed. A command that fails
is recorded with its exit status and the end of its standard error, and the document is still
written: a missing goal or a failed scenario is a figure to read, not a reason to lose the
others. `--quick` runs the short form of each command, but the sections named by `--full`
(the headline figures, which the short form does not show: the API at 100 clients, the
large study); each section names the command it ran. `--only NAME,... --update` runs those
sections again and replaces them in the existing document, keeping the others as they were
(the header says which were regenerated, when, and the load average then). Exit status: 0
when every command exited 0, else 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.machine import describe

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
# A command that runs away is stopped: the document must be regenerated in bounded time.
TIMEOUT_SECONDS = 3600.0


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    argv: tuple[str, ...]  # after `python -m`
    quick_argv: tuple[str, ...] | None = None  # with --quick (None: the same)
    about: str = ""


ENTRIES: tuple[Entry, ...] = (
    Entry(
        "ingest",
        "Ingest and forwarding (gateway vs disk, tus peer and direct STOW-RS)",
        ("bench", "--studies", "small,large"),
        ("bench", "--quick"),
        "See bench/README.md for what each row measures.",
    ),
    Entry(
        "relay_shaped",
        "The pipelined relay on shaped links (clinic 50 Mbit/s -> gateway -> PACS 100 Mbit/s)",
        (
            "bench",
            "--only",
            "forward",
            "--net",
            "uplink=50mbit,pacs=100mbit",
            "--studies",
            "small,medium",
        ),
        ("bench", "--only", "forward", "--net", "uplink=50mbit,pacs=100mbit", "--quick"),
        "First byte -> PACS confirmed through the gateway (upload then forward, and pipelined) "
        "against a direct STOW-RS through the uplink alone (issue 16, item 1: goal 1.1x).",
    ),
    Entry(
        "bad_network",
        "Bad networks: the CLI, the web app and tuspy through a slow, distant, cut link",
        ("bench", "--net", "20mbit,100ms,cut", "--net-runs", "cli:auto:4,cli:8MiB:4,web,tuspy"),
        ("bench", "--net", "20mbit,100ms,cut", "--net-studies", "mf", "--net-runs", "cli:auto:4"),
        "20 Mbit/s, 100 ms round trip, every connection cut every 10-20 s (issue 16, item 3: "
        "goodput at least 0.9x the rate; a cut costs at most the chunks in flight).",
    ),
    Entry(
        "load_sqlite",
        "The API under load, SQLite, one process",
        ("bench.load", "--seconds", "20"),
        ("bench.load", "--seconds", "5", "--clients", "20"),
        "100 clients polling an upload's status and the list back to back (issue 16, item 4: "
        "goal P95 under 100 ms). The load generator (wrk, one process per request kind, half "
        "the clients each) runs on the same two cores, for under a CPU second.",
    ),
    Entry(
        "load_postgres",
        "The API under load, PostgreSQL + Redis, two worker processes",
        ("bench.load", "--db", "postgres", "--workers", "2", "--seconds", "20"),
        ("bench.load", "--db", "postgres", "--workers", "2", "--seconds", "5", "--clients", "20"),
    ),
    Entry(
        "stats_day",
        "Daily statistics of 10,000 uploads (PostgreSQL)",
        ("bench.stats_day", "--uploads", "10000"),
        ("bench.stats_day", "--uploads", "1000"),
    ),
    Entry(
        "chunk_cost",
        "The chunk path alone",
        ("bench.chunk_cost",),
        about="One chunk PUT's wall and CPU cost in the serving process, against a bare route.",
    ),
    Entry(
        "login",
        "Login latency",
        ("bench.login_latency",),
    ),
    Entry(
        "sse",
        "SSE fan-out, one process",
        ("bench.sse_fanout",),
    ),
    Entry(
        "sse_replicas",
        "SSE fan-out across two replicas (PostgreSQL + Redis)",
        ("bench.sse_fanout", "--replicas"),
    ),
    Entry(
        "web_upload",
        "The web app against the CLI",
        ("bench.web_upload",),
    ),
    *(
        Entry(
            f"chaos_{scenario}",
            f"Chaos: {scenario}",
            ("chaos", scenario),
            ("chaos", scenario, "--rounds", "3"),
            about,
        )
        for scenario, about in (
            ("kill", "SIGKILL of the gateway at random points of upload and relay."),
            ("diskfull", "Chunk storage on a small tmpfs that fills up during chunk writes."),
            ("pgrestart", "A private PostgreSQL restarted mid-upload."),
            ("slowclients", "Slow-body clients hold connections while /health/live is probed."),
        )
    ),
)


@dataclass
class Outcome:
    entry: Entry
    argv: tuple[str, ...]
    started: dt.datetime
    seconds: float
    returncode: int
    stdout: str
    stderr_tail: str


def run(entry: Entry, *, quick: bool) -> Outcome:
    argv = entry.quick_argv if quick and entry.quick_argv is not None else entry.argv
    started = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    print(f"== {entry.name}: python -m {' '.join(argv)}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            [sys.executable, "-m", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            check=False,
        )
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        returncode = -1
        stdout = _text(expired.stdout)
        stderr = _text(expired.stderr) + f"\nstopped after {TIMEOUT_SECONDS:.0f} s"
    seconds = time.monotonic() - began
    tail = "\n".join(stderr.strip().splitlines()[-15:]) if returncode != 0 else ""
    return Outcome(entry, argv, started, seconds, returncode, stdout, tail)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def render(outcomes: Sequence[Outcome], *, machine_lines: Sequence[str], flags: str) -> str:
    today = dt.datetime.now(dt.UTC)
    lines = [
        "# Benchmarks and chaos runs",
        "",
        "Generated by `uv run python -m bench.document"
        + flags
        + f"` on {today:%Y-%m-%d %H:%M} UTC. Regenerate it with the same command; every",
        "section gives the command that produced it, so that any one of them can be run alone.",
        "",
        "## Machine",
        "",
        *(f"- {line}" for line in machine_lines),
        "",
        "| section | command | exit | time |",
        "| --- | --- | --- | --- |",
        *(_row(o) for o in outcomes),
        "",
    ]
    for o in outcomes:
        lines += _section(o)
    return "\n".join(lines)


def _row(o: Outcome) -> str:
    return (
        f"| [{o.entry.title}](#{o.entry.name}) | `python -m {' '.join(o.argv)}` | "
        f"{o.returncode} | {o.seconds:.0f} s |"
    )


def _section(o: Outcome, *, alone: str = "") -> list[str]:
    lines = [
        f'<a id="{o.entry.name}"></a>',
        f"## {o.entry.title}",
        "",
        f"`uv run python -m {' '.join(o.argv)}`, started {o.started:%Y-%m-%d %H:%M} UTC, "
        f"took {o.seconds:.0f} s, exit status {o.returncode}.{alone}",
        "",
    ]
    if o.entry.about:
        lines += [o.entry.about, ""]
    lines += ["```", o.stdout.rstrip() or "(no output)", "```", ""]
    if o.stderr_tail:
        lines += ["The end of its standard error:", "", "```", o.stderr_tail, "```", ""]
    return lines


_ANCHOR = re.compile(r'^<a id="([a-z_]+)"></a>$', re.MULTILINE)


def update(text: str, outcomes: Sequence[Outcome], *, load: str, command: str) -> str:
    """The document `text` with the sections of `outcomes` run again: each replaces its
    section and its row of the table, the others are kept as they were, and the header says
    which were regenerated, when and how."""
    marks = list(_ANCHOR.finditer(text))
    header = text[: marks[0].start()] if marks else text
    sections = {
        m.group(1): text[m.start() : marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        for i, m in enumerate(marks)
    }
    today = dt.datetime.now(dt.UTC)
    alone = f" Regenerated alone ({load})."
    for o in outcomes:
        sections[o.entry.name] = "\n".join(_section(o, alone=alone))
        row = re.compile(rf"^\| \[[^\]]*\]\(#{o.entry.name}\) \|.*$", re.MULTILINE)
        header, found = row.subn(_row(o).replace("\\", "\\\\"), header)
        if not found:
            header = header.replace(
                "| --- | --- | --- | --- |\n", f"| --- | --- | --- | --- |\n{_row(o)}\n", 1
            )
    note = (
        f"Updated {today:%Y-%m-%d %H:%M} UTC: {', '.join(o.entry.name for o in outcomes)} "
        f"regenerated by `{command}`."
    )
    header = header.replace("\n## Machine\n", f"{note}\n\n## Machine\n", 1)
    order = [e.name for e in ENTRIES if e.name in sections]
    order += [name for name in sections if name not in order]
    return (
        header + "".join(sections[name].rstrip("\n") + "\n\n" for name in order).rstrip("\n") + "\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    names = [e.name for e in ENTRIES]
    parser = argparse.ArgumentParser(prog="python -m bench.document", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short form of each command")
    parser.add_argument(
        "--only",
        type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
        default=names,
        help="comma list of sections: " + ",".join(names),
    )
    parser.add_argument(
        "--full",
        type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
        default=[],
        help="with --quick: comma list of sections run in their full form all the same",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --only: replace those sections of the existing --out and keep the others",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    unknown = sorted((set(args.only) | set(args.full)) - set(names))
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    machine_lines = describe(ROOT).lines()
    if args.full and not args.quick:
        parser.error("--full names the sections that --quick leaves in their full form")
    if args.update and (set(args.only) == set(names) or not args.out.exists()):
        parser.error("--update replaces the sections named by --only in an existing --out")
    outcomes = [
        run(e, quick=args.quick and e.name not in args.full) for e in ENTRIES if e.name in args.only
    ]
    flags = (" --quick" if args.quick else "") + (
        f" --full {','.join(args.full)}" if args.full else ""
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.update:
        command = f"uv run python -m bench.document{flags} --only {','.join(args.only)} --update"
        load = next((line for line in machine_lines if line.startswith("load average")), "")
        text = update(args.out.read_text(), outcomes, load=load, command=command)
    else:
        text = render(outcomes, machine_lines=machine_lines, flags=flags)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
