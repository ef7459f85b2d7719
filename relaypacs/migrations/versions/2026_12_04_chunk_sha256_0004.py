"""Chunks are named and compared by their SHA-256 (Content-Digest); Content-MD5 is optional.

Rows written before this revision keep their MD5 and no SHA-256: the gateway still names and
compares those by MD5 (see relaypacs.uploads.repository.chunk_rows), so an upload in progress
across the upgrade resumes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("upload_chunk", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sha256", sa.String(length=64), nullable=True))
        batch_op.alter_column("md5", existing_type=sa.String(length=32), nullable=True)


def downgrade() -> None:
    # The old schema names every chunk's object by its MD5; chunks stored since this revision
    # are named by their SHA-256 (and may have no MD5). Their rows are dropped: a resuming
    # client sends them again (their objects go with their upload's prefix).
    op.execute("DELETE FROM upload_chunk WHERE sha256 IS NOT NULL")
    with op.batch_alter_table("upload_chunk", schema=None) as batch_op:
        batch_op.alter_column("md5", existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_column("sha256")
