"""DicomValidator: the worker processes, their memory cap and time limit, batches, warm-up and
idle workers."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pydicom
import pytest

from relaypacs.devtools import synth, unusual
from relaypacs.dicom import DicomLimits, DicomRejected, DicomSummary, DicomValidator, inspect_file
from tests.dicom.samples import small


@pytest.fixture
async def validator() -> AsyncIterator[DicomValidator]:
    v = DicomValidator(workers=2)
    yield v
    await v.close()


@pytest.fixture(scope="module")
def slow_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Valid, small (32 MB), but takes over a second to walk: 4 million fragments."""
    path = tmp_path_factory.mktemp("slow") / "fragments.dcm"
    path.write_bytes(unusual.make_many_fragments(4_000_000))
    return path


def with_large_private_value(instance: bytes, size: int) -> bytes:
    """The instance with a private OB element of `size` bytes before its pixel data: pydicom
    reads every value but pixel data, so this one has to fit in the worker's memory."""
    dataset = pydicom.dcmread(io.BytesIO(instance))
    dataset.add_new((0x0009, 0x0010), "LO", "RELAYPACS TEST")
    dataset.add_new((0x0009, 0x1000), "OB", bytes(size))
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def worker_pids(v: DicomValidator) -> set[int]:
    return {w.pid for w in v._all}


