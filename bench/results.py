"""Result records shared by the benchmark parts."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

MB = 1_000_000
MiB = 1 << 20


@dataclass
class Measurement:
    """One contender on one study: the median of its repetitions."""

    name: str
    kind: str  # "disk", "tus" or "gateway"
    bytes: int
    files: int
    seconds: list[float] = field(default_factory=list)
    peak_rss: int | None = None  # the serving process itself (bytes)
    peak_rss_tree: int | None = None  # the process and all its descendants (bytes)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """At least one run completed (a later run may still have failed: see `error`)."""
        return bool(self.seconds)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.median_seconds / MB

    @property
    def files_per_s(self) -> float:
        return self.files / self.median_seconds

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.ok:
            out["median_seconds"] = self.median_seconds
            out["mb_per_s"] = self.mb_per_s
            out["instances_per_s"] = self.files_per_s
        return out
