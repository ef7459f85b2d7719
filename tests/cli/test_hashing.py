"""SHA-256 hashing, study_hash and the hash cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from relaypacs.client import HashCache, HashJob, hash_files, study_hash
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