class TestDicomValidator:
    async def test_same_summary_as_inspect_file(
        self, validator: DicomValidator, write: Callable[[bytes], Path]
    ) -> None:
        paths = [
            write(synth.make_instance(**unusual.new_uids(), rows=64, columns=64)) for _ in range(6)
        ]
        results = await asyncio.gather(*(validator.inspect(p) for p in paths))
        assert results == [inspect_file(p) for p in paths]

    async def test_rejections_carry_their_code(
        self, validator: DicomValidator, write: Callable[[bytes], Path]
    ) -> None:
        for data, code in [
            (b"not dicom at all" * 20, "not_dicom"),
            (unusual.make_preamble_executable(), "dicom_preamble_executable"),
            (unusual.make_missing_uid(), "dicom_missing_uid"),
        ]:
            with pytest.raises(DicomRejected) as info:
                await validator.inspect(write(data))
            assert info.value.code == code

    async def test_survives_bomb_and_deep_nesting_with_bounded_memory(
        self, validator: DicomValidator, write: Callable[[bytes], Path]
    ) -> None:
        good = write(small())
        await validator.inspect(good)  # workers started
        me = psutil.Process()
        before = me.memory_info().rss
        for data, code in [
            (unusual.make_deflate_bomb(), "dicom_inflate_too_large"),
            (unusual.make_deep_nesting(depth=5000), "dicom_too_deep"),
        ]:
            path = write(data)
            with pytest.raises(DicomRejected) as info:
                await validator.inspect(path)
            assert info.value.code == code
            assert (await validator.inspect(good)).kind == "instance"
        assert me.memory_info().rss - before < 50 << 20

    async def test_memory_is_capped_in_workers(self) -> None:
        limits = DicomLimits(memory_bytes=768 << 20)
        v = DicomValidator(limits, workers=2)
        try:
            await v.start()
            pids = worker_pids(v)
            assert len(pids) == 2
            for pid in pids:
                assert psutil.Process(pid).rlimit(psutil.RLIMIT_AS) == (768 << 20, 768 << 20)
            assert psutil.Process().rlimit(psutil.RLIMIT_AS)[0] != 768 << 20
        finally:
            await v.close()

    async def test_timeout_kills_the_worker_and_next_file_works(
        self, slow_file: Path, write: Callable[[bytes], Path]
    ) -> None:
        v = DicomValidator(DicomLimits(timeout_seconds=0.3), workers=1)
        try:
            good = write(small())
            await v.inspect(good)
            (first,) = worker_pids(v)
            started = time.perf_counter()
            with pytest.raises(DicomRejected) as info:
                await v.inspect(slow_file)
            assert info.value.code == "dicom_resource_limit"
            assert time.perf_counter() - started < 1.0  # killed, not waited for
            assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"
            assert (await v.inspect(good)).kind == "instance"
            assert worker_pids(v) != {first}
        finally:
            await v.close()

    async def test_worker_killed_mid_inspection(
        self, validator: DicomValidator, slow_file: Path, write: Callable[[bytes], Path]
    ) -> None:
        await validator.start()
        pids = worker_pids(validator)
        task = asyncio.create_task(validator.inspect(slow_file))
        await asyncio.sleep(0.3)
        assert not task.done()
        busy = [w.pid for w in validator._all if w not in validator._idle]
        assert len(busy) == 1
        os.kill(busy[0], signal.SIGKILL)
        with pytest.raises(DicomRejected) as info:
            await task
        assert info.value.code == "dicom_resource_limit"
        assert (await validator.inspect(write(small()))).kind == "instance"
        assert busy[0] not in worker_pids(validator)
        assert pids - {busy[0]} <= worker_pids(validator)  # the other worker was kept

    async def test_one_hostile_file_does_not_affect_the_others(
        self, slow_file: Path, write: Callable[[bytes], Path]
    ) -> None:
        v = DicomValidator(DicomLimits(timeout_seconds=0.5), workers=2)
        try:
            await v.start()
            goods = [write(small()) for _ in range(20)]
            results = await asyncio.gather(
                v.inspect(slow_file), *(v.inspect(p) for p in goods), return_exceptions=True
            )
            assert isinstance(results[0], DicomRejected)
            assert results[0].code == "dicom_resource_limit"
            assert all(isinstance(r, DicomSummary) for r in results[1:])
        finally:
            await v.close()

    async def test_hostile_files_fit_in_a_tight_memory_cap(
        self, tmp_path: Path, write: Callable[[bytes], Path]
    ) -> None:
        """Under a 256 MiB address-space cap (the interpreter alone maps ~20 MiB), a 2 GB
        file and a 2 GiB deflate bomb are inspected without hitting the cap (pydicom and numpy
        included)."""
        v = DicomValidator(DicomLimits(memory_bytes=256 << 20), workers=1)
        try:
            big = tmp_path / "big.dcm"
            synth.write_instance(big, **unusual.new_uids(), frames=4000, sparse=True)
            assert (await v.inspect(big)).kind == "instance"
            with pytest.raises(DicomRejected) as info:
                await v.inspect(write(unusual.make_deflate_bomb()))
            assert info.value.code == "dicom_inflate_too_large"
        finally:
            await v.close()

    async def test_missing_file_is_an_os_error(
        self, validator: DicomValidator, tmp_path: Path
    ) -> None:
        with pytest.raises(FileNotFoundError):
            await validator.inspect(tmp_path / "nope.dcm")
        good = tmp_path / "good.dcm"
        good.write_bytes(small())
        assert (await validator.inspect(good)).kind == "instance"

    async def test_a_batch_gives_each_file_the_verdict_inspect_gives_it(
        self, validator: DicomValidator, write: Callable[[bytes], Path], tmp_path: Path
    ) -> None:
        paths = [
            write(small()),
            write(b"not dicom at all" * 20),
            write(unusual.make_deflate_bomb()),
            write(unusual.make_deep_nesting(depth=5000)),
            tmp_path / "nope.dcm",
            write(unusual.make_preamble_executable()),
            write(small()),
        ]
        batch = await validator.inspect_batch(paths)
        assert len(batch) == len(paths)
        for path, verdict in zip(paths, batch, strict=True):
            try:
                alone: object = await validator.inspect(path)
            except (DicomRejected, OSError) as exc:
                alone = exc
            if isinstance(alone, DicomRejected):
                assert isinstance(verdict, DicomRejected)
                assert (verdict.code, verdict.message) == (alone.code, alone.message)
            elif isinstance(alone, OSError):
                assert type(verdict) is type(alone)
            else:
                assert verdict == alone
        assert [type(v).__name__ for v in batch] == [
            "DicomSummary",
            *["DicomRejected"] * 3,
            "FileNotFoundError",
            "DicomRejected",
            "DicomSummary",
        ]
        assert await validator.inspect_batch([]) == []

    async def test_a_batch_that_runs_out_of_time_has_no_verdicts_and_the_worker_is_replaced(
        self, slow_file: Path, write: Callable[[bytes], Path]
    ) -> None:
        v = DicomValidator(DicomLimits(timeout_seconds=0.3), workers=1)
        try:
            good = write(small())
            await v.inspect(good)
            (first,) = worker_pids(v)
            assert await v.inspect_batch([good, slow_file, good]) == [None, None, None]
            assert worker_pids(v) == set()  # killed, not kept
            assert await v.inspect_batch([good]) == [inspect_file(good)]
            assert first not in worker_pids(v)
        finally:
            await v.close()

    async def test_a_file_over_the_memory_limit_has_no_verdict_in_a_batch(
        self, write: Callable[[bytes], Path], tmp_path: Path
    ) -> None:
        """A file that runs the worker out of memory gets None (`inspect` on its own says
        what it is); the others keep theirs, and the worker is replaced."""
        v = DicomValidator(DicomLimits(memory_bytes=256 << 20), workers=1)
        try:
            big = tmp_path / "big.dcm"
            big.write_bytes(with_large_private_value(small(), 240_000_000))
            with pytest.raises(DicomRejected) as alone:
                await v.inspect(big)
            assert alone.value.code == "dicom_resource_limit"
            good = write(small())
            await v.inspect(good)
            (first,) = worker_pids(v)
            assert await v.inspect_batch([good, big, good]) == [
                inspect_file(good),
                None,
                inspect_file(good),
            ]
            assert first not in worker_pids(v)
        finally:
            await v.close()

    async def test_close_stops_the_workers(self, write: Callable[[bytes], Path]) -> None:
        v = DicomValidator(workers=2)
        await v.start()
        processes = [psutil.Process(pid) for pid in worker_pids(v)]
        await v.close()
        for process in processes:
            assert not process.is_running() or process.status() == "zombie"
        with pytest.raises(RuntimeError, match="closed"):
            await v.inspect(write(small()))


