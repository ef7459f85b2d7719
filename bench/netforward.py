"""The pipelined relay on shaped links: clinic -> gateway -> PACS against clinic -> PACS.

    python -m bench --only forward --net uplink=50mbit,pacs=100mbit
    python -m bench --only forward --net uplink=50mbit,pacs=100mbit,rtt=20ms --studies small,medium

Issue 16, item 1: the clinic's uplink to the gateway at 50 Mbit/s, the gateway's link to the
PACS at 100 Mbit/s (a WAN to the hospital); first byte -> "PACS confirmed" through the gateway
at most 1.1x a direct STOW-RS (10 per request, 4 in flight) of the same files through the
uplink alone (what the clinician would wait if the PACS were reachable directly).

Like `bench --net` (bench/net.py), the benchmark re-runs itself in a network namespace of its
own (`unshare -rn`) whose loopback only its processes use, with MTU 1500, and shapes it with
`tc htb`: one pair of classes (each way) at the uplink's rate for every packet to or from the
uplink proxy's port, one pair at the PACS link's rate for the PACS proxy's port; everything else
(a proxy to its server, the benchmark's own status polls) is unlimited. The two proxies are
`relaypacs.devtools.faultproxy` (no cuts; half of `rtt=` / `pacs-rtt=` added each way):
- uplink (port 18090): the CLI -> the gateway, or the direct STOW-RS client -> Orthanc;
- PACS link (port 18091): the gateway -> Orthanc (its RELAYPACS_PACS_URL).

Contenders, alternating run by run, each with a fresh Orthanc (and gateway):
- `direct`: bench.stow_direct through the uplink, first request to last answer (and + QIDO-RS);
- `plain`: `relaypacs upload` to a gateway with RELAYPACS_PIPELINE=false (upload, then forward);
- `pipelined`: the same with RELAYPACS_PIPELINE=true.
The gateway's time is its own: the upload's created_at (init, just before the first chunk) to its
forwarding.delivered_at (verified by QIDO-RS): "first byte -> PACS confirmed".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import forward, net, stow_direct, studies
from bench.gateway import REPO

UPLINK_PORT = 18090
PACS_PORT = 18091
WORK = Path(__file__).resolve().parent / ".work"
NS_ENV = "RELAYPACS_BENCH_NETFWD"

# The studies, and a medium one: the large study takes ~6 min per contender at 50 Mbit/s.
STUDIES: dict[str, studies.StudySpec] = {
    **studies.FULL,
    "medium": studies.StudySpec(
        "medium", "CT 2 x 500 x 512x512 (~520 MiB)", instances=1000, series=2
    ),
}
CONTENDERS = ("direct", "plain", "pipelined")


@dataclass(frozen=True)
class Links:
    uplink_bits: int
    pacs_bits: int
    rtt: float = 0.0  # the uplink's round trip, seconds
    pacs_rtt: float = 0.0

    def label(self) -> str:
        up = f"uplink {self.uplink_bits / 1e6:g} Mbit/s"
        if self.rtt:
            up += f" ({self.rtt * 1000:g} ms round trip)"
        pacs = f"PACS link {self.pacs_bits / 1e6:g} Mbit/s"
        if self.pacs_rtt:
            pacs += f" ({self.pacs_rtt * 1000:g} ms round trip)"
        return f"{up}, {pacs}"


def _rate(text: str) -> int:
    m = re.fullmatch(r"([0-9.]+)(k|m|g)bit", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: a rate like 50mbit")
    return int(float(m[1]) * {"k": 1e3, "m": 1e6, "g": 1e9}[m[2]])


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)ms", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: a round trip like 20ms")
    return float(m[1]) / 1000


def parse_links(text: str) -> Links:
    """`uplink=50mbit,pacs=100mbit[,rtt=20ms][,pacs-rtt=10ms]`."""
    values: dict[str, str] = {}
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or key not in ("uplink", "pacs", "rtt", "pacs-rtt"):
            raise argparse.ArgumentTypeError(
                f"--net: {part!r}? e.g. uplink=50mbit,pacs=100mbit,rtt=20ms"
            )
        values[key] = value
    if "uplink" not in values or "pacs" not in values:
        raise argparse.ArgumentTypeError("--only forward --net needs uplink=RATE,pacs=RATE")
    return Links(
        _rate(values["uplink"]),
        _rate(values["pacs"]),
        _ms(values["rtt"]) if "rtt" in values else 0.0,
        _ms(values["pacs-rtt"]) if "pacs-rtt" in values else 0.0,
    )


def is_forward_net(argv: Sequence[str]) -> bool:
    """`bench --only forward --net uplink=...`: this benchmark rather than bench/net.py's."""
    text = " ".join(argv)
    return "--net" in text and "uplink=" in text


