"""The web app's API types are generated from the gateway's OpenAPI document, never by hand:
this fails when the committed ones are not those of the API as it is now."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from relaypacs.cli.main import openapi_text

API_DIR = Path(__file__).resolve().parents[2] / "web" / "src" / "lib" / "api"
FIX = "run `scripts/web.sh api-types` and commit web/src/lib/api"


class TestGeneratedApiTypes:
    def test_the_committed_openapi_document_is_the_apis(self) -> None:
        committed = (API_DIR / "openapi.json").read_text(encoding="utf-8")
        assert committed == openapi_text(), f"web/src/lib/api/openapi.json is stale: {FIX}"

    def test_the_types_were_generated_from_that_document(self) -> None:
        document = (API_DIR / "openapi.json").read_bytes()
        first_line = (API_DIR / "schema.d.ts").read_text(encoding="utf-8").split("\n", 1)[0]
        found = re.search(r"sha256 ([0-9a-f]{64})", first_line)
        assert found is not None, f"schema.d.ts has no generation header: {FIX}"
        assert found.group(1) == hashlib.sha256(document).hexdigest(), (
            f"web/src/lib/api/schema.d.ts was not generated from openapi.json: {FIX}"
        )

    def test_the_types_name_the_apis_shapes(self) -> None:
        types = (API_DIR / "schema.d.ts").read_text(encoding="utf-8")
        for shape in ("UploadRead", "TokenResponse", "ChunkStored"):
            assert f"{shape}: {{" in types
