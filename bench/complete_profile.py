"""What `complete` costs the gateway for a study whose files were all verified, and queued for
the PACS, on arrival (the pipelined relay): `python -m bench.complete_profile [--instances
300,1000] [--repeat 3] [--py-spy DIR]`.

A fresh `relaypacs serve` (SQLite, filesystem store, RELAYPACS_PIPELINE=true) whose PACS target
does not answer (a closed loopback port: its breaker opens and the forwarder stays idle, so the
figures are `complete`'s own). Per study (synthetic instances of 64x64 pixels, one chunk each):
init, every chunk PUT, a wait until every file is judged and queued for the PACS, then `POST
complete`, timed: the gateway's CPU seconds (its process and its validation workers) and the
wall time of the request. With `--py-spy DIR`, py-spy samples the gateway during each
`complete` (raw collapsed stacks in DIR) and the functions of relaypacs that were on the stack
most are printed: where `complete` spends its time. Not a benchmark with a baseline (that is
`python -m bench`): a profile, for deciding what to work on; wall times on a shared machine are
provisional, the CPU seconds less so.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.gateway import PASSWORD, USERNAME, server_env, server_pid
from bench.procs import free_port, tree_cpu

API = "/api/v1"


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _study(instances: int) -> tuple[str, list[bytes]]:
    from relaypacs.devtools.synth import make_instance

    study, series = _uid(), _uid()
    files = [
        make_instance(
            study_uid=study,
            series_uid=series,
            sop_uid=_uid(),
            rows=64,
            columns=64,
            instance_number=i + 1,
            seed=i,
        )
        for i in range(instances)
    ]
    return study, files


def _digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def _upload(api: httpx.Client, study: str, files: list[bytes]) -> str:
    """Init and every chunk; returns the upload id once every file is queued for the PACS."""
    from relaypacs.devtools.synth import DEFAULT_PATIENT

    manifest = {
        "study_instance_uid": study,
        "metadata": {"patient_name": DEFAULT_PATIENT.name, "modality": "CT"},
        "files": [
            {"name": f"IM{i:05d}.dcm", "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for i, d in enumerate(files)
        ],
    }
    started = api.post(f"{API}/uploads", json=manifest)
    started.raise_for_status()
    upload_id: str = started.json()["id"]
    for index, data in enumerate(files):
        answer = api.put(
            f"{API}/uploads/{upload_id}/files/{index}/chunks/0",
            content=data,
            headers={"Content-Digest": _digest(data)},
        )
        answer.raise_for_status()
    deadline = time.monotonic() + 120 + len(files) / 10
    while True:
        view = api.get(f"{API}/uploads/{upload_id}?files=true").json()
        queued = sum(1 for f in view["files"] if f.get("forward_status") is not None)
        if queued == len(files):
            return upload_id
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {queued} of {len(files)} files were pipelined")
        time.sleep(0.3)


def _py_spy() -> list[str] | None:
    """py-spy on PATH, else through uv (`uv tool run py-spy`)."""
    found = shutil.which("py-spy")
    if found:
        return [found]
    uv = shutil.which("uv") or str(Path(__file__).resolve().parent.parent / ".tools/bin/uv")
    return [uv, "tool", "run", "py-spy"] if Path(uv).exists() else None


def _top(raw: Path, limit: int = 30) -> list[tuple[float, str]]:
    """Of py-spy's collapsed stacks: each relaypacs function's share of the samples (counted
    once per sample, wherever on the stack), largest first."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        frames = {f for f in stack.split(";") if "relaypacs/" in f}
        for frame in frames:
            counts[frame] += int(n)
    return [(100.0 * c / total, f) for f, c in counts.most_common(limit)] if total else []


def run(sizes: Sequence[int], repeat: int, spy_dir: Path | None) -> dict[int, dict[str, Any]]:
    from tests.gateway import create_user, run_gateway

    spy = _py_spy() if spy_dir is not None else None
    if spy_dir is not None and spy is None:
        print("py-spy is not on PATH: timing only (uv run --with py-spy ...)", flush=True)
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="relaypacs-complete-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        env = {
            **server_env(None),
            "RELAYPACS_PIPELINE": "true",
            "RELAYPACS_PACS_URL": f"http://127.0.0.1:{free_port()}/dicom-web",
            "RELAYPACS_RATE_LIMIT_UPLOAD_INIT": "100000/minute",
            "RELAYPACS_RATE_LIMIT_UPLOAD_CHUNK": "1000000/minute",
        }
        create_user(data_dir, USERNAME, PASSWORD, env=env)
        with (
            run_gateway(data_dir, env, log_path=Path(tmp) / "gateway.log") as base,
            httpx.Client(base_url=base, timeout=300) as api,
        ):
            pid = server_pid(base)
            login = api.post(f"{API}/auth/login", json={"username": USERNAME, "password": PASSWORD})
            login.raise_for_status()
            api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            for size in sizes:
                cpu: list[float] = []
                wall: list[float] = []
                for i in range(repeat):
                    study, files = _study(size)
                    upload_id = _upload(api, study, files)
                    time.sleep(1.0)  # the early checks' and the pipeline's last work done
                    recorder = None
                    if spy is not None and spy_dir is not None:
                        spy_dir.mkdir(parents=True, exist_ok=True)
                        raw = spy_dir / f"complete-{size}-{i}.txt"
                        recorder = subprocess.Popen(
                            [*spy, "record", "--pid", str(pid), "--rate", "200", "--format",
                             "raw", "--output", str(raw), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        )  # fmt: skip
                        time.sleep(1.0)  # attached
                    before, began = tree_cpu(pid), time.perf_counter()
                    done = api.post(f"{API}/uploads/{upload_id}/complete")
                    wall.append(time.perf_counter() - began)
                    cpu.append(tree_cpu(pid) - before)
                    if done.status_code != 202:
                        raise RuntimeError(f"complete answered {done.status_code}: {done.text}")
                    if recorder is not None:
                        recorder.send_signal(signal.SIGINT)
                        recorder.wait(timeout=30)
                    print(
                        f"{size} instances, run {i + 1}/{repeat}: complete "
                        f"{cpu[-1]:.3f} CPU s, {wall[-1]:.3f} s wall (provisional)",
                        flush=True,
                    )
                results[size] = {
                    "cpu_seconds": cpu,
                    "wall_seconds": wall,
                    "cpu_median": statistics.median(cpu),
                    "wall_median": statistics.median(wall),
                }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.complete_profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--instances", default="300,1000", help="comma list of study sizes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.instances.split(",") if s.strip()]
    results = run(sizes, args.repeat, args.py_spy)
    for size, figures in results.items():
        print(
            f"{size} instances: complete {figures['cpu_median']:.3f} CPU s (median of "
            f"{len(figures['cpu_seconds'])}), {figures['wall_median']:.3f} s wall (provisional)"
        )
    if args.py_spy is not None:
        for raw in sorted(args.py_spy.glob("complete-*.txt")):
            print(f"\n{raw.name}: relaypacs functions on the stack, % of samples")
            for share, frame in _top(raw):
                print(f"  {share:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
