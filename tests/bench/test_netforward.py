"""`python -m bench --only forward --net uplink=...,pacs=...`: its link options."""

from __future__ import annotations

import argparse

import pytest

from bench.netforward import Links, is_forward_net, parse_links


def test_the_links_parse_with_their_round_trips() -> None:
    assert parse_links("uplink=50mbit,pacs=100mbit") == Links(50_000_000, 100_000_000)
    assert parse_links("uplink=2.5mbit, pacs=1gbit, rtt=20ms, pacs-rtt=5ms") == Links(
        2_500_000, 1_000_000_000, 0.02, 0.005
    )


@pytest.mark.parametrize(
    "text", ["uplink=50mbit", "pacs=100mbit", "uplink=50mbit,pacs=fast", "50mbit,100ms"]
)
def test_a_link_spec_without_both_rates_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_links(text)


def test_only_uplink_specs_go_to_the_relay_benchmark() -> None:
    assert is_forward_net(["--only", "forward", "--net", "uplink=50mbit,pacs=100mbit"])
    assert not is_forward_net(["--net", "20mbit,100ms,cut"])
