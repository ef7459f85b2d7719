"""The PACS test harness works: a real Orthanc (it must be installed: these tests fail, never
skip, without it), the recording proxy and the fault-injecting PACS."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from relaypacs.devtools.synth import make_instance
from relaypacs.devtools.unusual import make_missing_uid
from tests.pacs import (
    FAILED_SOP_SEQUENCE,
    FAILURE_REASON,
    REFERENCED_SOP_CLASS_UID,
    REFERENCED_SOP_INSTANCE_UID,
    REFERENCED_SOP_SEQUENCE,
    SOP_INSTANCE_UID,
    FaultPacs,
    MultipartReader,
    OrthancServer,
    RecordingProxy,
    dicom_uids,
    drop,
    encode_multipart,
    failed,
    hang,
    ok,
    orthanc_missing_reason,
    parse_multipart,
    run_orthanc,
    slow,
    status,
)
from tests.servers import free_port

ACCEPT = {"Accept": "application/dicom+json"}


def study(
    count: int, *, study_uid: str | None = None, seed: int = 0
) -> tuple[str, list[str], list[bytes]]:
    """A small study: (study UID, SOP Instance UIDs, Part-10 files)."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    sops = [str(generate_uid()) for _ in range(count)]
    files = [
        make_instance(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop,
            rows=16,
            columns=16,
            instance_number=n + 1,
            seed=seed,
        )
        for n, sop in enumerate(sops)
    ]
    return study_uid, sops, files


def stow(client: httpx.Client, url: str, files: list[bytes]) -> httpx.Response:
    body, content_type = encode_multipart(files)
    return client.post(url, content=body, headers={"Content-Type": content_type, **ACCEPT})


def referenced(answer: dict[str, object]) -> list[str]:
    items = answer.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])  # type: ignore[attr-defined]
    return [item[REFERENCED_SOP_INSTANCE_UID]["Value"][0] for item in items]


def failures(answer: dict[str, object]) -> dict[str, int]:
    items = answer.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])  # type: ignore[attr-defined]
    return {
        item[REFERENCED_SOP_INSTANCE_UID]["Value"][0]: item[FAILURE_REASON]["Value"][0]
        for item in items
    }


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def client(orthanc: OrthancServer) -> Iterator[httpx.Client]:
    with orthanc.client() as c:
        yield c


# --------------------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------------------


def test_orthanc_is_installed() -> None:
    assert orthanc_missing_reason() is None


def test_orthanc_requires_credentials_and_listens_on_loopback_only(
    orthanc: OrthancServer,
) -> None:
    assert httpx.get(f"{orthanc.base_url}/system", timeout=5).status_code == 401
    wrong = httpx.get(f"{orthanc.base_url}/system", auth=("relay", "wrong"), timeout=5)
    assert wrong.status_code == 401
    system = httpx.get(f"{orthanc.base_url}/system", auth=orthanc.auth, timeout=5)
    assert system.status_code == 200
    assert system.json()["Version"] == "1.10.1"
    plugin = httpx.get(f"{orthanc.base_url}/plugins/dicom-web", auth=orthanc.auth, timeout=5)
    assert plugin.json()["Version"] == "1.7"
    # /proc/net/tcp: local address 0100007F is 127.0.0.1; 00000000 would be every interface.
    listening = {
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A"  # LISTEN
    }
    assert f"0100007F:{orthanc.port:04X}" in listening
    assert f"00000000:{orthanc.port:04X}" not in listening


def test_stow_through_the_proxy_lands_in_orthanc_byte_for_byte(
    orthanc: OrthancServer, client: httpx.Client
) -> None:
    study_uid, sops, files = study(3)
    with RecordingProxy(orthanc.base_url) as proxy:
        response = stow(client, f"{proxy.dicomweb_url}/studies", files)
        assert response.status_code == 200
        answer = response.json()
        assert sorted(referenced(answer)) == sorted(sops)
        assert failures(answer) == {}
        [post] = proxy.stow_posts()
        assert post.status == 200
        assert post.part_count == 3
        assert post.sop_instance_uids == sops
        assert [part.sha256 for part in post.parts or []] == [
            hashlib.sha256(f).hexdigest() for f in files
        ]
        assert post.response_json() == answer
        assert proxy.errors == []

    # Orthanc returns exactly the bytes it was sent.
    for sop, data in zip(sops, files, strict=True):
        orthanc_id = orthanc.lookup_instance(sop)
        assert orthanc_id in orthanc.instances()
        assert hashlib.sha256(orthanc.instance_file(orthanc_id)).digest() == (
            hashlib.sha256(data).digest()
        )
    assert orthanc.sop_instance_uids(study_uid) == set(sops)


