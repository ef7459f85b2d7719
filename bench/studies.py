"""The studies the benchmark uploads, generated once into bench/.work/ and reused."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SYNTH_MODULE = "relaypacs.devtools.synth"


@dataclass(frozen=True)
class StudySpec:
    """Parameters of one synthetic study (passed to `relaypacs.devtools.synth.write_study`)."""

    key: str
    title: str
    instances: int
    rows: int = 512
    columns: int = 512
    frames: int = 1
    series: int = 1
    why: str = ""

    @property
    def pixel_bytes(self) -> int:
        return self.instances * self.frames * self.rows * self.columns * 2

    @property
    def dirname(self) -> str:
        return (
            f"{self.key}-{self.instances}i-{self.series}s-{self.frames}f-{self.rows}x{self.columns}"
        )

    def params(self) -> dict[str, int]:
        return {
            "instances": self.instances,
            "rows": self.rows,
            "columns": self.columns,
            "frames": self.frames,
            "series": self.series,
        }


# Full sizes. The large study is what a big study really is on the wire: a thin-slice
# multi-phase CT (e.g. a CT angiography or a whole-body trauma scan, 0.6 mm slices in several
# series) of ~4000 single-frame 512x512 instances. CT modalities and PACS still exchange CT as
# single-frame instances, so that is what a clinician uploads; it also exercises the
# per-instance costs (manifest, database rows, one validation per file) that a few big files
# would hide. `large-mf` (opt-in) is the other shape: a few enhanced multi-frame objects of
# ~260 MB each (tomosynthesis / enhanced CT), which stresses streaming of big files.
FULL: dict[str, StudySpec] = {
    "small": StudySpec(
        "small",
        "CT 300 x 512x512 (~150 MiB)",
        instances=300,
        why="a routine CT series",
    ),
    "large": StudySpec(
        "large",
        "CT 4 x 1000 x 512x512 (~2 GiB)",
        instances=4000,
        series=4,
        why="thin-slice multi-phase CT: 4 series of 1000 single-frame instances",
    ),
    "large-mf": StudySpec(
        "large-mf",
        "8 x 500-frame 512x512 (~2 GiB)",
        instances=8,
        frames=500,
        why="enhanced multi-frame objects of ~260 MB each",
    ),
}

# --quick: the same shapes, small enough for a smoke run of about a minute.
QUICK: dict[str, StudySpec] = {
    "small": StudySpec("small", "CT 40 x 512x512 (~20 MiB)", instances=40, why="smoke"),
    "large": StudySpec(
        "large", "CT 4 x 60 x 512x512 (~120 MiB)", instances=240, series=4, why="smoke"
    ),
    "large-mf": StudySpec(
        "large-mf", "2 x 60-frame 512x512 (~60 MiB)", instances=2, frames=60, why="smoke"
    ),
}

DEFAULT_KEYS = ("small", "large")


class SynthUnavailable(RuntimeError):
    """relaypacs.devtools.synth.write_study is not there (yet)."""


@dataclass
class Study:
    spec: StudySpec
    directory: Path
    files: list[Path]
    total_bytes: int
    generated: bool
    generate_seconds: float | None

    @property
    def instances(self) -> int:
        return len(self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.spec),
            "directory": str(self.directory),
            "files": len(self.files),
            "total_bytes": self.total_bytes,
            "generated_now": self.generated,
            "generate_seconds": self.generate_seconds,
        }


def _synth() -> Any:
    try:
        module = importlib.import_module(SYNTH_MODULE)
    except ImportError as exc:
        raise SynthUnavailable(
            f"cannot import {SYNTH_MODULE} ({exc}); the study generator is not in this tree yet"
        ) from exc
    if not hasattr(module, "write_study"):
        raise SynthUnavailable(f"{SYNTH_MODULE} has no write_study()")
    return module


def _generator_fingerprint(module: Any) -> str:
    """Hash of the generator's source: a changed generator means regenerated studies."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return "unknown"
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def list_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def prepare(spec: StudySpec, root: Path, *, log: Any = print) -> Study:
    """Return the study `spec` under `root`, generating it unless an identical one is there."""
    module = _synth()
    fingerprint = _generator_fingerprint(module)
    root.mkdir(parents=True, exist_ok=True)
    directory = root / spec.dirname
    stamp_path = root / f"{spec.dirname}.json"
    wanted = {"params": spec.params(), "generator": fingerprint}
    if directory.is_dir() and stamp_path.is_file():
        try:
            stamp = json.loads(stamp_path.read_text())
        except (OSError, ValueError):
            stamp = {}
        if {k: stamp.get(k) for k in wanted} == wanted:
            files = list_files(directory)
            total = sum(p.stat().st_size for p in files)
            if len(files) == stamp.get("files") and total == stamp.get("total_bytes"):
                return Study(spec, directory, files, total, False, None)
        log(f"  {spec.key}: cached study is stale (parameters or generator changed), regenerating")
    shutil.rmtree(directory, ignore_errors=True)
    stamp_path.unlink(missing_ok=True)
    partial = root / f"{spec.dirname}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log(f"  {spec.key}: generating {spec.title} into {directory} ...")
    started = time.perf_counter()
    module.write_study(partial, **spec.params())
    seconds = time.perf_counter() - started
    shutil.rmtree(directory, ignore_errors=True)  # generated meanwhile by another run
    partial.replace(directory)
    files = list_files(directory)
    total = sum(p.stat().st_size for p in files)
    stamp_path.write_text(
        json.dumps({**wanted, "files": len(files), "total_bytes": total, "seconds": seconds})
    )
    log(f"  {spec.key}: {len(files)} files, {total / 1e6:.1f} MB in {seconds:.1f} s")
    return Study(spec, directory, files, total, True, seconds)


def warm_cache(study: Study) -> None:
    """Read every file once so that every contender reads the source from the page cache."""
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    for path in study.files:
        with path.open("rb", buffering=0) as handle:
            while handle.readinto(view):
                pass
