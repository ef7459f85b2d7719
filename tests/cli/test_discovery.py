"""Finding instances in folders, CD exports, ZIPs and mixes; grouping into studies."""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from relaypacs.client import (
    ArchiveLimits,
    Discovery,
    InputError,
    SkipReason,
    StudyPlan,
    UnsafeArchiveError,
    discover,
    group_studies,
    hash_files,
    study_hash,
)
from relaypacs.client.dicomheader import read_instance, why_not_an_instance
from relaypacs.client.discovery import display_name
from relaypacs.client.manifest import file_modalities, hash_jobs, iso_date
from relaypacs.devtools.synth import make_instance, write_study
from relaypacs.devtools.unusual import make_dicomdir_bytes, make_missing_uid, new_uids


def _zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


async def _plans(paths: list[Path], workspace: Path) -> tuple[Discovery, list[StudyPlan]]:
    found = await discover(paths, workspace=workspace)
    hashes = await hash_files(hash_jobs(found.files))
    return found, group_studies(found.files, hashes)


class TestDiscover:
    async def test_each_instance_is_announced_as_soon_as_it_is_found(self, tmp_path: Path) -> None:
        write_study(tmp_path / "in", instances=3, rows=32, columns=32, with_dicomdir=True)
        write_study(tmp_path / "z", instances=2, rows=32, columns=32)
        _zip_folder(tmp_path / "z", tmp_path / "in" / "more.zip")
        (tmp_path / "in" / "notes.txt").write_text("hello")
        announced: list[object] = []
        found = await discover(
            [tmp_path / "in"], workspace=tmp_path / "ws", on_file=announced.append
        )
        assert len(found.files) == 5  # 3 files and 2 archive members
        assert sorted(announced, key=str) == sorted(found.files, key=str)

    async def test_excluded_folders_are_not_searched(self, tmp_path: Path) -> None:
        write_study(tmp_path / "in", instances=2, rows=32, columns=32)
        state = tmp_path / "in" / ".state"
        write_study(state / "extracted", instances=1, rows=32, columns=32)
        (state / "hashes.sqlite3").write_bytes(b"SQLite format 3\x00")
        found = await discover([tmp_path / "in"], workspace=tmp_path / "ws", exclude=[state])
        assert len(found.files) == 2
        assert found.skipped == []
        assert all(".state" not in f.name for f in found.files)
        everything = await discover([tmp_path / "in"], workspace=tmp_path / "ws")
        assert len(everything.files) == 3

    async def test_folder_with_non_dicom_files(self, tmp_path: Path) -> None:
        study = write_study(tmp_path / "in", instances=3, rows=32, columns=32)
        (tmp_path / "in" / "notes.txt").write_text("hello")
        (tmp_path / "in" / "empty").write_bytes(b"")
        found = await discover([tmp_path / "in"], workspace=tmp_path / "ws")
        assert sorted(str(f.path) for f in found.files) == sorted(str(p) for p in study.paths)
        assert found.skipped_count(SkipReason.NOT_DICOM) == 2
        assert {f.header.sop_instance_uid for f in found.files} == set(study.sop_uids)

    async def test_cd_export_with_dicomdir(self, tmp_path: Path) -> None:
        cd = tmp_path / "cd"
        study = write_study(cd, instances=4, rows=32, columns=32, with_dicomdir=True)
        found = await discover([cd], workspace=tmp_path / "ws")
        assert len(found.files) == 4
        assert [s.reason for s in found.skipped] == [SkipReason.DICOMDIR]
        names = {f.name for f in found.files}
        assert names == {Path(p).relative_to(cd).as_posix() for p in study.paths}
        assert all("DICOMDIR" not in name for name in names)

    async def test_zip_archive(self, tmp_path: Path) -> None:
        study = write_study(tmp_path / "s", instances=3, rows=32, columns=32, with_dicomdir=True)
        archive = _zip_folder(tmp_path / "s", tmp_path / "study.zip")
        found = await discover([archive], workspace=tmp_path / "ws")
        assert len(found.files) == 3
        assert found.archives == ["study.zip"]
        assert found.skipped_count(SkipReason.DICOMDIR) == 1
        for f in found.files:
            assert f.from_archive
            assert f.path.is_relative_to(tmp_path / "ws")
            assert f.cache_key == f"{archive.resolve()}!{f.name}"
        assert {f.name for f in found.files} == {
            Path(p).relative_to(tmp_path / "s").as_posix() for p in study.paths
        }

    async def test_mixed_inputs_and_the_same_file_twice(self, tmp_path: Path) -> None:
        a = write_study(tmp_path / "a", instances=2, rows=32, columns=32)
        b = write_study(tmp_path / "b", instances=2, rows=32, columns=32)
        archive = _zip_folder(tmp_path / "b", tmp_path / "b.zip")
        shutil.rmtree(tmp_path / "b")
        single = Path(a.paths[0])
        found, plans = await _plans([tmp_path / "a", single, archive], tmp_path / "ws")
        assert len(found.files) == 4  # the single file was already in the folder
        assert {p.study_instance_uid for p in plans} == {a.study_uid, b.study_uid}

    async def test_zip_slip_is_refused(self, tmp_path: Path) -> None:
        write_study(tmp_path / "s", instances=1, rows=32, columns=32)
        archive = tmp_path / "evil.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("../../outside", b"x")
        with pytest.raises(UnsafeArchiveError, match="zip-slip"):
            await discover([tmp_path / "s", archive], workspace=tmp_path / "ws")
        assert not (tmp_path / "outside").exists()

    async def test_zip_bomb_is_refused(self, tmp_path: Path) -> None:
        archive = tmp_path / "bomb.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for i in range(4):
                zf.writestr(f"layer{i}", bytes(8 << 20))
        with pytest.raises(UnsafeArchiveError, match="zip bomb"):
            await discover(
                [archive],
                workspace=tmp_path / "ws",
                archive_limits=ArchiveLimits(max_total_bytes=16 << 20),
            )

    async def test_missing_path(self, tmp_path: Path) -> None:
        with pytest.raises(InputError, match="no such file"):
            await discover([tmp_path / "nope"], workspace=tmp_path / "ws")