def test_proxy_forwards_chunked_bodies_and_keeps_the_connection(orthanc: OrthancServer) -> None:
    study_uid, sops, files = study(2)
    body, content_type = encode_multipart(files)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    with (
        RecordingProxy(orthanc.base_url) as proxy,
        httpx.Client(auth=orthanc.auth, timeout=10) as c,
    ):
        response = c.post(
            f"{proxy.dicomweb_url}/studies",
            content=chunks(),
            headers={"Content-Type": content_type, **ACCEPT},
        )
        assert response.status_code == 200
        assert c.get(f"{proxy.dicomweb_url}/studies/{study_uid}/instances").status_code == 200
        post, qido = proxy.records
        assert post.chunked
        assert post.request_bytes == len(body)
        assert post.sop_instance_uids == sops
        assert qido.method == "GET"
        assert qido.status == 200
    assert orthanc.sop_instance_uids(study_uid) == set(sops)


def test_orthanc_keeps_the_first_copy_of_a_resent_instance(
    orthanc: OrthancServer, client: httpx.Client
) -> None:
    study_uid, sops, files = study(2)
    url = f"{orthanc.dicomweb_url}/studies"
    assert stow(client, url, files).status_code == 200
    count = len(orthanc.instances())
    again = stow(client, url, files)
    assert again.status_code == 200
    assert sorted(referenced(again.json())) == sorted(sops)
    # Same UIDs, other bytes: success again, and the stored file is unchanged.
    series_uid = dicom_uids(files[0]).series_instance_uid
    assert series_uid is not None
    other = make_instance(
        study_uid=study_uid, series_uid=series_uid, sop_uid=sops[0], rows=16, columns=16, seed=7
    )
    assert other != files[0]
    changed = stow(client, url, [other])
    assert changed.status_code == 200
    assert referenced(changed.json()) == [sops[0]]
    assert len(orthanc.instances()) == count
    assert orthanc.file_by_sop_uid(sops[0]) == files[0]
    # But Orthanc identifies an instance by patient, study, series and SOP Instance UID: the
    # same SOP Instance UID in another series is a second instance.
    elsewhere = make_instance(
        study_uid=study_uid, series_uid=generate_uid(), sop_uid=sops[0], rows=16, columns=16
    )
    assert stow(client, url, [elsewhere]).status_code == 200
    assert len(orthanc.instances()) == count + 1
    assert orthanc.sop_instance_uids(study_uid) == set(sops)


def test_orthanc_qido_pages_with_limit_and_offset(
    orthanc: OrthancServer, client: httpx.Client
) -> None:
    study_uid, sops, files = study(5)
    assert stow(client, f"{orthanc.dicomweb_url}/studies", files).status_code == 200
    assert orthanc.sop_instance_uids(study_uid, page_size=2) == set(sops)
    url = f"{orthanc.dicomweb_url}/studies/{study_uid}/instances"
    pages = [client.get(url, params={"limit": 2, "offset": o}).json() for o in (0, 2, 4, 6)]
    assert [len(page) for page in pages] == [2, 2, 1, 0]
    listed = [item[SOP_INSTANCE_UID]["Value"][0] for page in pages for item in page]
    assert sorted(listed) == sorted(sops)
    unknown = client.get(f"{orthanc.dicomweb_url}/studies/{generate_uid()}/instances")
    assert unknown.status_code == 200
    assert unknown.json() == []


