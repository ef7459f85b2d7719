"""Backup and restore as docs/operations.md says: a pg_dump of the database and a copy of the
stored objects (after the dump), restored into a new database and a new data directory; a new
gateway then serves the same uploads, and an upload that was half sent completes."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

from tests.api.conftest import PASSWORD
from tests.api.uploading import chunks_of, complete, init, make_study, put_chunk
from tests.conftest import POSTGRES_ADMIN_URL, _psql
from tests.ops.conftest import account, client_of, ops_settings, started

API = "/api/v1"


def _database() -> tuple[str, str]:
    """A new database: its name and its SQLAlchemy URL (as the machine's superuser)."""
    name = f"relaypacs_backup_{secrets.token_hex(4)}"
    _psql(f'CREATE DATABASE "{name}"')
    host = POSTGRES_ADMIN_URL.removeprefix("postgresql://")
    return name, f"postgresql+asyncpg://{host}/{name}"


class TestBackupAndRestore:
    async def test_a_restored_gateway_serves_the_same_uploads(self, tmp_path: Path) -> None:
        source_name, source_url = _database()
        target_name, target_url = _database()
        try:
            done_study, half_study = make_study(2, rows=400, columns=400), make_study(2)
            source = ops_settings(tmp_path / "source", database_url=source_url)
            async with started(source) as app, client_of(app) as client:
                clinician = await account(app, client)
                created = await init(client, clinician, done_study)
                done_id = created.json()["id"]
                for index, content in enumerate(done_study.files):
                    for chunk_index, data in enumerate(chunks_of(content)):
                        response = await put_chunk(
                            client, clinician, done_id, index, chunk_index, data
                        )
                        assert response.status_code == 200
                assert (await complete(client, clinician, done_id)).status_code == 202
                half_id = (await init(client, clinician, half_study)).json()["id"]
                first = chunks_of(half_study.files[0])
                for chunk_index, data in enumerate(first):
                    assert (
                        await put_chunk(client, clinician, half_id, 0, chunk_index, data)
                    ).status_code == 200
                before = {
                    upload_id: (
                        await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
                    ).json()
                    for upload_id in (done_id, half_id)
                }

                # the backup, while the gateway runs: the database, then the objects
                dump = tmp_path / "relaypacs.dump"
                subprocess.run(
                    [
                        "pg_dump",
                        "--format=custom",
                        f"--file={dump}",
                        f"{POSTGRES_ADMIN_URL}/{source_name}",
                    ],
                    check=True,
                    capture_output=True,
                )
                objects_copy = tmp_path / "objects-backup"
                shutil.copytree(source.storage_root, objects_copy)

            # the restore: a new database, a new data directory, the same keys
            subprocess.run(
                [
                    "pg_restore",
                    "--no-owner",
                    f"--dbname={POSTGRES_ADMIN_URL}/{target_name}",
                    str(dump),
                ],
                check=True,
                capture_output=True,
            )
            target = ops_settings(tmp_path / "target", database_url=target_url)
            shutil.copytree(objects_copy, target.storage_root)
            async with started(target) as app, client_of(app) as client:
                login = await client.post(
                    f"{API}/auth/login",
                    json={"username": clinician.username, "password": PASSWORD},
                )
                assert login.status_code == 200, login.text
                headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
                for upload_id, seen in before.items():
                    now = await client.get(f"{API}/uploads/{upload_id}", headers=headers)
                    assert now.status_code == 200
                    body = now.json()
                    for key in ("status", "study_instance_uid", "received_bytes", "files"):
                        assert body[key] == seen[key], key
                # the half-sent upload goes on where it stopped, on the restored gateway
                sent, unsent = before[half_id]["files"]
                assert sent["missing_chunks"] == []
                assert unsent["missing_chunks"]
                for chunk_index, data in enumerate(chunks_of(half_study.files[1])):
                    response = await client.put(
                        f"{API}/uploads/{half_id}/files/1/chunks/{chunk_index}",
                        content=data,
                        headers={**headers, "Content-Digest": _digest(data)},
                    )
                    assert response.status_code == 200, response.text
                finished = await client.post(f"{API}/uploads/{half_id}/complete", headers=headers)
                assert finished.status_code == 202, finished.text
                assert finished.json()["status"] == "validated"
                # complete read file 0's chunks from the restored objects; and a new account
                # works on the restored gateway (its sequences restored too)
                await account(app, client)
        finally:
            for name in (source_name, target_name):
                _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _digest(data: bytes) -> str:
    from tests.api.uploading import content_digest

    return content_digest(data)
