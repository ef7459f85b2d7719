"""What machine the figures were measured on."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

GiB = 1 << 30


@dataclass
class Machine:
    cpus_logical: int
    cpus_physical: int | None
    memory_gib: float
    disk_free_gib: float
    disk_total_gib: float
    filesystem: str
    device: str
    python: str
    node: str | None
    kernel: str
    load_average: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        return [
            f"cores: {self.cpus_logical} logical ({self.cpus_physical or '?'} physical), "
            f"memory {self.memory_gib:.1f} GiB",
            f"disk: {self.disk_free_gib:.1f} GiB free of {self.disk_total_gib:.1f} GiB "
            f"({self.filesystem} on {self.device})",
            f"python {self.python}, node {self.node or 'missing'}, kernel {self.kernel}",
            "load average at start: "
            + " ".join(f"{x:.2f}" for x in self.load_average)
            + " (other work on this machine skews every figure)",
        ]


def _mount_of(path: Path) -> tuple[str, str]:
    """(filesystem type, device) of the mount that holds `path`."""
    best: tuple[int, str, str] = (-1, "?", "?")
    resolved = str(path.resolve())
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") or "/"
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best[0]:
            best = (len(mount), part.fstype, part.device)
    return best[1], best[2]


def node_version() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def describe(work_dir: Path) -> Machine:
    usage = shutil.disk_usage(work_dir)
    fstype, device = _mount_of(work_dir)
    return Machine(
        cpus_logical=os.cpu_count() or 0,
        cpus_physical=psutil.cpu_count(logical=False),
        memory_gib=psutil.virtual_memory().total / GiB,
        disk_free_gib=usage.free / GiB,
        disk_total_gib=usage.total / GiB,
        filesystem=fstype,
        device=device,
        python=f"{platform.python_implementation()} {sys.version.split()[0]}",
        node=node_version(),
        kernel=platform.release(),
        load_average=os.getloadavg(),
    )
