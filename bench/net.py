"""Shaped links: the CLI and tuspy through the same slow, distant, cut link.

    python -m bench --net 20mbit,100ms,cut          # both studies, CLI (auto, 8 MiB), tuspy
    python -m bench --net 20mbit,100ms --net-runs cli:auto:4,cli:auto:1,tuspy
    python -m bench --net 50mbit,40ms,cut=5-10 --net-studies mf

The benchmark re-runs itself inside a network namespace of its own (`unshare -rn`: a user and
network namespace, as root or not), whose loopback only its processes use. There:
- `tc` shapes the uplink: an `htb` class at the given rate for every packet to the proxies'
  ports (client -> gateway, client -> tus server), another for their answers; everything else
  (proxy -> server) is unlimited. The loopback's MTU is 1500, as on a real link.
- latency and cuts come from a fault proxy (`relaypacs.devtools.faultproxy`: half the round
  trip each way; `cut`: every connection reset at random every 10-20 s, `cut=A-B` to choose),
  one in front of the gateway and one in front of the tus server. `netem` is not on this
  machine's kernel.

Contenders, each run on a fresh server (new data dir) with a fresh client state:
- `cli:CHUNK:PARALLEL`: `relaypacs upload --json --parallel P --chunk-size CHUNK` to
  `relaypacs serve` (SQLite, filesystem store; its default 8 MiB chunk size);
- `web`: the web app in headless Chromium (bench/net_web.py), its chunk size its own choice;
- `tuspy`: bench.tus_client (tuspy, 8 MiB PATCHes, 4 files in flight, 30 retries 1 s apart:
  it resumes from the server's offset after a cut) to @tus/server (bench/tus).

Figures: goodput (payload / wall time from the client's start to its exit) against the limited
rate, and the bytes the uplink carried (the proxy's count of client -> server bytes) against the
payload: what cuts cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import net_web, studies, tus_peer
from bench.gateway import PASSWORD, REPO, USERNAME, client_env, server_env
from bench.procs import run_timed

NS_ENV = "RELAYPACS_BENCH_NETNS"
GATEWAY_PROXY_PORT = 18080
TUS_PROXY_PORT = 18081
WORK = Path(__file__).resolve().parent / ".work"

STUDIES: dict[str, studies.StudySpec] = {
    "small": studies.StudySpec("net-small", "60 CT files of 0.5 MB", instances=60),
    "mf": studies.StudySpec(
        "net-mf", "2 multi-frame files of 31 MB (60 frames)", instances=2, frames=60
    ),
}
DEFAULT_RUNS = ("cli:auto:4", "cli:8MiB:4", "tuspy")


@dataclass(frozen=True)
class NetSpec:
    rate_bits: int
    rtt: float
    cut: tuple[float, float] | None

    @property
    def rate_bytes(self) -> float:
        return self.rate_bits / 8

    def label(self) -> str:
        cut = f", cut every {self.cut[0]:g}-{self.cut[1]:g} s" if self.cut else ""
        return f"{self.rate_bits / 1e6:g} Mbit/s, {self.rtt * 1000:g} ms round trip{cut}"


def parse_net(text: str) -> NetSpec:
    rate, rtt, cut = 0, 0.0, None
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if m := re.fullmatch(r"([0-9.]+)(k|m|g)bit", part):
            rate = int(float(m[1]) * {"k": 1e3, "m": 1e6, "g": 1e9}[m[2]])
        elif m := re.fullmatch(r"([0-9.]+)ms", part):
            rtt = float(m[1]) / 1000
        elif part == "cut":
            cut = (10.0, 20.0)
        elif m := re.fullmatch(r"cut=([0-9.]+)-([0-9.]+)", part):
            cut = (float(m[1]), float(m[2]))
        else:
            raise argparse.ArgumentTypeError(f"--net: {part!r}? e.g. 20mbit,100ms,cut")
    if not rate:
        raise argparse.ArgumentTypeError("--net needs a rate, e.g. 20mbit")
    return NetSpec(rate, rtt, cut)


@dataclass
class NetResult:
    study: str
    run: str
    seconds: float = 0.0
    payload: int = 0
    uplink_bytes: int = 0
    cuts: int = 0
    connections: int = 0
    chunk_size: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def goodput(self, net: NetSpec) -> float:
        return self.payload / self.seconds / net.rate_bytes if self.seconds else 0.0

    def carried(self) -> float:
        return self.uplink_bytes / self.payload if self.payload else 0.0


def log(message: str) -> None:
    print(message, flush=True)


# -- the namespace and its links ---------------------------------------------------------------


def _sh(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def shape(net: NetSpec) -> None:
    """The loopback up, MTU 1500, and the uplink and downlink classes for the proxies' ports."""
    _sh("ip", "link", "set", "lo", "up")
    _sh("ip", "link", "set", "lo", "mtu", "1500")
    rate = str(net.rate_bits)
    burst = str(max(16_000, net.rate_bits // 8 // 100))  # 10 ms of the rate
    _sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10")
    _sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate",
        "10gbit", "quantum", "200000")  # fmt: skip
    for classid in ("1:20", "1:30"):
        _sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", classid, "htb",
            "rate", rate, "ceil", rate, "burst", burst, "cburst", burst)  # fmt: skip
    for port in (GATEWAY_PROXY_PORT, TUS_PROXY_PORT):
        for direction, classid in (("dport", "1:20"), ("sport", "1:30")):
            match = ("u32", "match", "ip", direction, str(port), "0xffff", "flowid", classid)
            _sh("tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio",
                "1", *match)  # fmt: skip


