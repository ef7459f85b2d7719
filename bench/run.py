"""The benchmark driver: generate or reuse the studies, measure every contender, print tables."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import disk, forward, gateway, machine, report, studies, tus_peer
from bench.report import StudyResult, check_lines, checks, forward_table, table
from bench.results import Measurement

BENCH_DIR = Path(__file__).resolve().parent
WORK = BENCH_DIR / ".work"
PARTS = ("disk", "tus", "gateway", "forward")
PARALLEL = 4  # files in flight: the CLI's --parallel and the tus feeder's threads
CHUNK = 8 << 20  # the gateway's default chunk size and the tus PATCH size


def log(message: str) -> None:
    print(message, flush=True)


def _csv(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad)} (choose from {', '.join(choices)})"
            )
        return items

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="RelayPACS benchmark: ingest (gateway vs disk fsync vs a tus peer) and "
        "forwarding (gateway vs a direct STOW-RS client, to a local Orthanc).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small studies, one run each: a smoke run of about a minute",
    )
    parser.add_argument(
        "--only",
        type=_csv(PARTS),
        default=list(PARTS),
        help="comma list of parts to run: disk,tus,gateway,forward (default: all)",
    )
    parser.add_argument(
        "--studies",
        type=_csv(tuple(studies.FULL)),
        default=list(studies.DEFAULT_KEYS),
        help="comma list of studies: small,large,large-mf (default: small,large)",
    )
    parser.add_argument(
        "--study-dir",
        type=Path,
        action="append",
        default=[],
        help="benchmark this existing directory of DICOM files instead "
        "(repeatable; replaces --studies)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per contender, median reported (default: 3 for studies "
        "under 500 MB, else 1; 1 with --quick)",
    )
    parser.add_argument(
        "--tus-clients",
        type=_csv(("tuspy", "httpx")),
        default=["tuspy", "httpx"],
        help="tus feeders to run (default: tuspy,httpx)",
    )
    parser.add_argument(
        "--batch-size",
        default=None,
        metavar="SIZE|0",
        help="the CLI's --batch-size (chunk batches of whole small files; 0: one file per "
        "request; default: its own)",
    )
    parser.add_argument(
        "--dicom-workers",
        type=int,
        default=None,
        help="RELAYPACS_DICOM_WORKERS for the gateway (default: its own)",
    )
    parser.add_argument(
        "--pacs-verify",
        choices=("uids", "sample", "content"),
        default=None,
        help="forwarding part: RELAYPACS_PACS_VERIFY for the gateway (default: its own, "
        "content for Orthanc: MD5 taken while sending, checked against Orthanc's)",
    )
    parser.add_argument(
        "--forward-poll-ms",
        type=float,
        default=forward.POLL_SECONDS * 1000,
        help="forwarding part: pause between two polls of the upload's status (default: "
        f"{forward.POLL_SECONDS * 1000:.0f}); each poll costs the gateway CPU",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=WORK,
        help="studies cache and scratch space, on the disk being measured "
        f"(default: {WORK.relative_to(BENCH_DIR.parent)})",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write every figure to PATH as JSON",
    )
    return parser.parse_args(argv)


def _repeat(args: argparse.Namespace, total_bytes: int) -> int:
    if args.repeat is not None:
        return max(1, int(args.repeat))
    if args.quick:
        return 1
    return 3 if total_bytes < 500_000_000 else 1


def _custom_study(directory: Path) -> studies.Study:
    directory = directory.resolve()
    files = studies.list_files(directory)
    if not files:
        raise SystemExit(f"--study-dir {directory}: no files")
    spec = studies.StudySpec(
        key=directory.name,
        title=f"existing study {directory}",
        instances=len(files),
        why="given with --study-dir",
    )
    total = sum(p.stat().st_size for p in files)
    return studies.Study(spec, directory, files, total, False, None)


def measure_study(
    study: studies.Study,
    args: argparse.Namespace,
    parts: Sequence[str],
    unavailable: dict[str, str],
) -> StudyResult:
    repeat = _repeat(args, study.total_bytes)
    result = StudyResult(study, repeat)
    scratch = args.work_dir / "scratch" / args.run_id / study.spec.key
    logs = args.work_dir / "logs" / args.run_id / study.spec.key
    scratch.mkdir(parents=True)
    logs.mkdir(parents=True)
    files, total = study.files, study.total_bytes
    studies.warm_cache(study)

    def settle(*paths: Path) -> None:
        disk.settle(*paths)

    def skipped(name: str, kind: str, why: str) -> None:
        result.rows.append(Measurement(name, kind, total, len(files), error=why))

    disk_modes = (
        ("disk fsync/file x1", "file", 1),
        (f"disk fsync/file x{PARALLEL}", "file", PARALLEL),
        ("disk fsync/8MiB x1", "block", 1),
    )
    if "disk" in parts:
        for name, mode, parallel in disk_modes:
            log(f"  {study.spec.key}: {name} ...")
            m = disk.measure(
                name, files, total, scratch, mode=mode, parallel=parallel, repeat=repeat
            )
            m.extra["before_s"] = list(m.seconds)
            result.rows.append(m)
    if "tus" in parts:
        for impl in args.tus_clients:
            name = f"tus peer ({impl})"
            if "tus" in unavailable:
                skipped(name, "tus", unavailable["tus"])
                continue
            log(f"  {study.spec.key}: {name} ...")
            result.rows.append(
                tus_peer.measure(
                    name,
                    files,
                    total,
                    scratch,
                    logs,
                    impl=impl,
                    parallel=PARALLEL,
                    chunk_size=CHUNK,
                    repeat=repeat,
                    settle=settle,
                )
            )
    if "gateway" in parts:
        name = "gateway (relaypacs upload)"
        if "gateway" in unavailable:
            skipped(name, "gateway", unavailable["gateway"])
        else:
            log(f"  {study.spec.key}: {name} ...")
            m = gateway.measure(
                name,
                study.directory,
                files,
                total,
                scratch,
                logs,
                parallel=PARALLEL,
                repeat=repeat,
                workers=args.dicom_workers,
                settle=settle,
                batch_size=args.batch_size,
            )
            result.rows.append(m)
    if "forward" in parts:
        if "forward" in unavailable:
            for name, kind in (
                (report.DIRECT, "direct"),
                (report.DIRECT_QIDO, "direct"),
                (report.GATEWAY_FORWARD, "forward"),
                (report.GATEWAY_SERVER, "forward"),
                (report.GATEWAY_E2E, "forward"),
                (report.GATEWAY_PIPELINED, "forward"),
            ):
                skipped(name, kind, unavailable["forward"])
        else:
            log(f"  {study.spec.key}: forwarding to Orthanc (direct STOW-RS vs gateway) ...")
            result.rows.extend(
                forward.measure(
                    files,
                    study.directory,
                    total,
                    scratch,
                    logs,
                    repeat=repeat,
                    workers=args.dicom_workers,
                    parallel=PARALLEL,
                    settle=settle,
                    log=log,
                    poll_seconds=args.forward_poll_ms / 1000,
                    pacs_verify=args.pacs_verify,
                )
            )
    if "disk" in parts and len(parts) > 1:
        # The virtual disk is much faster on blocks it has seen before than on new ones, and
        # which blocks a contender gets is up to the filesystem: measure the disk again after
        # the others, so the disk rows bracket them (median over before + after runs).
        for (name, mode, parallel), m in zip(
            disk_modes, [r for r in result.rows if r.kind == "disk"], strict=True
        ):
            log(f"  {study.spec.key}: {name} (again, after the others) ...")
            again = disk.measure(
                name, files, total, scratch, mode=mode, parallel=parallel, repeat=repeat
            )
            if again.ok and m.ok:
                m.seconds.extend(again.seconds)
                m.extra["after_s"] = list(again.seconds)
    disk.settle(scratch.parent)
    return result


def _prune(directory: Path, keep: int) -> None:
    """Keep the logs of the last `keep` runs."""
    if not directory.is_dir():
        return
    runs = sorted(p for p in directory.iterdir() if p.is_dir() and p.name[:1].isdigit())
    for old in runs[: max(0, len(runs) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _other_benchmarks() -> list[tuple[int, str]]:
    """Other `python -m bench` processes on this machine."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["pid"] not in mine and "-m" in cmd and "bench" in cmd:
            found.append((int(proc.info["pid"]), " ".join(cmd)))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--net" or a.startswith("--net=") for a in arguments):
        from bench import netforward

        if netforward.is_forward_net(arguments):  # the relay on shaped links (bench/netforward.py)
            return netforward.main(arguments)
        from bench import net  # shaped links: a benchmark of its own (bench/net.py)

        return net.main(arguments)
    args = parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    parts = [p for p in PARTS if p in args.only]
    # Scratch and logs of this run only: a second benchmark started meanwhile (which would
    # skew every figure anyway) must not delete this one's files.
    args.run_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{os.getpid()}"
    _prune(args.work_dir / "logs", keep=5)
    started = time.perf_counter()
    host = machine.describe(args.work_dir)
    log(
        f"RelayPACS benchmark{' (--quick)' if args.quick else ''} -- "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    )
    for line in host.lines():
        log(f"  {line}")
    log(f"  work dir: {args.work_dir} (studies, scratch; all writes on this filesystem)")
    log(f"  logs: {args.work_dir / 'logs' / args.run_id}")
    for pid, cmd in _other_benchmarks():
        log(f"  WARNING: another benchmark is running (pid {pid}: {cmd[:80]}): figures are skewed")
    log("  MB = 10^6 bytes, MiB = 2^20 bytes; rates are payload bytes over wall time")

    unavailable: dict[str, str] = {}
    versions: dict[str, str] = {}
    if "tus" in parts:
        try:
            versions["tus"] = tus_peer.ensure_installed(log)
            log(f"  tus peer: {versions['tus']}")
        except tus_peer.TusUnavailable as exc:
            unavailable["tus"] = str(exc)
            log(f"  tus peer unavailable: {exc}")
    if "gateway" in parts or "forward" in parts:
        try:
            gateway.check_ready()
        except gateway.GatewayUnavailable as exc:
            unavailable["gateway"] = unavailable["forward"] = str(exc)
            log(f"  GATEWAY UNAVAILABLE: {exc}")
    if "forward" in parts and "forward" not in unavailable:
        try:
            versions["orthanc"] = forward.check_ready()
            log(f"  PACS for forwarding: {versions['orthanc']} (DICOMweb plugin), local")
        except forward.ForwardUnavailable as exc:
            unavailable["forward"] = str(exc)
            log(f"  forwarding part unavailable: {exc}")

    specs = studies.QUICK if args.quick else studies.FULL
    log("")
    results: list[StudyResult] = []
    keys: list[str | Path] = list(args.study_dir) or list(args.studies)
    for key in keys:
        if isinstance(key, Path):
            study = _custom_study(key)
        else:
            try:
                study = studies.prepare(specs[key], args.work_dir / "studies", log=log)
            except studies.SynthUnavailable as exc:
                log(f"cannot generate the {key!r} study: {exc}")
                return 2
        log(
            f"{study.spec.key}: {study.instances} files, {study.total_bytes / 1e6:.1f} MB "
            f"({study.directory})"
        )
        result = measure_study(study, args, parts, unavailable)
        results.append(result)
        for lines in (table(result), forward_table(result)):
            if lines:
                log("")
                for line in lines:
                    log(line)
        log("")

    found = checks(results)
    log("Goals (gateway: verified + durable ingest, verified forwarding; not an exit status):")
    for line in check_lines(found):
        log(f"  {line}")
    elapsed = time.perf_counter() - started
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"\nbenchmark wall time {elapsed:.0f} s; load average at the end: {load}")

    if args.json:
        doc = {
            "when": datetime.now(UTC).isoformat(),
            "quick": args.quick,
            "machine": host.to_dict(),
            "versions": versions,
            "argv": list(sys.argv if argv is None else argv),
            "unavailable": unavailable,
            "studies": [r.to_dict() for r in results],
            "checks": [c.to_dict() for c in found],
            "wall_seconds": elapsed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    os.sync()
    return 0
