"""Per-file verdicts and content-true receipts: an upload may be accepted without its refused
files (`refused_count`) unless it asked for all or nothing; identical copies within an upload
are sent once (`duplicate_of`); the MD5 of what the PACS was sent (`forward_md5`); and the
registry of what each target holds as delivered by the gateway (`delivered_instance`).

Uploads from before this revision are strict as they were (their verdicts were all or nothing)
and their refused count stays unknown (NULL). The registry starts empty: instances delivered
before it are verified by their UIDs as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Columns are added and dropped in place (ALTER TABLE, on SQLite too): rebuilding `upload` or
# `upload_file` in a batch would break the foreign keys that point at them.
_COLUMNS = (
    ("upload", "all_or_nothing"),
    ("upload", "refused_count"),
    ("upload_file", "duplicate_of"),
    ("upload_file", "forward_md5"),
)


def upgrade() -> None:
    op.add_column(
        "upload",
        sa.Column("all_or_nothing", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("upload", sa.Column("refused_count", sa.Integer(), nullable=True))
    op.add_column("upload_file", sa.Column("duplicate_of", sa.Integer(), nullable=True))
    op.add_column("upload_file", sa.Column("forward_md5", sa.String(length=32), nullable=True))
    op.create_table(
        "delivered_instance",
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("md5", sa.String(length=32), nullable=True),
        sa.Column("upload_id", sa.Uuid(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("target", "sop_instance_uid", name=op.f("pk_delivered_instance")),
    )


def downgrade() -> None:
    op.drop_table("delivered_instance")
    for table, column in reversed(_COLUMNS):
        op.execute(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
