"""`kill`: SIGKILL the gateway at random points of upload and relay, restart it, let the CLI
client resume; every instance is then fetched back from Orthanc and compared by SHA-256.

Each round: a new study (3-8 CT images, 128-384 pixels square, 64 KiB chunks), `relaypacs
upload --wait` started, the gateway killed after a random delay drawn over the time a round
takes (so kills land in upload, verification, relay and confirmation alike), restarted after
a random pause on the same port and data; the CLI, which retries, carries on by itself (run
again, as a user would, if it gave up). Counted: instances the PACS does not hold (lost), or
holds with other bytes (corrupted), and studies not confirmed within the bound (stuck).

With `pipeline` (the scenario `kill_pipelined`, chaos/kill_pipelined.py): the pipelined relay on
(RELAYPACS_PIPELINE=true) and studies of 100-140 instances of one chunk each (128 pixels square,
sent one at a time), so that full batches really go to the PACS while the study uploads, and the
last partial one once every file has arrived: the kills land in that relay too."""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from chaos.common import (
    PASSWORD,
    USERNAME,
    Client,
    ScenarioError,
    StudyFiles,
    Tally,
    make_study,
    new_gateway,
    round_study,
    sha256_hex,
)
from tests.gateway import relaypacs_command, subprocess_env
from tests.pacs import OrthancServer, run_orthanc

ROUND_TIMEOUT = 120.0  # a round's upload and delivery, kills included
CLI_RUNS = 4  # the CLI run again (resuming) at most this many times