def test_orthanc_stores_the_good_parts_of_a_rejected_stow(
    orthanc: OrthancServer, client: httpx.Client
) -> None:
    """Facts the forwarder relies on: a 400 or 409 from Orthanc 1.10 does not mean that
    nothing was stored; the response body says what was."""
    study_uid, sops, files = study(2)
    # An unparseable part: 400, and it is listed nowhere, but the good part is stored.
    bad = stow(client, f"{orthanc.dicomweb_url}/studies", [files[0], b"not DICOM" * 20])
    assert bad.status_code == 400
    assert referenced(bad.json()) == [sops[0]]
    assert failures(bad.json()) == {}
    # A part without SeriesInstanceUID: C000 for it.
    missing = stow(client, f"{orthanc.dicomweb_url}/studies", [make_missing_uid()])
    assert missing.status_code == 400
    assert list(failures(missing.json()).values()) == [0xC000]
    # Another study's instance sent to /studies/{uid}: 409, 0110 for it, the others stored.
    _, (stranger,), (stranger_file,) = study(1)
    conflict = stow(
        client, f"{orthanc.dicomweb_url}/studies/{study_uid}", [files[1], stranger_file]
    )
    assert conflict.status_code == 409
    assert referenced(conflict.json()) == [sops[1]]
    assert failures(conflict.json()) == {stranger: 0x0110}
    assert orthanc.sop_instance_uids(study_uid) == set(sops)
    assert orthanc.lookup_instance(stranger) is None


def test_orthanc_freezes_and_thaws(orthanc: OrthancServer) -> None:
    url = f"{orthanc.base_url}/system"
    orthanc.freeze()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(url, auth=orthanc.auth, timeout=httpx.Timeout(5, read=0.5))
        answers: list[int] = []
        waiting = threading.Thread(
            target=lambda: answers.append(httpx.get(url, auth=orthanc.auth, timeout=30).status_code)
        )
        waiting.start()
        time.sleep(0.3)
        assert answers == []
    finally:
        orthanc.thaw()
    waiting.join(10)
    assert answers == [200]


def test_orthanc_stopped_then_started_keeps_its_data(
    orthanc: OrthancServer, client: httpx.Client
) -> None:
    study_uid, sops, files = study(2)
    assert stow(client, f"{orthanc.dicomweb_url}/studies", files).status_code == 200
    port = orthanc.port
    orthanc.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{orthanc.base_url}/system", timeout=2)
    orthanc.start()
    assert orthanc.port == port
    assert orthanc.sop_instance_uids(study_uid) == set(sops)
    assert orthanc.file_by_sop_uid(sops[1]) == files[1]


def test_orthanc_delete_all(tmp_path: Path) -> None:
    with run_orthanc(tmp_path / "orthanc", username="someone", password="p@ss:word") as server:
        study_uid, _, files = study(2)
        with server.client() as c:
            assert stow(c, f"{server.dicomweb_url}/studies", files).status_code == 200
        assert len(server.instances()) == 2
        server.delete_all()
        assert server.instances() == []
        assert server.sop_instance_uids(study_uid) == set()


# --------------------------------------------------------------------------------------
# RecordingProxy without Orthanc, multipart parsing
# --------------------------------------------------------------------------------------


def test_proxy_answers_502_when_upstream_is_down() -> None:
    with RecordingProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        response = httpx.post(f"{proxy.base_url}/dicom-web/studies", content=b"x", timeout=5)
        assert response.status_code == 502
        assert [(r.method, r.status) for r in proxy.records] == [("POST", 502)]


def test_multipart_reader_gives_the_same_parts_whatever_the_chunking() -> None:
    _, sops, files = study(3)
    body, content_type = encode_multipart(files)
    whole = parse_multipart(body, content_type)
    assert [part.data for part in whole] == files
    assert [part.sop_instance_uid for part in whole] == sops
    boundary = content_type.rsplit("boundary=", 1)[1]
    for size in (1, 7, 4096):
        reader = MultipartReader(boundary)
        for start in range(0, len(body), size):
            reader.feed(body[start : start + size])
        assert reader.complete
        assert [(p.size, p.sha256, p.sop_instance_uid) for p in reader.parts] == [
            (p.size, p.sha256, p.sop_instance_uid) for p in whole
        ]
    # Without keep_data only the first MiB of a part is kept: enough for the UIDs.
    big_study, (big_sop,), _ = study(1)
    big = make_instance(
        study_uid=big_study, series_uid=generate_uid(), sop_uid=big_sop, rows=1024, columns=1024
    )
    body, content_type = encode_multipart([big])
    [part] = parse_multipart(body, content_type, keep_data=False)
    assert part.data is None
    assert part.size == len(big) > 2 << 20
    assert part.sha256 == hashlib.sha256(big).hexdigest()
    assert part.sop_instance_uid == big_sop


# --------------------------------------------------------------------------------------
# FaultPacs
# --------------------------------------------------------------------------------------


@pytest.fixture
def pacs() -> Iterator[FaultPacs]:
    with FaultPacs(auth=("relay", "secret")) as server:
        yield server
        assert server.errors == []


