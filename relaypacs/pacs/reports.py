"""What the report sync and the write-back ask a PACS beyond forwarding: the instances of a
study with their SOP classes (QIDO-RS), one instance's bytes (WADO-RS), the study's patient and
study attributes (QIDO-RS). Raises httpx.HTTPError when the PACS cannot answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from relaypacs.pacs.dicomweb import SOP_INSTANCE_UID, DicomWebClient

SOP_CLASS_UID = "00080016"
SERIES_INSTANCE_UID = "0020000E"
STUDY_INSTANCE_UID = "0020000D"
MAX_REPORT_BYTES = 64 << 20  # a report instance larger than this is not read

_STUDY_FIELDS = ("00100030", "00100040", "00100021", "00081030", "00200010")


@dataclass(frozen=True)
class ListedInstance:
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


def _first(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values and isinstance(values[0], str) else None


class TooLarge(Exception):
    """The instance is larger than MAX_REPORT_BYTES."""


class ReportClient(DicomWebClient):
    async def study_instances(self, study_uid: str, *, page: int = 500) -> list[ListedInstance]:
        """Every instance of the study with its series and SOP class (paged)."""
        found: list[ListedInstance] = []
        offset = 0
        while True:
            response = await self._client.get(
                f"/studies/{study_uid}/instances",
                params={
                    "limit": page,
                    "offset": offset,
                    "includefield": f"{SOP_CLASS_UID},{SERIES_INSTANCE_UID}",
                },
                headers={"Accept": "application/dicom+json"},
            )
            if response.status_code in (204, 404):
                return found
            response.raise_for_status()
            items = response.json() if response.content else []
            if not isinstance(items, list) or not items:
                return found
            for item in items:
                if not isinstance(item, dict):
                    continue
                series = _first(item, SERIES_INSTANCE_UID)
                sop = _first(item, SOP_INSTANCE_UID)
                sop_class = _first(item, SOP_CLASS_UID)
                if series and sop and sop_class:
                    found.append(ListedInstance(series, sop, sop_class))
            if len(items) < page:
                return found
            offset += len(items)

    async def retrieve_instance(
        self, study_uid: str, series_uid: str, sop_uid: str
    ) -> bytes | None:
        """WADO-RS: the instance as the PACS holds it (original transfer syntax); None when it
        does not have it. Raises TooLarge past MAX_REPORT_BYTES."""
        url = f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        async with self._client.stream("GET", url, headers={"Accept": accept}) as response:
            if response.status_code in (204, 404):
                return None
            response.raise_for_status()
            body = bytearray()
            async for block in response.aiter_bytes():
                body += block
                if len(body) > MAX_REPORT_BYTES + 4096:
                    raise TooLarge()
            content_type = response.headers.get("content-type") or ""
        _, _, rest = content_type.partition("boundary=")
        boundary = rest.split(";")[0].strip().strip('"').encode()
        if not boundary:
            raise httpx.DecodingError("a WADO-RS answer without a multipart boundary")
        start = body.find(b"--" + boundary)
        head_end = body.find(b"\r\n\r\n", start) if start >= 0 else -1
        stop = body.find(b"\r\n--" + boundary, head_end) if head_end >= 0 else -1
        if stop < 0:
            raise httpx.DecodingError("a WADO-RS answer whose first part does not end")
        return bytes(body[head_end + 4 : stop])

    async def study(self, study_uid: str) -> dict[str, Any] | None:
        """The study's attributes as the PACS lists them (DICOM JSON), None if it has none."""
        response = await self._client.get(
            "/studies",
            params={"StudyInstanceUID": study_uid, "includefield": ",".join(_STUDY_FIELDS)},
            headers={"Accept": "application/dicom+json"},
        )
        if response.status_code in (204, 404):
            return None
        response.raise_for_status()
        items = response.json() if response.content else []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and _first(item, STUDY_INSTANCE_UID) == study_uid:
                return item
        return None