@contextmanager
def fault_proxy(upstream: tuple[str, int], port: int, net: NetSpec, seed: int) -> Iterator[Any]:
    """A FaultProxy on 127.0.0.1:port in a thread of its own; yields it (read its stats)."""
    from relaypacs.devtools.faultproxy import FaultProxy

    loop = asyncio.new_event_loop()
    proxy = FaultProxy(
        upstream, listen=("127.0.0.1", port), delay=net.rtt / 2, cut_every=net.cut, seed=seed
    )
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
    try:
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


# -- contenders -------------------------------------------------------------------------------


def run_cli(
    study: studies.Study, net: NetSpec, chunk: str, parallel: int, scratch: Path, seed: int
) -> NetResult:
    from tests.gateway import create_user, relaypacs_command, run_gateway

    result = NetResult(study.spec.key, f"cli:{chunk}:{parallel}", payload=study.total_bytes)
    data_dir, state_dir = scratch / "data", scratch / "client-state"
    state_dir.mkdir(parents=True, mode=0o700)
    env = server_env(None)
    create_user(data_dir, USERNAME, PASSWORD, env=env)
    with run_gateway(data_dir, env, log_path=scratch / "gateway.log") as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        with fault_proxy(("127.0.0.1", port), GATEWAY_PROXY_PORT, net, seed) as proxy:
            run = run_timed(
                [*relaypacs_command(), "upload", str(study.directory), "--json",
                 "--parallel", str(parallel), "--chunk-size", chunk, "--retries", "30"],
                env=client_env(state_dir, f"http://127.0.0.1:{GATEWAY_PROXY_PORT}"),
                cwd=REPO, log_dir=scratch, name="upload", timeout=1800,
            )  # fmt: skip
            stats = proxy.stats
    result.seconds, result.uplink_bytes = run.seconds, stats.upstream_bytes
    result.cuts, result.connections = stats.cuts, stats.connections
    try:
        doc = json.loads(run.stdout[run.stdout.index("{") :])
        [item] = doc["studies"]
        result.chunk_size = item.get("chunk_size")
        result.extra["upload_seconds"] = doc.get("timings", {}).get("upload_seconds")
        if run.returncode != 0 or item["status"] != "validated":
            result.error = f"exit {run.returncode}: {item['status']} {item.get('message')}"
    except (ValueError, KeyError) as exc:
        result.error = f"exit {run.returncode}, no summary ({exc}): {run.stderr[-500:]}"
    return result


