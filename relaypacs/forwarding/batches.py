"""How a pass's instances are cut into STOW-RS requests."""

from __future__ import annotations

from collections.abc import Sequence

from relaypacs.pacs.dicomweb import InstancePart


def make_batches(
    parts: Sequence[InstancePart], max_instances: int, max_bytes: int
) -> list[list[InstancePart]]:
    """Consecutive batches of at most `max_instances` instances and `max_bytes` bytes (an
    instance larger than max_bytes goes alone)."""
    batches: list[list[InstancePart]] = []
    current: list[InstancePart] = []
    size = 0
    for part in parts:
        if current and (len(current) >= max_instances or size + part.size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(part)
        size += part.size
    if current:
        batches.append(current)
    return batches


def full_batches(
    batches: list[list[InstancePart]], max_instances: int, max_bytes: int
) -> list[list[InstancePart]]:
    """While a study is still uploading, its last batch waits for more instances unless it is
    full (by count, or by half its bytes): no request of two instances where ten would go."""
    if batches:
        last = batches[-1]
        if len(last) < max_instances and sum(p.size for p in last) < max_bytes // 2:
            return batches[:-1]
    return batches
