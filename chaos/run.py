"""The command line of `python -m chaos`."""

from __future__ import annotations

import argparse
import importlib
import random
import time
from collections.abc import Sequence

from chaos.common import ScenarioError, Tally

# scenario: default rounds
SCENARIOS = {
    "kill": 50,
    "kill_pipelined": 20,
    "diskfull": 10,
    "pgrestart": 10,
    "slowclients": 3,
}


def run_scenario(name: str, rounds: int, seed: int) -> Tally:
    module = importlib.import_module(f"chaos.{name}")
    began = time.monotonic()
    tally: Tally = module.run(rounds, seed)
    tally.seconds = time.monotonic() - began
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description="Fault scenarios against a real gateway; each prints the lost, corrupted "
        "and stuck counts, which must be zero (exit 1 otherwise, 2 if it could not run).",
    )
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument(
        "--rounds", type=int, help="default: " + ", ".join(f"{k} {v}" for k, v in SCENARIOS.items())
    )
    parser.add_argument("--seed", type=int, help="default: random (printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    failed = False
    for name in names:
        rounds = args.rounds or SCENARIOS[name]
        print(f"chaos {name}: {rounds} rounds, seed {seed}", flush=True)
        try:
            tally = run_scenario(name, rounds, seed)
        except ScenarioError as exc:
            print(f"chaos {name} could not run: {exc}", flush=True)
            return 2
        print(tally.report(), flush=True)
        failed = failed or not tally.ok
    return 1 if failed else 0
