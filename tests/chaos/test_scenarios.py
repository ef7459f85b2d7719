"""Each chaos scenario (chaos/) run briefly, so that they keep working: two or three rounds
each, with a fixed seed; every count must be zero (slowclients' P99 limit is a time on a
shared machine: printed, not asserted here). The long
runs are `python -m chaos <scenario>` (docs/operations.md, "Chaos")."""

from __future__ import annotations

import pytest

from chaos.run import SCENARIOS, main, run_scenario

ROUNDS = {"kill": 2, "kill_pipelined": 2, "diskfull": 3, "pgrestart": 2, "slowclients": 2}


def test_every_scenario_is_run_here() -> None:
    assert set(ROUNDS) == set(SCENARIOS)


@pytest.mark.parametrize("name", sorted(ROUNDS))
def test_scenario_counts_nothing_lost(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    tally = run_scenario(name, ROUNDS[name], seed=16)
    report = tally.report()
    assert tally.rounds == ROUNDS[name], report
    assert (tally.lost, tally.corrupted, tally.stuck, tally.unexpected) == (0, 0, 0, 0), (
        report + "\n" + "\n".join(tally.notes)
    )
    assert f"{ROUNDS[name]} rounds" in report
    if name == "slowclients":
        # Measured and printed, not asserted: a time on a shared machine (bench/ rule).
        assert "/health/live P50 / P95 / P99 (ms)" in tally.figures
        assert "ordinary upload, seconds of its chunk PUTs (max)" in tally.figures
    else:
        assert tally.ok
        assert report.endswith("PASS")
    # Each round says what was done to it, with its seed (a failure can be replayed).
    assert capsys.readouterr().out.count(" seed 16") >= ROUNDS[name]


def test_the_command_exits_non_zero_when_a_count_is_not_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exit status is what CI and scripts see: a lost chunk must fail it."""
    from chaos import common, run

    def broken(name: str, rounds: int, seed: int) -> common.Tally:
        return common.Tally(name, seed, rounds=rounds, lost=1)

    monkeypatch.setattr(run, "run_scenario", broken)
    assert main(["diskfull", "--rounds", "1", "--seed", "3"]) == 1
    assert "lost 1" in capsys.readouterr().out
    monkeypatch.setattr(run, "run_scenario", lambda n, r, s: common.Tally(n, s, rounds=r))
    assert main(["diskfull", "--rounds", "1", "--seed", "3"]) == 0