class TestGroupStudies:
    async def test_one_plan_per_study_with_manifest_and_hash(self, tmp_path: Path) -> None:
        a = write_study(tmp_path / "in" / "a", instances=3, rows=32, columns=32)
        b = write_study(tmp_path / "in" / "b", instances=2, rows=32, columns=32)
        _, plans = await _plans([tmp_path / "in"], tmp_path / "ws")
        by_uid = {p.study_instance_uid: p for p in plans}
        assert set(by_uid) == {a.study_uid, b.study_uid}
        plan = by_uid[a.study_uid]
        manifest = plan.manifest()
        assert manifest["study_instance_uid"] == a.study_uid
        expected = {
            (
                Path(p).relative_to(tmp_path / "in").as_posix(),
                Path(p).stat().st_size,
                hashlib.sha256(Path(p).read_bytes()).hexdigest(),
            )
            for p in a.paths
        }
        assert {(f["name"], f["size"], f["sha256"]) for f in manifest["files"]} == expected
        digests = sorted(sha for _, _, sha in expected)
        assert plan.study_hash == hashlib.sha256("\n".join(digests).encode()).hexdigest()
        assert plan.study_hash == study_hash(digests)
        assert plan.total_bytes == a.total_bytes
        assert "patient_name" not in manifest or isinstance(manifest["metadata"], dict)

    async def test_identical_copy_is_sent_once(self, tmp_path: Path) -> None:
        study = write_study(tmp_path / "in", instances=2, rows=32, columns=32)
        shutil.copy(study.paths[0], tmp_path / "in" / "copy-of-first")
        _, [plan] = await _plans([tmp_path / "in"], tmp_path / "ws")
        assert len(plan.files) == 2
        assert len(plan.duplicates) == 1

    async def test_same_sop_with_different_bytes_goes_to_the_gateway_to_judge(
        self, tmp_path: Path
    ) -> None:
        # Which copy is right (a truncated one is refused for what it is; two valid ones that
        # differ are both refused) is the gateway's verdict, after it validated each.
        study = write_study(tmp_path / "in", instances=2, rows=32, columns=32)
        data = bytearray(Path(study.paths[0]).read_bytes())
        data[-1] ^= 0xFF  # a pixel changes, the UIDs do not
        (tmp_path / "in" / "altered").write_bytes(bytes(data))
        _, [plan] = await _plans([tmp_path / "in"], tmp_path / "ws")
        names = [Path(p).relative_to(tmp_path / "in").as_posix() for p in study.paths]
        assert sorted(f.name for f in plan.files) == sorted([*names, "altered"])
        assert plan.duplicates == []


