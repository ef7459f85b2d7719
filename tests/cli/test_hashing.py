"""SHA-256 hashing, study_hash and the hash cache."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from relaypacs.client import HashCache, HashJob, InputError, hash_files, study_hash
from relaypacs.client.hashing import Hasher
from relaypacs.client.state import ensure_state_dir


def _job(path: Path) -> HashJob:
    st = path.stat()
    return HashJob(path=path, key=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns)


class TestStudyHash:
    def test_is_sha256_of_sorted_hashes_joined_by_newlines(self) -> None:
        a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
        expected = hashlib.sha256(f"{min(a, b)}\n{max(a, b)}".encode()).hexdigest()
        assert study_hash([a, b]) == expected
        assert study_hash([b, a]) == expected

    def test_single_file(self) -> None:
        a = hashlib.sha256(b"a").hexdigest()
        assert study_hash([a]) == hashlib.sha256(a.encode()).hexdigest()


class TestHashFiles:
    async def test_hashes_in_parallel_and_caches(self, tmp_path: Path) -> None:
        paths = []
        for i in range(6):
            path = tmp_path / f"f{i}"
            path.write_bytes(os.urandom(300_000 + i))
            paths.append(path)
        seen: list[int] = []
        with HashCache(tmp_path / "state" / "hashes.sqlite3") as cache:
            result = await hash_files(
                [_job(p) for p in paths], cache=cache, workers=3, on_bytes=seen.append
            )
            assert cache.misses == 6
        for path in paths:
            assert result[str(path)] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert sum(seen) == sum(p.stat().st_size for p in paths)

        # A second run (new process, same state file) hashes nothing.
        with HashCache(tmp_path / "state" / "hashes.sqlite3") as cache:
            again = await hash_files([_job(p) for p in paths], cache=cache)
            assert cache.hits == 6
            assert cache.misses == 0
        assert again == result

    async def test_modified_file_is_hashed_again(self, tmp_path: Path) -> None:
        path = tmp_path / "f"
        path.write_bytes(b"first")
        with HashCache(tmp_path / "hashes.sqlite3") as cache:
            first = await hash_files([_job(path)], cache=cache)
            path.write_bytes(b"second, longer")
            second = await hash_files([_job(path)], cache=cache)
            assert cache.misses == 2
        assert first[str(path)] != second[str(path)]
        assert second[str(path)] == hashlib.sha256(b"second, longer").hexdigest()

    def test_state_dir_is_private(self, tmp_path: Path) -> None:
        state = ensure_state_dir(tmp_path / "a" / "state")
        assert state.stat().st_mode & 0o777 == 0o700
        with HashCache(state / "hashes.sqlite3"):
            pass
        assert (state / "hashes.sqlite3").stat().st_mode & 0o077 == 0


class TestHasher:
    async def test_jobs_added_one_by_one_start_at_once_and_match_hash_files(
        self, tmp_path: Path
    ) -> None:
        paths = []
        for i in range(5):
            path = tmp_path / f"f{i}"
            path.write_bytes(os.urandom(200_000 + i))
            paths.append(path)
        seen: list[int] = []
        hasher = Hasher(workers=2, on_bytes=seen.append)
        hasher.add(_job(paths[0]))
        await asyncio.sleep(0.2)  # the rest is "still being discovered"
        assert sum(seen) == paths[0].stat().st_size  # the first one was hashed meanwhile
        for path in paths[1:]:
            hasher.add(_job(path))
        assert await hasher.results() == await hash_files([_job(p) for p in paths])
        assert sum(seen) == sum(p.stat().st_size for p in paths)

    async def test_an_unreadable_file_is_an_input_error_and_stops_the_rest(
        self, tmp_path: Path
    ) -> None:
        good = tmp_path / "good"
        good.write_bytes(b"x" * 1000)
        gone = tmp_path / "gone"
        gone.write_bytes(b"y")
        job = _job(gone)
        gone.unlink()
        hasher = Hasher(workers=1)
        hasher.add(job)
        hasher.add(_job(good))
        with pytest.raises(InputError, match="cannot read"):
            await hasher.results()

    async def test_a_run_stopped_half_way_keeps_what_it_hashed(self, tmp_path: Path) -> None:
        """Each hash goes to the cache as soon as it is known: a file hashed before another
        one failed is not hashed again by the next run."""
        first = tmp_path / "first"
        first.write_bytes(b"hashed before the failure")
        gone = tmp_path / "gone"
        gone.write_bytes(b"y")
        missing = _job(gone)
        gone.unlink()
        with HashCache(tmp_path / "hashes.sqlite3") as cache:
            hasher = Hasher(cache=cache, workers=1)
            hasher.add(_job(first))
            hasher.add(missing)
            with pytest.raises(InputError):
                await hasher.results()
            job = _job(first)
            assert (
                cache.get(job.key, job.size, job.mtime_ns)
                == hashlib.sha256(b"hashed before the failure").hexdigest()
            )

    async def test_cached_files_are_not_read(self, tmp_path: Path) -> None:
        path = tmp_path / "f"
        path.write_bytes(b"cached content")
        with HashCache(tmp_path / "hashes.sqlite3") as cache:
            await hash_files([_job(path)], cache=cache)
            job = _job(path)
            # Other bytes, same size and time: only the cache can still give the old hash.
            path.write_bytes(b"CACHED CONTENT")
            os.utime(path, ns=(job.mtime_ns, job.mtime_ns))
            hasher = Hasher(cache=cache)
            hasher.add(job)
            assert (await hasher.results())[str(path)] == hashlib.sha256(
                b"cached content"
            ).hexdigest()
            assert cache.hits == 1