def run_tuspy(study: studies.Study, net: NetSpec, scratch: Path, seed: int) -> NetResult:
    result = NetResult(study.spec.key, "tuspy", payload=study.total_bytes, chunk_size=8 << 20)
    list_file = scratch / "files.txt"
    scratch.mkdir(parents=True, exist_ok=True)
    list_file.write_text("".join(f"{p}\n" for p in study.files))
    with (
        tus_peer.TusServer(scratch / "store", scratch) as server,
        fault_proxy(("127.0.0.1", server.port), TUS_PROXY_PORT, net, seed) as proxy,
    ):
        run = run_timed(
            [sys.executable, "-m", "bench.tus_client", "--endpoint",
             f"http://127.0.0.1:{TUS_PROXY_PORT}/files", "--files-from", str(list_file),
             "--parallel", "4", "--chunk-size", str(8 << 20), "--impl", "tuspy",
             "--retries", "30"],
            cwd=REPO, log_dir=scratch, name="tuspy", timeout=1800,
        )  # fmt: skip
        stats = proxy.stats
    result.seconds, result.uplink_bytes = run.seconds, stats.upstream_bytes
    result.cuts, result.connections = stats.cuts, stats.connections
    if run.returncode != 0:
        result.error = f"exit {run.returncode}: {run.stderr.strip()[-500:]}"
    else:
        result.extra["upload_seconds"] = json.loads(run.stdout.strip().splitlines()[-1])["seconds"]
    return result


# -- driver ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench --net", description=__doc__)
    parser.add_argument("--net", type=parse_net, required=True, help="e.g. 20mbit,100ms,cut")
    parser.add_argument("--net-studies", default="small,mf", help="small,mf")
    parser.add_argument(
        "--net-runs",
        default=",".join(DEFAULT_RUNS),
        help="comma list of cli:CHUNK:PARALLEL (CHUNK auto, 256KiB, 8MiB...), web and tuspy",
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(NS_ENV) != "1":
        unshare = shutil.which("unshare")
        if unshare is None:
            log("bench --net: `unshare` (util-linux) is needed")
            return 2
        if "tuspy" in " ".join(argv):
            tus_peer.ensure_installed(log)  # npm ci needs the network: outside the namespace
        if re.search(r"(^|,)web(,|$)", " ".join(argv).replace(" ", ",")):
            net_web.ensure_built()
        env = {**os.environ, NS_ENV: "1"}
        return subprocess.call(
            [unshare, "-rn", sys.executable, "-m", "bench.net", *argv], env=env, cwd=REPO
        )
    args = parse_args(argv)
    net: NetSpec = args.net
    shape(net)
    run_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{os.getpid()}"
    scratch_root = WORK / "scratch" / f"net-{run_id}"
    log(f"RelayPACS bench --net: {net.label()} -- {datetime.now(UTC):%Y-%m-%d %H:%M UTC}")
    if "tuspy" in args.net_runs:
        tus_peer.ensure_installed(log)  # (done outside: here a check; no network in here)
    results: list[NetResult] = []
    for key in [k.strip() for k in args.net_studies.split(",") if k.strip()]:
        study = studies.prepare(STUDIES[key], WORK / "studies", log=log)
        studies.warm_cache(study)
        log(f"\n{STUDIES[key].title}: {study.total_bytes / 1e6:.1f} MB, {len(study.files)} files")
        for spec in [r.strip() for r in args.net_runs.split(",") if r.strip()]:
            for i in range(args.repeat):
                scratch = scratch_root / f"{key}-{spec.replace(':', '-')}-{i}"
                seed = args.seed + i
                try:
                    if spec == "tuspy":
                        result = run_tuspy(study, net, scratch, seed)
                    elif spec == "web":
                        result = net_web.run_web(study, net, scratch, seed, port=GATEWAY_PROXY_PORT)
                    else:
                        _, chunk, parallel = spec.split(":")
                        result = run_cli(study, net, chunk, int(parallel), scratch, seed)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    result = NetResult(key, spec, error=f"{type(exc).__name__}: {exc}")
                results.append(result)
                log(_row(result, net))
                shutil.rmtree(scratch / "data", ignore_errors=True)
                shutil.rmtree(scratch / "store", ignore_errors=True)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"net": asdict(net), "results": [asdict(r) for r in results]}, indent=2)
        )
    return 0


def _row(result: NetResult, net: NetSpec) -> str:
    if result.error:
        return f"  {result.run:<16} ERROR {result.error}"
    chunk = f"{result.chunk_size // 1024} KiB" if result.chunk_size else "-"
    phase = result.extra.get("upload_seconds")
    transfer = (
        f" ({result.payload / phase / net.rate_bytes:.2f}x in its upload phase)" if phase else ""
    )
    return (
        f"  {result.run:<16} {result.seconds:7.1f} s  goodput {result.goodput(net):.2f}x the "
        f"link{transfer}  uplink carried {result.carried():.2f}x the payload  "
        f"cuts {result.cuts:<3} connections {result.connections:<4} chunk {chunk}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