def _cli(
    study: StudyFiles, base_url: str, state: Path, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    env = subprocess_env(
        {
            "RELAYPACS_SERVER": base_url,
            "RELAYPACS_USERNAME": USERNAME,
            "RELAYPACS_PASSWORD": PASSWORD,
            "RELAYPACS_STATE_DIR": str(state),
            "XDG_STATE_HOME": str(state / "xdg-state"),
            "XDG_CONFIG_HOME": str(state / "xdg-config"),
        }
    )
    command = [
        *relaypacs_command(),
        "upload",
        str(study.directory),
        "--json",
        "--wait",
        "--wait-timeout",
        "60",
        "--retries",
        "1000",
        "--timeout",
        "10",
        *extra,
    ]
    return subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _in_pacs(orthanc: OrthancServer, study: StudyFiles) -> int:
    try:
        return len(orthanc.sop_instance_uids(study.study_uid))
    except Exception:  # a QIDO answer is only a label for the kill here
        return -1


def _pipelined(base_url: str, study: StudyFiles) -> int:
    """How many of the study's instances its upload queued for the PACS while uploading (the
    timeline's `validated` step), -1 if that cannot be read."""
    try:
        client = Client(base_url)
    except Exception:
        return -1
    try:
        listed = client.http.get("/uploads", params={"limit": 50}).json()["items"]
        ids = [u["id"] for u in listed if u["study_instance_uid"] == study.study_uid]
        if not ids:
            return -1
        steps = client.http.get(f"/uploads/{ids[0]}/timeline").json()["steps"]
        details = [s.get("detail") or "" for s in steps if s["step"] == "validated"]
        found = re.search(r"; (\d+) instances queued for the PACS while uploading", details[-1])
        return int(found.group(1)) if found else 0
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return -1
    finally:
        client.close()


def _check_pacs(tally: Tally, orthanc: OrthancServer, study: StudyFiles, round_seed: int) -> None:
    for sop_uid, data in zip(study.sop_uids, study.files, strict=True):
        stored = orthanc.file_by_sop_uid(sop_uid)
        if stored is None:
            tally.lost += 1
            tally.note(f"round seed {round_seed}: instance {sop_uid} not in the PACS")
        elif sha256_hex(stored) != sha256_hex(data):
            tally.corrupted += 1
            tally.note(f"round seed {round_seed}: instance {sop_uid} differs in the PACS")


# (instances, sides) of a round's study; the calibration round's
STUDIES = {False: ((3, 8), (128, 256, 384)), True: ((100, 140), (128,))}
CALIBRATION = {False: (5, 256), True: (100, 128)}
# Pipelined: one file per request, one at a time, so that the upload lasts a few seconds on
# loopback (30 small files went up whole before the first early check was judged).
SLOW_CLI = ["--parallel", "1", "--batch-size", "0"]


def run(rounds: int, seed: int, *, pipeline: bool = False) -> Tally:
    tally = Tally("kill_pipelined" if pipeline else "kill", seed)
    instances, sides = STUDIES[pipeline]
    cli_args = SLOW_CLI if pipeline else []
    phases = {"upload": 0, "relay": 0, "after": 0}
    durations: list[float] = []
    restarts: list[float] = []  # from exec to the first answer of /health/live
    pipelined: list[int] = []  # per confirmed round: instances queued while uploading
    with tempfile.TemporaryDirectory(prefix="relaypacs-chaos-kill-") as tmp:
        work = Path(tmp)
        with run_orthanc(work / "orthanc") as orthanc:
            gateway = new_gateway(
                work,
                {
                    "RELAYPACS_PACS_URL": orthanc.dicomweb_url,
                    "RELAYPACS_PACS_USERNAME": orthanc.auth[0],
                    "RELAYPACS_PACS_PASSWORD": orthanc.auth[1],
                    "RELAYPACS_PACS_PROFILE": "orthanc",
                    "RELAYPACS_FORWARD_RETRY_DELAYS": "[0.2, 0.4, 0.8]",
                    "RELAYPACS_FORWARD_RETRY_INTERVAL": "1.0",
                    "RELAYPACS_FORWARD_POLL_SECONDS": "0.2",
                    "RELAYPACS_PIPELINE": "true" if pipeline else "false",
                },
            )
            gateway.start()
            try:
                # Calibration: a round without a kill; its time is the window kills fall in.
                began = time.monotonic()
                count, side = CALIBRATION[pipeline]
                calibration = make_study(
                    work / "calibration", instances=count, side=side, seed=seed
                )
                if not _finish(
                    _cli(calibration, gateway.base_url, work / "client-state", cli_args),
                    calibration,
                    gateway.base_url,
                    work,
                    began,
                ):
                    raise ScenarioError("the calibration round (no kill) did not complete")
                window = time.monotonic() - began
                tally.figures["round without a kill (s)"] = round(window, 2)
                if pipeline:
                    sent_early = _pipelined(gateway.base_url, calibration)
                    tally.figures["round without a kill: instances pipelined"] = (
                        f"{sent_early} of {len(calibration.files)}"
                    )
                    if sent_early <= 0:  # the scenario would not test what it says
                        raise ScenarioError(
                            f"the calibration round pipelined no instance ({sent_early})"
                        )
                print(f"calibration: a round without a kill takes {window:.1f} s", flush=True)
                for number in range(rounds):
                    round_seed, rng, study = round_study(
                        work, seed, number, instances=instances, sides=sides
                    )
                    delay = rng.uniform(0.0, window)
                    pause = rng.uniform(0.0, 1.0)
                    began = time.monotonic()
                    cli = _cli(study, gateway.base_url, work / "client-state", cli_args)
                    time.sleep(delay)
                    if cli.poll() is None:
                        phase = "relay" if _in_pacs(orthanc, study) > 0 else "upload"
                    else:
                        phase = "after"
                    phases[phase] += 1
                    gateway.kill()
                    time.sleep(pause)
                    restart = time.monotonic()
                    gateway.start()
                    restarts.append(time.monotonic() - restart)
                    finished = _finish(cli, study, gateway.base_url, work, began, cli_args)
                    took = time.monotonic() - began
                    print(
                        f"round {number + 1}/{rounds} seed {round_seed}: "
                        f"{len(study.files)} files {study.total_bytes // 1024} KiB, "
                        f"killed at {delay:.2f} s ({phase}), restarted after {pause:.2f} s, "
                        f"{'confirmed' if finished else 'NOT confirmed'} in {took:.1f} s",
                        flush=True,
                    )
                    if not finished:
                        tally.stuck += 1
                        tally.note(f"round seed {round_seed}: the study was not confirmed")
                    _check_pacs(tally, orthanc, study, round_seed)
                    if pipeline and finished:
                        pipelined.append(_pipelined(gateway.base_url, study))
                    durations.append(took)
                    tally.rounds += 1
            finally:
                gateway.stop()
    tally.figures["kills by phase"] = phases
    if pipeline:
        tally.figures["rounds with instances pipelined"] = f"{sum(n > 0 for n in pipelined)}"
        tally.figures["instances pipelined (of the confirmed rounds)"] = sum(
            n for n in pipelined if n > 0
        )
    tally.figures["gateway starts"] = gateway.starts
    if durations:
        tally.figures["round seconds (min/median/max)"] = (
            f"{min(durations):.1f} / {sorted(durations)[len(durations) // 2]:.1f} / "
            f"{max(durations):.1f}"
        )
    if restarts:
        tally.figures["gateway restart seconds (median/max)"] = (
            f"{sorted(restarts)[len(restarts) // 2]:.1f} / {max(restarts):.1f}"
        )
    return tally


def _finish(
    cli: subprocess.Popen[bytes],
    study: StudyFiles,
    base_url: str,
    work: Path,
    began: float,
    cli_args: Sequence[str] = (),
) -> bool:
    """The CLI run to the end (and again, resuming, while it says "run again": exit 3)."""
    for attempt in range(CLI_RUNS):
        left = ROUND_TIMEOUT - (time.monotonic() - began)
        try:
            code = cli.wait(timeout=max(1.0, left))
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.wait()
            return False
        if code == 0:
            return True
        stderr = cli.stderr.read().decode(errors="replace")[-500:] if cli.stderr else ""
        if code != 3 or attempt == CLI_RUNS - 1:
            print(f"  `relaypacs upload` exited {code}: {stderr}", flush=True)
            return False
        cli = _cli(study, base_url, work / "client-state", cli_args)
    return False
