"""The report PDF: made for a signed report, stored in object storage once per version, with
names in any script the font covers, downloadable by whoever may read the report only."""

from __future__ import annotations

import io
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from pypdf import PdfReader

from relaypacs.auth.models import Role
from relaypacs.state import app_state
from tests.api.conftest import Account, MakeAccount
from tests.api.uploading import error_code
from tests.reports.reporting import API, assign, deliver, sign

NAME = "Ковалёва^Αθηνά^Zoë"  # Cyrillic, Greek, accented Latin: one DICOM person name
# A Japanese patient's name as DICOM writes it: alphabetic, ideographic and phonetic groups.
CJK_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def _text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


@dataclass(frozen=True)
class Assigned:
    """A delivered study's report, assigned: who uploaded it, reads it, administers."""

    uploader: Account
    radiologist: Account
    admin: Account
    upload_id: str
    report_id: str


async def assigned_report(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    metadata: dict[str, str] | None = None,
) -> Assigned:
    uploader = await make_account(Role.CLINICIAN)
    radiologist = await make_account(Role.RADIOLOGIST)
    admin = await make_account(Role.ADMIN)
    upload_id, report_id = await deliver(app, client, uploader, metadata=metadata)
    await assign(client, admin, report_id, radiologist)
    return Assigned(uploader, radiologist, admin, upload_id, report_id)


class TestReportPdf:
    async def test_a_signed_report_as_pdf_with_its_history(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        report = await assigned_report(
            app,
            client,
            make_account,
            {"patient_name": NAME, "patient_id": "P-42", "modality": "MR"},
        )
        uploader, radiologist, admin = report.uploader, report.radiologist, report.admin
        upload_id, report_id = report.upload_id, report.report_id
        before = await client.get(f"{API}/reports/{report_id}/pdf", headers=uploader.headers)
        assert before.status_code == 409
        assert error_code(before) == "report_not_signed"
        await sign(client, radiologist, report_id, findings="Ødème léger.", impression="Ок.")

        first = await client.get(f"{API}/reports/{report_id}/pdf", headers=uploader.headers)
        assert first.status_code == 200, first.text
        assert first.headers["content-type"] == "application/pdf"
        assert f"report-{report_id}-v1.pdf" in first.headers["content-disposition"]
        text = _text(first.content)
        for expected in (
            "Ковалёва Αθηνά Zoë",
            "P-42",
            "Ødème léger.",
            "Ок.",
            radiologist.username,
            upload_id,
            "Version 1",
        ):
            assert expected in text, expected
        storage = app_state(app).storage
        assert await storage.exists(f"reports/{report_id}/v1.pdf")
        again = await client.get(f"{API}/reports/{report_id}/pdf", headers=radiologist.headers)
        assert again.content == first.content  # the stored one

        amended = await client.post(
            f"{API}/reports/{report_id}/amend",
            json={"findings": "Ødème.", "impression": "Suivi.", "reason": "Précision"},
            headers=radiologist.headers,
        )
        assert amended.status_code == 200
        second = await client.get(f"{API}/reports/{report_id}/pdf", headers=admin.headers)
        text = _text(second.content)
        assert "Version 2 (amended)" in text
        assert "Amendment history" in text
        assert "Précision" in text
        assert "Suivi." in text
        assert await storage.exists(f"reports/{report_id}/v2.pdf")

    async def test_chinese_japanese_and_korean_names_are_drawn_with_the_fallback_font(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        report = await assigned_report(
            app,
            client,
            make_account,
            {"patient_name": CJK_NAME, "patient_id": "P-43", "modality": "CT"},
        )
        await sign(
            client,
            report.radiologist,
            report.report_id,
            findings="肺野に異常なし。",
            impression="정상.",
        )
        answer = await client.get(
            f"{API}/reports/{report.report_id}/pdf", headers=report.uploader.headers
        )
        assert answer.status_code == 200, answer.text
        text = _text(answer.content)
        for expected in ("山田", "太郎", "やまだ", "たろう", "肺野に異常なし。", "정상."):
            assert expected in text, expected
        reader = PdfReader(io.BytesIO(answer.content))
        fonts = {
            str(font["/BaseFont"])
            for page in reader.pages
            for font in page["/Resources"]["/Font"].values()  # type: ignore[index]
        }
        assert any("DroidSansFallback" in name for name in fonts), fonts
        assert any("NanumGothic" in name for name in fonts), fonts

    async def test_another_users_report_pdf_is_a_404(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        report = await assigned_report(app, client, make_account)
        await sign(client, report.radiologist, report.report_id)
        report_id = report.report_id
        for other in (await make_account(Role.CLINICIAN), await make_account(Role.RADIOLOGIST)):
            response = await client.get(f"{API}/reports/{report_id}/pdf", headers=other.headers)
            assert response.status_code == 404
            assert error_code(response) == "report_not_found"
