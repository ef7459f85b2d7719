"""The upload client on a bad link: a real gateway behind a fault proxy that cuts connections
(reset) or silently stalls them (relaypacs.devtools.faultproxy)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from relaypacs.client import GatewayClient, RetryPolicy, StudyStatus, UploadOptions, run_upload
from relaypacs.client.link import FIRST_GUESS
from relaypacs.devtools.faultproxy import FaultProxy
from relaypacs.devtools.synth import write_study
from tests.cli.conftest import Gateway
from tests.gateway import create_user, run_gateway

KiB = 1024
SMALL_CHUNK = 128 * KiB
PARALLEL = 4
# Bytes of a request that are not its body: the request line and headers (a chunk PUT's are
# about 500 bytes, its bearer token most of it), the login, the manifest.
OVERHEAD = 64 * KiB


@pytest.fixture(scope="module")
def big_chunk_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with its default chunk size (8 MiB), which a client on a bad link asks to
    lower."""
    data_dir = tmp_path_factory.mktemp("gateway") / "data"
    with run_gateway(data_dir, {}) as base_url:
        username, password = "clinician1", secrets.token_urlsafe(16)
        create_user(data_dir, username, password)
        yield Gateway(base_url, username, password, data_dir)


def _upstream(gateway: Gateway) -> tuple[str, int]:
    url = urlsplit(gateway.base_url)
    assert url.hostname is not None
    assert url.port is not None
    return url.hostname, url.port


def _study(directory: Path) -> int:
    """Two 512x512 16-bit frames x 4 per file: about 2 MiB a file; the payload's bytes."""
    return write_study(directory, instances=2, rows=512, columns=512, frames=4).total_bytes


def _client(gateway: Gateway, proxy: FaultProxy, *, stall_timeout: float = 10.0) -> GatewayClient:
    return GatewayClient(
        f"http://{proxy.address}",
        username=gateway.username,
        password=gateway.password,
        timeout=600.0,  # only the stall timeout may notice a silent drop here
        stall_timeout=stall_timeout,
        retry=RetryPolicy(retries=20, base_delay=0.05, max_delay=0.2),
        max_connections=PARALLEL + 1,
    )


async def test_a_cut_resends_no_more_than_the_small_chunks_in_flight(
    big_chunk_gateway: Gateway, tmp_path: Path
) -> None:
    """Three times during the upload every connection is reset. The client asked for 128 KiB
    chunks, so each cut costs at most the 4 chunks in flight: with the gateway's own 8 MiB
    chunks a cut would cost up to the whole 2 MiB file each time."""
    payload = _study(tmp_path / "study")
    async with FaultProxy(_upstream(big_chunk_gateway)) as proxy:
        client = _client(big_chunk_gateway, proxy)
        cuts = 3
        options = UploadOptions(
            state_dir=tmp_path / "state", parallel=PARALLEL, chunk_size=SMALL_CHUNK
        )

        async def cut_repeatedly() -> None:
            for _ in range(cuts):
                proxy.cut_after_bytes = payload // (cuts + 1)
                while proxy.cut_after_bytes is not None:
                    await asyncio.sleep(0.01)

        cutter = asyncio.create_task(cut_repeatedly())
        async with client:
            summary = await run_upload([tmp_path / "study"], client, options=options)
        cutter.cancel()
    [result] = summary.studies
    assert result.status is StudyStatus.VALIDATED, result.message
    assert result.chunk_size == SMALL_CHUNK
    assert proxy.stats.cuts == cuts
    assert client.retries_done >= 1
    resent = proxy.stats.upstream_bytes - payload
    assert resent <= cuts * PARALLEL * SMALL_CHUNK + OVERHEAD, (resent, proxy.stats)


async def test_a_silent_stall_is_noticed_and_the_chunk_sent_again(
    big_chunk_gateway: Gateway, tmp_path: Path
) -> None:
    """The link stops relaying in the middle of the upload and never says so (no reset, the
    connections stay open). The request timeout is 600 s: only the stall timeout (1 s here)
    gives the chunks up, and the upload finishes on new connections."""
    payload = _study(tmp_path / "study")
    async with FaultProxy(_upstream(big_chunk_gateway)) as proxy:
        proxy.stall_after_bytes = payload // 2
        client = _client(big_chunk_gateway, proxy, stall_timeout=1.0)
        options = UploadOptions(
            state_dir=tmp_path / "state", parallel=PARALLEL, chunk_size=SMALL_CHUNK
        )
        async with client, asyncio.timeout(120):  # a guard: a hang fails, never waits 600 s
            summary = await run_upload([tmp_path / "study"], client, options=options)
    [result] = summary.studies
    assert result.status is StudyStatus.VALIDATED, result.message
    assert proxy.stats.connections_stalled >= 1
    assert client.retries_done >= 1


async def test_auto_asks_for_small_chunks_beyond_the_local_network(
    gateway: Gateway, big_chunk_gateway: Gateway, tmp_path: Path
) -> None:
    """With no rate measured yet, the round trip decides: 50 ms away, the client asks for its
    first guess; straight on loopback, for the gateway's own size."""
    _study(tmp_path / "study")
    async with FaultProxy(_upstream(big_chunk_gateway), delay=0.025) as proxy:
        client = _client(big_chunk_gateway, proxy)
        async with client:
            far = await run_upload(
                [tmp_path / "study"], client, options=UploadOptions(state_dir=tmp_path / "s1")
            )
    assert far.studies[0].status is StudyStatus.VALIDATED, far.studies[0].message
    assert far.studies[0].chunk_size == FIRST_GUESS
    assert client.link.rtt is not None
    assert client.link.rtt >= 0.05

    other = tmp_path / "other"
    _study(other)
    async with GatewayClient(
        big_chunk_gateway.base_url,
        username=big_chunk_gateway.username,
        password=big_chunk_gateway.password,
    ) as near:
        local = await run_upload([other], near, options=UploadOptions(state_dir=tmp_path / "s2"))
    assert local.studies[0].status is StudyStatus.VALIDATED, local.studies[0].message
    assert local.studies[0].chunk_size == 8 * 1024 * KiB
