"""The printed tables and goal checks, and the --json document."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.results import MB, Measurement, MiB
from bench.studies import Study

RSS_LIMIT_MIB = 250.0
RSS_GROWTH_LIMIT = 1.20
DISK_RATIO_GOAL = 0.8
FORWARD_RATIO_GOAL = 0.9

INGEST_KINDS = ("disk", "tus", "gateway")
FORWARD_KINDS = ("direct", "forward")


@dataclass
class StudyResult:
    study: Study
    repeat: int
    rows: list[Measurement] = field(default_factory=list)

    def best(self, kind: str) -> Measurement | None:
        done = [m for m in self.rows if m.kind == kind and m.ok]
        return max(done, key=lambda m: m.mb_per_s, default=None)

    def rows_of(self, kinds: Sequence[str]) -> list[Measurement]:
        return [m for m in self.rows if m.kind in kinds]

    def row(self, name: str) -> Measurement | None:
        """The measured row called `name` (None if absent or it failed on its first run)."""
        return next((m for m in self.rows if m.name == name and m.ok), None)

    def to_dict(self) -> dict[str, Any]:
        disk, tus = self.best("disk"), self.best("tus")
        return {
            "study": self.study.to_dict(),
            "repeat": self.repeat,
            "disk_limit": disk.name if disk else None,
            "tus_best": tus.name if tus else None,
            "rows": [m.to_dict() for m in self.rows],
        }


@dataclass
class Check:
    goal: str
    passed: bool | None  # None: could not be evaluated
    detail: str

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "N/A "}[self.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "verdict": self.verdict.strip(), "detail": self.detail}


def _mib(value: int | None) -> str:
    return "-" if not value else f"{value / MiB:.0f} MiB"


def _ratio(value: float, base: Measurement | None) -> str:
    if base is None:
        return "-"
    return f"{value / base.mb_per_s:.2f}x"


def table(result: StudyResult) -> list[str]:
    """The ingest table (disk, tus, gateway rows); empty when none of them was run."""
    rows = result.rows_of(INGEST_KINDS)
    if not rows:
        return []
    study = result.study
    disk, tus = result.best("disk"), result.best("tus")
    head = (
        f"{study.spec.key}: {study.spec.title} -- {study.instances} files, "
        f"{study.total_bytes / MB:.1f} MB ({study.total_bytes / MiB:.1f} MiB), "
        f"median of {result.repeat} run{'s' if result.repeat > 1 else ''}"
    )
    cols = (
        f"{'':28}{'seconds':>8}{'MB/s':>8}{'inst/s':>8}{'vs disk':>9}{'vs tus':>8}"
        f"{'peak RSS':>10}{'+children':>11}"
    )
    lines = [head, "-" * len(cols), cols]
    for m in rows:
        if m.ok:
            lines.append(
                f"{m.name:28}{m.median_seconds:8.2f}{m.mb_per_s:8.1f}{m.files_per_s:8.1f}"
                f"{_ratio(m.mb_per_s, disk):>9}{_ratio(m.mb_per_s, tus):>8}"
                f"{_mib(m.peak_rss):>10}"
                f"{_mib(m.peak_rss_tree if m.kind == 'gateway' else None):>11}"
            )
        if m.error:
            lines.extend(_error_lines(m, 28))
    lines.append("-" * len(cols))
    if disk:
        lines.append(
            f"disk limit = {disk.name} ({disk.mb_per_s:.1f} MB/s); "
            f"tus peer = {tus.name + f' ({tus.mb_per_s:.1f} MB/s)' if tus else '-'}"
        )
    lines.extend(_notes(rows))
    return lines


def _error_lines(m: Measurement, width: int) -> list[str]:
    error = m.error.strip().splitlines() if m.error else []
    error = error or ["?"]
    if len(error) > 12:
        error = [*error[:2], "...", *error[-9:]]
    if m.ok:
        label = f"{'':{width}}  ^ run {len(m.seconds) + 1} FAILED (figures: the runs before): "
    else:
        label = f"{m.name:{width}}  FAILED: "
    return [label + error[0], *(f"{'':{width + 2}}{line}" for line in error[1:])]


def _notes(rows: Sequence[Measurement]) -> list[str]:
    lines = []
    for m in rows:
        notes = [m.note] if m.note else []
        if m.ok and len(m.seconds) > 1:
            notes.append("runs " + ", ".join(f"{s:.2f}" for s in m.seconds) + " s")
        for key, value in m.extra.items():
            notes.append(f"{key} {_fmt(key, value)}")
        if notes:
            lines.append(f"  {m.name}: " + "; ".join(notes))
    return lines


# The forwarding rows (bench/forward.py), by name.
DIRECT = "direct STOW (10/req, 4 in flight)"
DIRECT_QIDO = "direct STOW + QIDO"
GATEWAY_FORWARD = "gateway forward (complete->delivered)"
GATEWAY_SERVER = "gateway forward (server time stamps)"
# End to end, first byte (the upload's init) -> "PACS confirmed" (its delivered_at).
GATEWAY_E2E = "gateway e2e, upload then forward"
GATEWAY_PIPELINED = "gateway e2e, pipelined relay"
PIPELINE_FLOOR_GOAL = 1.15  # loopback: CLI start -> delivered within this of the CPU floor


def _times(value: float, base: Measurement | None) -> str:
    return "-" if base is None else f"{value / base.files_per_s:.2f}x"


def forward_table(result: StudyResult, pacs: str = "Orthanc") -> list[str]:
    """The forwarding table (direct STOW-RS client vs the gateway); empty when not run."""
    rows = result.rows_of(FORWARD_KINDS)
    if not rows:
        return []
    study = result.study
    direct, direct_qido = result.row(DIRECT), result.row(DIRECT_QIDO)
    head = (
        f"{study.spec.key}: forwarding to {pacs} -- {study.instances} instances, "
        f"{study.total_bytes / MB:.1f} MB, median of {result.repeat} "
        f"run{'s' if result.repeat > 1 else ''}"
    )
    width = 40
    cols = (
        f"{'':{width}}{'seconds':>8}{'inst/s':>8}{'MB/s':>8}{'vs STOW':>9}{'vs +QIDO':>9}"
        f"{'peak RSS':>10}{'+children':>11}"
    )
    lines = [head, "-" * len(cols), cols]
    for m in rows:
        if m.ok:
            lines.append(
                f"{m.name:{width}}{m.median_seconds:8.2f}{m.files_per_s:8.1f}{m.mb_per_s:8.1f}"
                f"{_times(m.files_per_s, direct):>9}{_times(m.files_per_s, direct_qido):>9}"
                f"{_mib(m.peak_rss):>10}{_mib(m.peak_rss_tree):>11}"
            )
        if m.error:
            lines.extend(_error_lines(m, width))
    lines.append("-" * len(cols))
    lines.extend(_notes(rows))
    return lines


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(key, v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.2f}" + (" s" if "seconds" in key else "")
    if isinstance(value, int) and ("rss" in key or "pss" in key):
        return _mib(value)
    return str(value)


def _gateway(result: StudyResult) -> Measurement | None:
    return next((m for m in result.rows if m.kind == "gateway" and m.ok), None)


def checks(results: Sequence[StudyResult]) -> list[Check]:
    ingest = [r for r in results if r.rows_of(INGEST_KINDS)]
    forward = [r for r in results if r.rows_of(FORWARD_KINDS)]
    return ingest_checks(ingest) + forward_checks(forward)


def forward_checks(results: Sequence[StudyResult]) -> list[Check]:
    """Forwarding goals: the gateway's complete->delivered at least 0.9x the direct client's
    STOW + QIDO (verification on both sides); its peak RSS while forwarding under the limit."""
    out: list[Check] = []
    for r in results:
        key = r.study.spec.key
        # Timed by the gateway's own time stamps (no poll granularity); RSS from the run rows.
        timed = r.row(GATEWAY_SERVER) or r.row(GATEWAY_FORWARD)
        gw, direct, direct_qido = r.row(GATEWAY_FORWARD), r.row(DIRECT), r.row(DIRECT_QIDO)
        goal = (
            f"[{key}] gateway forward >= {FORWARD_RATIO_GOAL}x direct STOW (verification included)"
        )
        if timed is None or direct_qido is None:
            missing = "gateway forwarding" if timed is None else "direct STOW + QIDO"
            out.append(Check(goal, None, f"{missing} not measured"))
        else:
            ratio = timed.files_per_s / direct_qido.files_per_s
            detail = (
                f"{timed.files_per_s:.1f} vs {direct_qido.files_per_s:.1f} inst/s "
                f"(gateway's time stamps vs direct STOW + QIDO) = {ratio:.2f}x"
            )
            if direct is not None:
                detail += f"; vs STOW alone {timed.files_per_s / direct.files_per_s:.2f}x"
            out.append(Check(goal, ratio >= FORWARD_RATIO_GOAL, detail))
        out.extend(_pipeline_checks(r))
        for label, value in (
            ("main", gw.peak_rss if gw else None),
            ("incl. workers", gw.peak_rss_tree if gw else None),
        ):
            goal = f"[{key}] gateway peak RSS while forwarding < {RSS_LIMIT_MIB:.0f} MiB ({label})"
            if not value:
                out.append(Check(goal, None, "gateway forwarding not measured"))
                continue
            detail = _mib(value)
            pss = gw.extra.get("peak_pss_incl_workers") if gw else None
            if label != "main" and isinstance(pss, int) and pss:
                detail += f" (PSS, shared pages counted once: {_mib(pss)})"
            out.append(Check(goal, value / MiB < RSS_LIMIT_MIB, detail))
    return out


def _pipeline_checks(r: StudyResult) -> list[Check]:
    """The pipelined relay (issue 16): first byte -> PACS confirmed against the direct STOW-RS
    client (informative on loopback: the goal of 1.1x is for shaped links), and the wall time
    from the CLI's start against the CPU floor (every process's CPU seconds / cores)."""
    key = r.study.spec.key
    pipe, plain, direct = r.row(GATEWAY_PIPELINED), r.row(GATEWAY_E2E), r.row(DIRECT_QIDO)
    out: list[Check] = []
    goal = f"[{key}] pipelined: CLI start -> delivered <= {PIPELINE_FLOOR_GOAL}x the CPU floor"
    ratios = pipe.extra.get("wall_over_cpu_floor") if pipe else None
    if not pipe or not pipe.ok or not ratios:
        out.append(Check(goal, None, "pipelined relay not measured"))
    else:
        ratio = statistics.median(ratios)
        floors = pipe.extra.get("cpu_floor_seconds") or [0.0]
        walls = pipe.extra.get("wall_cli_start_to_delivered_seconds") or [0.0]
        detail = (
            f"{statistics.median(walls):.1f} s against a floor of "
            f"{statistics.median(floors):.1f} s = {ratio:.2f}x"
        )
        if plain is not None and plain.extra.get("wall_over_cpu_floor"):
            before = statistics.median(plain.extra["wall_over_cpu_floor"])
            detail += f" (upload then forward: {before:.2f}x)"
        out.append(Check(goal, ratio <= PIPELINE_FLOOR_GOAL, detail))
    if pipe is not None and pipe.ok and direct is not None and direct.ok:
        detail = (
            f"pipelined {pipe.median_seconds:.1f} s vs direct STOW + QIDO "
            f"{direct.median_seconds:.1f} s = {pipe.median_seconds / direct.median_seconds:.2f}x"
        )
        if plain is not None and plain.ok:
            detail += (
                f"; upload then forward {plain.median_seconds:.1f} s = "
                f"{plain.median_seconds / direct.median_seconds:.2f}x"
            )
        out.append(
            Check(f"[{key}] first byte -> PACS confirmed vs direct STOW (loopback)", None, detail)
        )
    return out


def ingest_checks(results: Sequence[StudyResult]) -> list[Check]:
    out: list[Check] = []
    for r in results:
        key = r.study.spec.key
        gw, disk, tus = _gateway(r), r.best("disk"), r.best("tus")
        if gw is None:
            why = "gateway not measured"
            out.append(Check(f"[{key}] gateway >= tus peer (MB/s)", None, why))
            out.append(Check(f"[{key}] gateway >= {DISK_RATIO_GOAL}x disk limit", None, why))
            out.append(Check(f"[{key}] gateway main peak RSS < {RSS_LIMIT_MIB:.0f} MiB", None, why))
            continue
        if tus is None:
            out.append(Check(f"[{key}] gateway >= tus peer (MB/s)", None, "tus peer not measured"))
        else:
            ratio = gw.mb_per_s / tus.mb_per_s
            out.append(
                Check(
                    f"[{key}] gateway >= tus peer (MB/s)",
                    ratio >= 1.0,
                    f"{gw.mb_per_s:.1f} vs {tus.mb_per_s:.1f} MB/s ({tus.name}) = {ratio:.2f}x",
                )
            )
        if disk is None:
            out.append(
                Check(
                    f"[{key}] gateway >= {DISK_RATIO_GOAL}x disk limit", None, "disk not measured"
                )
            )
        else:
            ratio = gw.mb_per_s / disk.mb_per_s
            out.append(
                Check(
                    f"[{key}] gateway >= {DISK_RATIO_GOAL}x disk limit",
                    ratio >= DISK_RATIO_GOAL,
                    f"{gw.mb_per_s:.1f} vs {disk.mb_per_s:.1f} MB/s ({disk.name}) = {ratio:.2f}x",
                )
            )
        pss = gw.extra.get("peak_pss_incl_workers")
        for label, value in (("main", gw.peak_rss), ("incl. workers", gw.peak_rss_tree)):
            if value:
                detail = _mib(value)
                if label != "main" and isinstance(pss, int) and pss:
                    detail += f" (PSS, shared pages counted once: {_mib(pss)})"
                out.append(
                    Check(
                        f"[{key}] gateway {label} peak RSS < {RSS_LIMIT_MIB:.0f} MiB",
                        value / MiB < RSS_LIMIT_MIB,
                        detail,
                    )
                )
    measured = [(r, _gateway(r)) for r in results]
    done = [(r, g) for r, g in measured if g is not None]
    if len(done) >= 2:
        (small_r, small), (large_r, large) = (
            min(done, key=lambda x: x[0].study.total_bytes),
            max(done, key=lambda x: x[0].study.total_bytes),
        )
        for label, attr in (("main", "peak_rss"), ("incl. workers", "peak_rss_tree")):
            a, b = getattr(small, attr), getattr(large, attr)
            if a and b:
                growth = b / a
                out.append(
                    Check(
                        f"gateway {label} peak RSS {large_r.study.spec.key} <= "
                        f"{RSS_GROWTH_LIMIT:.2f}x {small_r.study.spec.key}",
                        growth <= RSS_GROWTH_LIMIT,
                        f"{_mib(b)} vs {_mib(a)} = {growth:.3f}x",
                    )
                )
    elif results:
        out.append(
            Check(
                "gateway peak RSS growth small -> large",
                None,
                "needs the gateway measured on two study sizes",
            )
        )
    return out


def check_lines(found: Sequence[Check]) -> list[str]:
    width = max((len(c.goal) for c in found), default=0)
    return [f"{c.verdict}  {c.goal:{width}}  {c.detail}" for c in found]
