"""Process metrics (CPU time, memory, open files) of a gateway that runs as several processes.

In one process, prometheus_client's default registry reports that process itself. With
`relaypacs serve --workers N` the exposition comes from the workers' metric files, which hold
no process metrics, and whichever worker answers a scrape could only report itself. So each
process of the gateway (the supervisor `serve` started and every worker) registers its pid in
the metrics directory while it runs, and the scraped worker reads every registered process's
/proc entries and reports the gateway as a whole: CPU seconds, resident and virtual memory and
open descriptors summed, the earliest start time, the lowest descriptor limit, and
`relaypacs_processes`, how many processes were counted. A process that died without
unregistering (killed) is recognised by its start time no longer matching and left out."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PROCESSES_SUBDIR = "processes"
PROC = Path("/proc")

# How each family of prometheus_client's process collector adds up over the processes.
_SUMMED = {
    "process_cpu_seconds": "Total user and system CPU time of the gateway's processes, in seconds.",
    "process_resident_memory_bytes": "Resident memory of the gateway's processes, in bytes.",
    "process_virtual_memory_bytes": "Virtual memory of the gateway's processes, in bytes.",
    "process_open_fds": "Open file descriptors of the gateway's processes.",
}
_LOWEST = {
    "process_start_time_seconds": "Start time of the gateway's oldest process since the Unix "
    "epoch, in seconds.",
    "process_max_fds": "The lowest limit of open file descriptors among the gateway's processes.",
}


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (with the pid, what identifies a
    process: pids are reused), or None when there is no such process."""
    try:
        stat = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[-1].split()
    return fields[19].decode() if len(fields) > 19 else None


def register_process(metrics_dir: Path, pid: int | None = None) -> None:
    """This process (or `pid`) counts in the process metrics until unregister_process."""
    pid = pid or os.getpid()
    ticks = _start_ticks(pid)
    if ticks is None:  # no /proc (not Linux): nothing to report
        return
    directory = metrics_dir / PROCESSES_SUBDIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / str(pid)).write_text(ticks)


def unregister_process(metrics_dir: Path, pid: int | None = None) -> None:
    with contextlib.suppress(OSError):
        (metrics_dir / PROCESSES_SUBDIR / str(pid or os.getpid())).unlink()


def live_processes(metrics_dir: Path) -> list[int]:
    """The registered processes still running (the files of dead ones are removed)."""
    directory = metrics_dir / PROCESSES_SUBDIR
    pids = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                registered = entry.read_text().strip()
            except OSError:
                continue
            if _start_ticks(pid) == registered:
                pids.append(pid)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
    return sorted(pids)


def _families_of(pid: int) -> Iterator[Metric]:
    collector = ProcessCollector(pid=lambda: pid, proc=str(PROC), registry=None)
    yield from collector.collect()


class GatewayProcessesCollector(Collector):
    """The process metrics of every registered process of the gateway, added up."""

    def __init__(self, metrics_dir: Path) -> None:
        self._metrics_dir = metrics_dir

    def collect(self) -> Iterable[Metric]:
        pids = live_processes(self._metrics_dir)
        summed: dict[str, float] = {}
        lowest: dict[str, float] = {}
        for pid in pids:
            for family in _families_of(pid):
                value = family.samples[0].value if family.samples else None
                if value is None:
                    continue
                if family.name in _SUMMED:
                    summed[family.name] = summed.get(family.name, 0.0) + value
                elif family.name in _LOWEST:
                    lowest[family.name] = min(lowest.get(family.name, value), value)
        result: list[Metric] = []
        for name, value in summed.items():
            if name == "process_cpu_seconds":
                result.append(CounterMetricFamily(name, _SUMMED[name], value=value))
            else:
                result.append(GaugeMetricFamily(name, _SUMMED[name], value=value))
        for name, value in lowest.items():
            result.append(GaugeMetricFamily(name, _LOWEST[name], value=value))
        result.append(
            GaugeMetricFamily(
                "relaypacs_processes",
                "Processes of the gateway counted in its process_* metrics (with "
                "`serve --workers N`: the supervisor and the workers).",
                value=len(pids),
            )
        )
        return result
