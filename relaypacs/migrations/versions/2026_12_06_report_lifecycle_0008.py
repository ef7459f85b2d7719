"""The report lifecycle: a report may be amended (status `amended`); what it keeps of its
study for the worklist (uploader, StudyInstanceUID, modality, study date, the patient and study
details, search text), when it was assigned and how many versions were signed; every signed
version (`report_version`); which modalities each radiologist reads (`radiologist_modality`).

The status's CHECK constraint is replaced: on SQLite `report` is rebuilt in a batch (no table
points at it before this revision).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _status(*values: str) -> sa.Enum:
    return sa.Enum(
        *values, name="reportstatus", native_enum=False, create_constraint=True, length=16
    )


_OLD = _status("pending", "assigned", "ready")
_NEW = _status("pending", "assigned", "ready", "amended")


def upgrade() -> None:
    with op.batch_alter_table("report", recreate="always") as batch:
        batch.alter_column("status", existing_type=_OLD, type_=_NEW, existing_nullable=False)
        batch.add_column(sa.Column("uploader_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("study_instance_uid", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("modality", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("study_date", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("metadata", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("search_text", sa.Text(), nullable=True))
        batch.add_column(sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
        batch.create_foreign_key(
            batch.f("fk_report_uploader_id_user"), "user", ["uploader_id"], ["id"]
        )
        batch.create_index(batch.f("ix_report_modality"), ["modality"])
        batch.create_index("ix_report_radiologist_id_created_at", ["radiologist_id", "created_at"])
        batch.create_index("ix_report_uploader_id_created_at", ["uploader_id", "created_at"])
    op.create_table(
        "report_version",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("report_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("impression", sa.Text(), nullable=False),
        sa.Column("signed_by_id", sa.Uuid(), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["report.id"],
            name=op.f("fk_report_version_report_id_report"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["signed_by_id"], ["user.id"], name=op.f("fk_report_version_signed_by_id_user")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_version")),
        sa.UniqueConstraint(
            "report_id", "version", name=op.f("uq_report_version_report_id_version")
        ),
    )
    op.create_table(
        "radiologist_modality",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user.id"],
            name=op.f("fk_radiologist_modality_user_id_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "modality", name=op.f("pk_radiologist_modality")),
    )


def downgrade() -> None:
    op.drop_table("radiologist_modality")
    op.drop_table("report_version")
    # An amended report was signed: it is `ready` in the older schema.
    op.execute("UPDATE report SET status = 'ready' WHERE status = 'amended'")
    with op.batch_alter_table("report", recreate="always") as batch:
        batch.drop_index("ix_report_uploader_id_created_at")
        batch.drop_index("ix_report_radiologist_id_created_at")
        batch.drop_index(batch.f("ix_report_modality"))
        batch.drop_constraint(batch.f("fk_report_uploader_id_user"), type_="foreignkey")
        for column in (
            "version",
            "assigned_at",
            "search_text",
            "metadata",
            "study_date",
            "modality",
            "study_instance_uid",
            "uploader_id",
        ):
            batch.drop_column(column)
        batch.alter_column("status", existing_type=_NEW, type_=_OLD, existing_nullable=False)