def shape(links: Links) -> None:
    """Loopback up, MTU 1500; htb classes for the uplink's and the PACS link's ports."""
    sh = net._sh
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "set", "lo", "mtu", "1500")
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10")
    sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate",
       "10gbit", "quantum", "200000")  # fmt: skip
    legs = ((UPLINK_PORT, links.uplink_bits, ("1:20", "1:30")),
            (PACS_PORT, links.pacs_bits, ("1:40", "1:50")))  # fmt: skip
    for port, bits, classids in legs:
        burst = str(max(16_000, bits // 8 // 100))  # 10 ms of the rate
        for classid in classids:
            sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", classid, "htb",
               "rate", str(bits), "ceil", str(bits), "burst", burst, "cburst", burst)  # fmt: skip
        for direction, classid in zip(("dport", "sport"), classids, strict=True):
            match = ("u32", "match", "ip", direction, str(port), "0xffff", "flowid", classid)
            sh("tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio",
               "1", *match)  # fmt: skip


@contextmanager
def _proxied(url: str, port: int, rtt: float) -> Iterator[str]:
    """`url` (http://127.0.0.1:P/path) reached through a proxy on `port`: that URL."""
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/.*)?", url.rstrip("/"))
    if not m:
        raise RuntimeError(f"not a loopback URL: {url}")
    spec = net.NetSpec(rate_bits=1, rtt=rtt, cut=None)
    with net.fault_proxy(("127.0.0.1", int(m[1])), port, spec, seed=1):
        yield f"http://127.0.0.1:{port}{m[2] or ''}"


@dataclass
class Run:
    contender: str
    seconds: float = 0.0  # direct: STOW; gateway: created_at -> delivered_at
    seconds_qido: float | None = None  # direct: + QIDO
    complete_to_delivered: float | None = None
    wall: float | None = None  # gateway: the CLI's start -> delivered (its hashing included)
    validated: str | None = None  # the timeline's `validated` detail (N queued while uploading)
    cpu: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _run_direct(study: studies.Study, uids: forward.StudyUids, links: Links, rdir: Path) -> Run:
    from tests.pacs import run_orthanc

    run = Run("direct")
    with (
        run_orthanc(rdir / "orthanc", username="bench") as orthanc,
        _proxied(orthanc.dicomweb_url, UPLINK_PORT, links.rtt) as url,
    ):
        d = stow_direct.send(
            study.files, uids.study, url, orthanc.auth,
            per_request=forward.PER_REQUEST, in_flight=forward.IN_FLIGHT,
        )  # fmt: skip
    problem = (
        f"FailedSOPSequence for {len(d.failed)} instances"
        if d.failed
        else forward.missing(uids.instances, d.stored) or forward.missing(uids.instances, d.listed)
    )
    if problem:
        raise RuntimeError(f"direct STOW-RS: {problem}")
    run.seconds, run.seconds_qido = d.stow_seconds, d.stow_seconds + d.qido_seconds
    run.cpu = {"client": d.client_cpu_seconds}
    return run