class TestDisplayName:
    def test_control_characters_and_length(self) -> None:
        assert display_name("a\x00b\nc") == "a?b?c"
        long = "d/" * 200 + "IM0001"
        name = display_name(long)
        assert len(name) == 255
        assert name.endswith("IM0001")


class TestWhySkipped:
    """Every file that is not sent says why, so that a real DICOM file without a
    StudyInstanceUID is not taken for a text file, nor a broken one for either."""

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"", SkipReason.NOT_DICOM),
            (b"%PDF-1.7\n" * 50, SkipReason.NOT_DICOM),
            (make_missing_uid("StudyInstanceUID"), SkipReason.NO_STUDY_UID),
            (bytes(128) + b"DICM", SkipReason.DAMAGED),  # no data set
            (make_instance(**new_uids(), rows=16, columns=16)[:300], SkipReason.DAMAGED),
            (make_dicomdir_bytes(), SkipReason.DICOMDIR),
            (make_dicomdir_bytes()[:-10], SkipReason.DICOMDIR),  # broken records
        ],
        ids=["empty", "pdf", "no-study-uid", "meta-only", "cut", "dicomdir", "cut-dicomdir"],
    )
    def test_reason(self, tmp_path: Path, data: bytes, reason: SkipReason) -> None:
        path = tmp_path / "file"
        path.write_bytes(data)
        assert read_instance(path) is reason

    def test_real_dicom_files_without_study_uid(self) -> None:
        for name in ("JPEGLSNearLossless_08.dcm", "UN_sequence.dcm", "meta_missing_tsyntax.dcm"):
            path = get_testdata_file(name)
            assert path is not None
            assert read_instance(Path(path)) is SkipReason.NO_STUDY_UID, name

    def test_a_file_gone_before_it_is_read_is_unreadable(self, tmp_path: Path) -> None:
        assert why_not_an_instance(tmp_path / "gone.dcm") is SkipReason.UNREADABLE

    async def test_fifos_dangling_links_and_folder_links(self, tmp_path: Path) -> None:
        study = write_study(tmp_path / "in", instances=1, rows=16, columns=16)
        os.mkfifo(tmp_path / "in" / "fifo.dcm")  # never opened: reading it would block
        (tmp_path / "in" / "dangling.dcm").symlink_to(tmp_path / "nowhere")
        write_study(tmp_path / "other", instances=1, rows=16, columns=16)
        (tmp_path / "in" / "linked").symlink_to(tmp_path / "other", target_is_directory=True)
        found = await discover([tmp_path / "in"], workspace=tmp_path / "ws")
        assert [f.header.study_instance_uid for f in found.files] == [study.study_uid]
        assert found.skipped_names() == {
            SkipReason.UNREADABLE: ["dangling.dcm", "fifo.dcm"],
            SkipReason.FOLDER_LINK: ["linked"],
        }

    def test_names_are_printable(self) -> None:
        assert display_name("caf\udce9/\x1b[2J\u202eevil\x9b.dcm") == "caf?/?[2J?evil?.dcm"


class TestModalityAndDate:
    """Read the same way for every file, whichever reader decoded it."""

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            ("20040119", "2004-01-19"),
            ("1997.04.24", "1997-04-24"),  # ACR-NEMA
            ("2004-01-19", "2004-01-19"),
            (" 20040119 ", "2004-01-19"),
            ("20241301", "20241301"),  # not a date: as given
            ("00000000", "00000000"),
            ("UNKNOWN", "UNKNOWN"),
            ("\u0662\u0660\u0660\u0664\u0660\u0661\u0661\u0669", "٢٠٠٤٠١١٩"),  # not ASCII digits
            ("2004\x1b[2J", "2004?[2J"),
            ("", ""),
            (None, ""),
        ],
    )
    def test_dates(self, value: str | None, shown: str) -> None:
        assert iso_date(value) == shown

    @pytest.mark.parametrize(
        ("value", "modalities"),
        [
            ("CT", ["CT"]),
            ("ct ", ["CT"]),
            ("CT\\PT", ["CT", "PT"]),  # several values, as the fast reader gives them
            ("['CT', 'PT']", ["CT", "PT"]),  # as pydicom gives them
            ("C\x1bT", ["C?T"]),
            ("", []),
            (None, []),
        ],
    )
    def test_modalities(self, value: str | None, modalities: list[str]) -> None:
        assert file_modalities(value) == modalities