class TestWarm:
    async def test_warm_starts_one_worker_that_the_first_file_uses(
        self, write: Callable[[bytes], Path]
    ) -> None:
        v = DicomValidator(workers=2)
        try:
            v.warm()
            warming = v._warming
            v.warm()  # already warming: nothing more
            assert v._warming is warming is not None
            await asyncio.wait_for(warming, 30)
            assert len(v._idle) == 1
            (pid,) = worker_pids(v)
            assert (await v.inspect(write(small()))).kind == "instance"
            assert worker_pids(v) == {pid}
            v.warm()  # a worker runs: nothing to do
            await asyncio.sleep(0)
            assert worker_pids(v) == {pid}
        finally:
            await v.close()

    async def test_close_while_warming_leaves_no_process(self) -> None:
        v = DicomValidator(workers=1)
        v.warm()
        for _ in range(500):  # until its process exists (it is still importing)
            if worker_pids(v):
                break
            await asyncio.sleep(0.01)
        (pid,) = worker_pids(v)
        await v.close()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        v.warm()  # closed: nothing
        assert worker_pids(v) == set()


class TestIdleWorkers:
    async def test_idle_workers_stop_and_come_back_on_the_next_file(
        self, write: Callable[[bytes], Path]
    ) -> None:
        v = DicomValidator(workers=2, idle_seconds=0.5)
        try:
            await v.start()
            assert v.worker_count == 2
            pids = worker_pids(v)
            await asyncio.sleep(1.6)
            assert v.worker_count == 0
            for pid in pids:
                assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
            assert (await v.inspect(write(small()))).kind == "instance"
            assert v.worker_count == 1
        finally:
            await v.close()

    async def test_release_idle_stops_workers_only_when_none_is_busy(
        self, write: Callable[[bytes], Path]
    ) -> None:
        v = DicomValidator(workers=2)
        try:
            await v.start()
            # ~0.25 s to walk (200,000 fragments took 40-60 ms: as long as the sleep below, so
            # the worker was sometimes done before release_idle looked).
            slow = asyncio.create_task(v.inspect(write(unusual.make_many_fragments(1_000_000))))
            await asyncio.sleep(0.05)
            assert await v.release_idle() == 0  # one is busy: nothing is stopped
            await slow
            assert await v.release_idle() == 2
            assert v.worker_count == 0
            assert (await v.inspect(write(small()))).kind == "instance"
        finally:
            await v.close()