def _run_gateway(
    study: studies.Study,
    uids: forward.StudyUids,
    links: Links,
    rdir: Path,
    logs: Path,
    name: str,
    *,
    pipeline: bool,
    parallel: int,
    pacs_verify: str | None,
) -> Run:
    from tests.pacs import run_orthanc

    run = Run("pipelined" if pipeline else "plain")
    with (
        run_orthanc(rdir / "orthanc", username="bench") as orthanc,
        _proxied(orthanc.dicomweb_url, PACS_PORT, links.pacs_rtt) as pacs_url,
    ):

        def uplink(base_url: str) -> Any:
            return _proxied(base_url, UPLINK_PORT, links.rtt)

        g = forward.gateway_run(
            study.files, study.directory, study.total_bytes, uids, orthanc, rdir, logs, name,
            workers=None, parallel=parallel, pipeline=pipeline, pacs_url=pacs_url,
            uplink=uplink, pacs_verify=pacs_verify,
        )  # fmt: skip
    if g.e2e_server_seconds is None:
        raise RuntimeError("no created_at / forwarding.delivered_at")
    run.seconds = g.e2e_server_seconds
    run.complete_to_delivered = g.server_seconds
    run.wall = g.wall_seconds
    run.validated = g.validated_step
    run.cpu = {"gateway": g.cpu_gateway_total, "cli": g.cpu_cli, "orthanc": g.cpu_orthanc_total}
    return run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench --only forward --net", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--only", default="forward", choices=["forward"])
    parser.add_argument(
        "--net", type=parse_links, required=True, help="uplink=50mbit,pacs=100mbit[,rtt=20ms]"
    )
    parser.add_argument("--studies", default="small", help=f"comma list of {','.join(STUDIES)}")
    parser.add_argument("--quick", action="store_true", help="the --quick studies (40 instances)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=4, help="the CLI's --parallel")
    parser.add_argument(
        "--pacs-verify",
        choices=["uids", "sample", "content"],
        default=None,
        help="the gateway's RELAYPACS_PACS_VERIFY (default: the orthanc profile's, content)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(NS_ENV) != "1":
        parse_args(argv)  # usage errors before the namespace
        unshare = shutil.which("unshare")
        if unshare is None:
            log("bench --only forward --net: `unshare` (util-linux) is needed")
            return 2
        env = {**os.environ, NS_ENV: "1"}
        return subprocess.call(
            [unshare, "-rn", sys.executable, "-m", "bench.netforward", *argv], env=env, cwd=REPO
        )
    args = parse_args(argv)
    links: Links = args.net
    try:
        version = forward.check_ready()
    except forward.ForwardUnavailable as exc:
        log(f"bench --only forward --net: {exc}")
        return 2
    shape(links)
    run_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{os.getpid()}"
    scratch_root = WORK / "scratch" / f"netfwd-{run_id}"
    logs_root = WORK / "logs" / f"netfwd-{run_id}"
    log(f"RelayPACS bench --only forward --net: {links.label()} -- {version} -- "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}, load average {_load()}")  # fmt: skip
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    specs = studies.QUICK if args.quick else STUDIES
    out: dict[str, Any] = {"links": asdict(links), "studies": {}}
    for key in [k.strip() for k in args.studies.split(",") if k.strip()]:
        spec = specs.get(key) or STUDIES[key]
        study = studies.prepare(spec, WORK / "studies", log=log)
        studies.warm_cache(study)
        uids = forward.study_uids(study.files)
        log(f"\n{spec.title}: {study.total_bytes / 1e6:.1f} MB, {len(study.files)} files; "
            f"{study.total_bytes * 8 / links.uplink_bits:.1f} s at the uplink's rate")  # fmt: skip
        runs: list[Run] = []
        for i in range(args.repeat):
            for contender in contenders:
                rdir = scratch_root / f"{key}-{contender}-{i}"
                shutil.rmtree(rdir, ignore_errors=True)
                rdir.mkdir(parents=True)
                logs = logs_root / key
                logs.mkdir(parents=True, exist_ok=True)
                try:
                    if contender == "direct":
                        run = _run_direct(study, uids, links, rdir)
                    else:
                        run = _run_gateway(
                            study, uids, links, rdir, logs, f"{contender}-{i}",
                            pipeline=contender == "pipelined", parallel=args.parallel,
                            pacs_verify=args.pacs_verify,
                        )  # fmt: skip
                except Exception as exc:  # a benchmark reports, and goes on
                    run = Run(contender, error=f"{type(exc).__name__}: {exc}")
                runs.append(run)
                log(f"  run {i + 1}: {_line(run)}  (load {_load()})")
                shutil.rmtree(rdir, ignore_errors=True)
        log(_table(runs, study, links))
        out["studies"][key] = {
            "bytes": study.total_bytes,
            "files": len(study.files),
            "runs": [asdict(r) for r in runs],
        }
    log(f"\nload average at the end: {_load()}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _line(run: Run) -> str:
    if run.error:
        return f"{run.contender:<10} ERROR {run.error[:400]}"
    if run.contender == "direct":
        return f"{run.contender:<10} STOW {run.seconds:7.2f} s, + QIDO {run.seconds_qido:7.2f} s"
    cpu = sum(run.cpu.values())
    return (
        f"{run.contender:<10} first byte -> PACS confirmed {run.seconds:7.2f} s "
        f"(complete -> confirmed {run.complete_to_delivered or 0:.2f} s; CLI start -> "
        f"confirmed {run.wall or 0:.2f} s; CPU {cpu:.1f} s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in run.cpu.items())
        + ")"
        + (f"\n             validated: {run.validated}" if run.validated else "")
    )


def _median(runs: list[Run], contender: str, attr: str = "seconds") -> float | None:
    values = [getattr(r, attr) for r in runs if r.contender == contender and not r.error]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _table(runs: list[Run], study: studies.Study, links: Links) -> str:
    direct = _median(runs, "direct")
    direct_q = _median(runs, "direct", "seconds_qido")
    floor = study.total_bytes * 8 / links.uplink_bits
    lines = [
        "",
        "| row | first byte -> PACS confirmed | vs direct STOW | vs direct + QIDO | "
        "goodput vs uplink |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {
        "direct": "direct STOW (10/req, 4 in flight) through the uplink",
        "plain": "gateway, upload then forward (RELAYPACS_PIPELINE=false)",
        "pipelined": "gateway, pipelined relay (RELAYPACS_PIPELINE=true)",
    }
    for contender in CONTENDERS:
        seconds = _median(runs, contender)
        if seconds is None:
            errors = [r.error for r in runs if r.contender == contender and r.error]
            if errors:
                lines.append(f"| {names[contender]} | ERROR {errors[0][:200]} | | | |")
            continue
        vs = f"{seconds / direct:.2f}x" if direct else "-"
        vs_q = f"{seconds / direct_q:.2f}x" if direct_q else "-"
        lines.append(
            f"| {names[contender]} | {seconds:.2f} s | {vs} | {vs_q} | {floor / seconds:.2f}x |"
        )
    if direct:
        pipelined = _median(runs, "pipelined")
        verdict = "N/A" if pipelined is None else ("PASS" if pipelined <= 1.1 * direct else "MISS")
        lines.append(f"\ngoal: pipelined within 1.1x of direct STOW through the uplink: {verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
