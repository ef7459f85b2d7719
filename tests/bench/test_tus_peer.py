"""The tus peer's server is the node process itself: stopping it leaves nothing running (the
pinned Node's `node` on PATH is a Python launcher whose child outlived a SIGTERM)."""

from __future__ import annotations

from pathlib import Path

import psutil

from bench.tus_peer import TusServer, ensure_installed


def test_the_tus_server_stopped_leaves_no_process_behind(tmp_path: Path) -> None:
    ensure_installed(log=lambda _line: None)
    with TusServer(tmp_path / "store", tmp_path / "logs") as server:
        assert server.proc is not None
        started = psutil.Process(server.proc.pid)
        tree = [started, *started.children(recursive=True)]
        assert Path(started.exe()).name == "node"  # not python running a launcher
    for proc in tree:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
