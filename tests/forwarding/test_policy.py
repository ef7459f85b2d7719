"""The retry schedule, the circuit breaker, batching and the reading of STOW-RS answers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from relaypacs.config import Settings
from relaypacs.forwarding.breaker import CircuitBreaker, retry_delay
from relaypacs.forwarding.repository import Claim
from relaypacs.forwarding.worker import Forwarder, make_batches
from relaypacs.pacs.dicomweb import Disposition, InstancePart, _failures, classify_reason


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestRetryDelay:
    @pytest.mark.parametrize(
        ("attempt", "base"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 300.0), (9, 300.0)]
    )
    def test_schedule_is_1_2_4_then_every_5_minutes(self, attempt: int, base: float) -> None:
        delays = [1.0, 2.0, 4.0]
        assert retry_delay(attempt, delays, 300.0, rng=lambda: 0.5) == pytest.approx(base)
        assert retry_delay(attempt, delays, 300.0, rng=lambda: 0.0) == pytest.approx(base * 0.8)
        assert retry_delay(attempt, delays, 300.0, rng=lambda: 1.0) == pytest.approx(base * 1.2)


class TestCircuitBreaker:
    def test_opens_after_five_consecutive_failures_and_half_opens_after_60_s(self) -> None:
        clock = FakeClock()
        breaker = CircuitBreaker(failures=5, reset_seconds=60, clock=clock)
        for _ in range(4):
            breaker.record_failure()
            assert breaker.allow()
        breaker.record_failure()
        assert breaker.state == "open"
        assert not breaker.allow()
        clock.now += 59.9
        assert not breaker.allow()
        clock.now += 0.2
        assert breaker.state == "half_open"
        assert breaker.allow()  # one probe
        assert not breaker.allow()  # and only one
        breaker.record_failure()  # the probe failed: open again for 60 s
        assert breaker.state == "open"
        clock.now += 60
        assert breaker.allow()
        breaker.record_success()
        assert breaker.state == "closed"
        assert breaker.allow()

    def test_a_success_resets_the_count(self) -> None:
        breaker = CircuitBreaker(failures=5, reset_seconds=60, clock=FakeClock())
        for _ in range(4):
            breaker.record_failure()
        breaker.record_success()
        for _ in range(4):
            breaker.record_failure()
        assert breaker.state == "closed"


class TestBatches:
    def part(self, index: int, size: int) -> InstancePart:
        return InstancePart(index, f"1.2.{index}", size, (f"k{index}",))

    def test_bounded_by_count_and_bytes(self) -> None:
        parts = [self.part(i, 100) for i in range(25)]
        assert [len(b) for b in make_batches(parts, 10, 10_000)] == [10, 10, 5]
        assert [len(b) for b in make_batches(parts, 10, 350)] == [3] * 8 + [1]
        big = [self.part(0, 5000), self.part(1, 10)]
        assert [len(b) for b in make_batches(big, 10, 1000)] == [1, 1]


class TestStowAnswers:
    @pytest.mark.parametrize(
        ("code", "disposition"),
        [
            (0xA700, Disposition.RETRY),
            (0xA7FF, Disposition.RETRY),
            (0x0110, Disposition.RETRY),
            (0xA900, Disposition.FAILED),
            (0xC000, Disposition.FAILED),
            (0xC122, Disposition.FAILED),
            (0x0122, Disposition.FAILED),
        ],
    )
    def test_failure_reasons(self, code: int, disposition: Disposition) -> None:
        assert classify_reason(code) == disposition

    def test_failed_sop_sequence_is_read(self) -> None:
        body = {
            "00081198": {
                "vr": "SQ",
                "Value": [
                    {
                        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                        "00081155": {"vr": "UI", "Value": ["1.2.3"]},
                        "00081197": {"vr": "US", "Value": [0xA900]},
                    },
                    {"00081155": {"vr": "UI", "Value": ["1.2.4"]}},
                ],
            }
        }
        assert _failures(body) == {"1.2.3": 0xA900, "1.2.4": 0x0110}
        assert _failures({}) == {}
        assert _failures([body]) == {"1.2.3": 0xA900, "1.2.4": 0x0110}


class TestWakeUp:
    async def test_a_wake_up_during_a_claim_is_not_lost(self, tmp_path: Path) -> None:
        # A study committed while the worker's claim was looking (and found nothing) must be
        # claimed at once, not at the next poll (here 60 s away).
        settings = Settings(data_dir=tmp_path, forward_poll_seconds=60)
        forwarder = Forwarder(
            sessionmaker=None,  # type: ignore[arg-type]
            storage=None,  # type: ignore[arg-type]
            settings=settings,
        )
        claims: list[float] = []
        claimed_twice = asyncio.Event()

        async def claim() -> Claim | None:
            claims.append(time.monotonic())
            if len(claims) == 1:
                forwarder.wake()  # complete() committed and woke the worker meanwhile
            else:
                claimed_twice.set()
            return None

        forwarder.claim = claim  # type: ignore[method-assign]
        loop = asyncio.create_task(forwarder._loop())
        try:
            async with asyncio.timeout(5):
                await claimed_twice.wait()
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        assert claims[1] - claims[0] < 1
