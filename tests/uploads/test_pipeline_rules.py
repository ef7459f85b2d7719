"""The rules of a study when some instances went to the PACS while it was uploading (pipelined
relay): the copy sent stays the instance; later copies are judged against it."""

from __future__ import annotations

from relaypacs.dicom import DicomSummary
from relaypacs.uploads.verify import FileToVerify, FileVerdict, judge_study

STUDY = "2.25.1"


def verdict(index: int, sop: str) -> FileVerdict:
    summary = DicomSummary(
        kind="instance",
        study_instance_uid=STUDY,
        series_instance_uid="2.25.2",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        preamble="zero",
    )
    return FileVerdict(index, summary, None)


def files(*sha256: str) -> list[FileToVerify]:
    return [FileToVerify(i, sha, 1, f"IM{i}") for i, sha in enumerate(sha256)]


def test_without_pipelining_differing_copies_are_all_refused() -> None:
    judged = judge_study(STUDY, files("a", "b"), [verdict(0, "9.1"), verdict(1, "9.1")])
    assert [v.error.code if v.error else None for v in judged] == [
        "duplicate_sop_instance",
        "duplicate_sop_instance",
    ]


def test_a_later_copy_with_other_bytes_is_refused_and_the_sent_one_stays() -> None:
    judged = judge_study(
        STUDY, files("a", "b", "c"), [verdict(0, "9.0"), verdict(1, "9.1"), verdict(2, "9.1")], {2}
    )
    assert judged[2].error is None
    assert judged[2].to_forward
    assert judged[1].error is not None
    assert judged[1].error.code == "duplicate_sop_instance"
    assert "IM2 (file 2)" in judged[1].error.message
    assert "sent to the PACS while the study was uploading" in judged[1].error.message
    assert judged[0].to_forward


def test_identical_copies_are_duplicates_of_the_sent_one_even_if_it_comes_later() -> None:
    # Without pipelining the first file would be the one sent; file 1 went already.
    judged = judge_study(STUDY, files("a", "a"), [verdict(0, "9.1"), verdict(1, "9.1")], {1})
    assert judged[1].to_forward
    assert judged[0].error is None
    assert judged[0].duplicate_of == 1
    assert not judged[0].to_forward