@pytest.fixture
def pacs_client() -> Iterator[httpx.Client]:
    with httpx.Client(auth=("relay", "secret"), timeout=5) as c:
        yield c


def test_fault_pacs_ok_stores_and_lists_with_paging(
    pacs: FaultPacs, pacs_client: httpx.Client
) -> None:
    study_uid, sops, files = study(3)
    response = stow(pacs_client, f"{pacs.dicomweb_url}/studies/{study_uid}", files)
    assert response.status_code == 200
    answer = response.json()
    assert referenced(answer) == sops
    assert answer[REFERENCED_SOP_SEQUENCE]["Value"][0][REFERENCED_SOP_CLASS_UID]["Value"] == [
        "1.2.840.10008.5.1.4.1.1.2"
    ]
    assert FAILED_SOP_SEQUENCE not in answer
    assert pacs.sop_instance_uids(study_uid) == set(sops)
    assert [pacs.stored[s].data for s in sops] == files
    url = f"{pacs.dicomweb_url}/studies/{study_uid}/instances"
    page = pacs_client.get(url, params={"limit": 2, "offset": 2}).json()
    assert [item[SOP_INSTANCE_UID]["Value"][0] for item in page] == sops[2:]
    [request, _] = pacs.requests
    assert request.sop_instance_uids == sops
    assert request.status == 200
    assert "authorization" not in request.headers
    assert request.authorized


def test_fault_pacs_scripted_statuses_and_failures(
    pacs: FaultPacs, pacs_client: httpx.Client
) -> None:
    _, sops, files = study(3)
    pacs.script_stow(
        status(503),
        failed({sops[0]: 0xA700, sops[1]: 0xC000}),
        failed({}, omitted=[sops[2]], http_status=200),
    )
    url = f"{pacs.dicomweb_url}/studies"
    assert stow(pacs_client, url, files).status_code == 503
    assert pacs.stored == {}

    partial = stow(pacs_client, url, files)
    assert partial.status_code == 202
    assert failures(partial.json()) == {sops[0]: 0xA700, sops[1]: 0xC000}
    item = partial.json()[FAILED_SOP_SEQUENCE]["Value"][0]
    assert item[FAILURE_REASON] == {"vr": "US", "Value": [0xA700]}
    assert item[REFERENCED_SOP_CLASS_UID]["vr"] == "UI"
    assert referenced(partial.json()) == [sops[2]]
    assert set(pacs.stored) == {sops[2]}

    pacs.clear()
    quirk = stow(pacs_client, url, files)
    assert quirk.status_code == 200
    assert referenced(quirk.json()) == sops[:2]
    assert failures(quirk.json()) == {}
    assert set(pacs.stored) == set(sops[:2])

    # The queue is empty again: the default is ok().
    assert stow(pacs_client, url, files).status_code == 200
    assert [r.status for r in pacs.stow_requests()] == [200, 200]  # cleared before the third


def test_fault_pacs_checks_credentials_without_consuming_the_script(pacs: FaultPacs) -> None:
    _, _, files = study(1)
    pacs.script_stow(status(500))
    url = f"{pacs.dicomweb_url}/studies"
    with httpx.Client(timeout=5) as anonymous:
        assert stow(anonymous, url, files).status_code == 401
    with httpx.Client(auth=("relay", "wrong"), timeout=5) as wrong:
        assert stow(wrong, url, files).status_code == 401
    assert pacs.pending_stow == 1
    with httpx.Client(auth=("relay", "secret"), timeout=5) as right:
        assert stow(right, url, files).status_code == 500
    assert [r.authorized for r in pacs.requests] == [False, False, True]
    with FaultPacs(bearer="t0ken") as bearer, httpx.Client(timeout=5) as c:
        body, content_type = encode_multipart(files)
        headers = {"Content-Type": content_type, "Authorization": "Bearer t0ken"}
        assert c.post(f"{bearer.dicomweb_url}/studies", content=body, headers=headers).is_success
        headers["Authorization"] = "Bearer other"
        assert (
            c.post(f"{bearer.dicomweb_url}/studies", content=body, headers=headers).status_code
            == 401
        )


