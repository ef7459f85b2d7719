"""`kill_pipelined`: the `kill` scenario (chaos/kill.py) with the pipelined relay on and studies
of 100-140 single-chunk instances, so that instances reach the PACS while their study uploads."""

from __future__ import annotations

from chaos import kill
from chaos.common import Tally


def run(rounds: int, seed: int) -> Tally:
    return kill.run(rounds, seed, pipeline=True)
