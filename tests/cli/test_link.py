"""The chunk size the client asks for, fitted to the link it measured."""

from __future__ import annotations

from relaypacs.client.link import (
    FIRST_GUESS,
    LAN_RTT,
    MAX_CHUNK,
    MIN_CHUNK,
    WHOLE_FILE_MAX,
    LinkMeter,
    fitted_chunk_size,
)

KiB = 1024


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_counts_the_time_something_was_in_flight_only() -> None:
    clock = Clock()
    meter = LinkMeter(clock=clock)
    meter.started()
    meter.started()
    clock.now = 1.0
    meter.finished(1 << 20)
    clock.now = 2.0
    meter.finished(1 << 20)
    clock.now = 10.0  # idle: not counted
    meter.started()
    clock.now = 12.0
    meter.finished(0)  # a chunk that failed: its time counts, its bytes do not
    assert meter.rate() == (2 << 20) / 4.0


def test_no_rate_before_enough_was_measured() -> None:
    clock = Clock()
    meter = LinkMeter(clock=clock)
    meter.started()
    clock.now = 5.0
    meter.finished(100 * KiB)
    assert meter.rate() is None


def test_the_chunk_size_keeps_half_a_second_of_the_rate_in_flight() -> None:
    # 20 Mbit/s, 4 in flight: 312 KB a chunk -> 256 KiB; a cut then costs at most 1 MiB
    assert fitted_chunk_size(2.5e6, 0.1, 4) == 256 * KiB
    assert fitted_chunk_size(2.5e6, 0.1, 8) == 128 * KiB  # the same bytes in flight
    assert fitted_chunk_size(12.5e6, 0.1, 4) == 1024 * KiB  # 100 Mbit/s
    assert fitted_chunk_size(1e9, 0.0001, 4) == 64 * 1024 * KiB  # the gateway: its 8 MiB
    assert fitted_chunk_size(1e12, 0.0001, 1) == MAX_CHUNK
    assert fitted_chunk_size(10e3, 0.3, 4) == MIN_CHUNK


def test_a_small_file_is_never_split() -> None:
    """0.5 MB CT files stay one chunk each; a 31 MB file beside them gets chunks of that size,
    and without small files the fitted size stands."""
    ct = 525_000
    assert fitted_chunk_size(2.5e6, 0.1, 4, [ct, ct - 10, 31_000_000]) == ct
    assert fitted_chunk_size(None, 0.1, 4, [ct]) == ct
    assert fitted_chunk_size(2.5e6, 0.1, 4, [31_000_000, WHOLE_FILE_MAX + 1]) == 256 * KiB
    assert fitted_chunk_size(2.5e6, 0.1, 4, [100 * KiB]) == 256 * KiB
    assert fitted_chunk_size(None, 0.001, 4, [ct]) is None  # a local network: the server's


def test_before_any_rate_the_round_trip_decides() -> None:
    assert fitted_chunk_size(None, None, 4) is None
    assert fitted_chunk_size(None, LAN_RTT / 2, 4) is None
    assert fitted_chunk_size(None, 0.1, 4) == FIRST_GUESS