def test_fault_pacs_refuses_what_is_not_application_dicom(
    pacs: FaultPacs, pacs_client: httpx.Client
) -> None:
    _, _, files = study(1)
    body, content_type = encode_multipart(files, part_type="application/octet-stream")
    response = pacs_client.post(
        f"{pacs.dicomweb_url}/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 415
    assert pacs.stored == {}


def test_fault_pacs_slow_hang_and_drop(pacs: FaultPacs, pacs_client: httpx.Client) -> None:
    _, sops, files = study(1)
    url = f"{pacs.dicomweb_url}/studies"
    pacs.script_stow(
        slow(0.4),
        slow(0.6, trickle=True),
        hang(),
        drop(),
        drop(read_body=False, reset=True),
    )
    started = time.monotonic()
    assert stow(pacs_client, url, files).status_code == 200
    assert time.monotonic() - started >= 0.4

    # Trickled: the headers come at once, then a piece of the body every 0.03 s (each read
    # well within the read timeout) until 0.6 s.
    body, content_type = encode_multipart(files)
    with pacs_client.stream(
        "POST",
        url,
        content=body,
        headers={"Content-Type": content_type},
        timeout=httpx.Timeout(5, read=0.3),
    ) as response:
        assert response.status_code == 200
        headers_at = time.monotonic()
        pieces = list(response.iter_raw())
    assert len(pieces) > 1
    assert time.monotonic() - headers_at >= 0.5

    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.Client(auth=("relay", "secret"), timeout=httpx.Timeout(5, read=0.3)) as impatient,
    ):
        stow(impatient, url, files)
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.Client(auth=("relay", "secret"), timeout=5) as fresh,
    ):
        stow(fresh, url, files)
    with (
        pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)),
        httpx.Client(auth=("relay", "secret"), timeout=5) as fresh,
    ):
        stow(fresh, url, files)

    records = pacs.stow_requests()
    assert [r.behaviour for r in records] == ["slow(0.4)", "slow(0.6)", "hang", "drop", "drop"]
    assert [r.status for r in records] == [200, 200, None, None, None]
    assert records[2].sop_instance_uids == sops  # the hung request was read
    assert records[0].answered_at is not None
    assert records[0].answered_at - records[0].at >= 0.4


def test_fault_pacs_scripted_qido(pacs: FaultPacs, pacs_client: httpx.Client) -> None:
    study_uid, sops, files = study(3)
    assert stow(pacs_client, f"{pacs.dicomweb_url}/studies", files).status_code == 200
    pacs.script_qido(status(500), ok(hidden=[sops[1]]))
    url = f"{pacs.dicomweb_url}/studies/{study_uid}/instances"
    assert pacs_client.get(url).status_code == 500
    listed = [item[SOP_INSTANCE_UID]["Value"][0] for item in pacs_client.get(url).json()]
    assert listed == [sops[0], sops[2]]
    assert len(pacs_client.get(url).json()) == 3
    studies = pacs_client.get(
        f"{pacs.dicomweb_url}/studies", params={"StudyInstanceUID": study_uid}
    )
    assert len(studies.json()) == 1
    assert [r.status for r in pacs.qido_requests()] == [500, 200, 200, 200]


async def test_fault_pacs_serves_async_clients_with_request_times(pacs: FaultPacs) -> None:
    _, _, files = study(1)
    pacs.script_stow(status(503), status(503))
    body, content_type = encode_multipart(files)
    async with httpx.AsyncClient(auth=("relay", "secret"), timeout=5) as c:
        for n in range(3):
            await c.post(
                f"{pacs.dicomweb_url}/studies",
                content=body,
                headers={"Content-Type": content_type},
            )
            await pacs.async_wait_for(n + 1, timeout=2)
    requests = pacs.stow_requests()
    assert [r.status for r in requests] == [503, 503, 200]
    assert requests[0].at <= requests[1].at <= requests[2].at
    assert requests[2].headers["content-type"] == content_type


def test_fault_pacs_stops_and_starts_again_on_the_same_port(
    pacs: FaultPacs, pacs_client: httpx.Client
) -> None:
    study_uid, sops, files = study(1)
    url = f"{pacs.dicomweb_url}/studies"
    assert stow(pacs_client, url, files).status_code == 200
    port = pacs.port
    pacs.stop()
    with pytest.raises(httpx.ConnectError):
        stow(pacs_client, url, files)
    pacs.start()
    assert pacs.port == port
    assert stow(pacs_client, url, files).status_code == 200
    assert pacs.sop_instance_uids(study_uid) == set(sops)
    assert len(pacs.stow_requests()) == 2
