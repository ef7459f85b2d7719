"""Reports from the PACS and back to it: a signed version records where it was written
(`source`: gateway or pacs, and the PACS instance it came from; no signer for the PACS's);
each version written back to the PACS as an Encapsulated PDF (`report_pacs_copy`); the report
instances the sync found in the PACS (`report_pacs_instance`); a forward job's `kind` (study,
or report: the write-back), one job of each kind per upload and target.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KIND = sa.Enum(
    "study", "report", name="jobkind", native_enum=False, create_constraint=True, length=16
)


def upgrade() -> None:
    with op.batch_alter_table("report_version") as batch:
        batch.alter_column("signed_by_id", existing_type=sa.Uuid(), nullable=True)
        batch.add_column(
            sa.Column("source", sa.String(length=16), nullable=False, server_default="gateway")
        )
        batch.add_column(sa.Column("source_instance_uid", sa.String(length=64), nullable=True))
    with op.batch_alter_table("forward_job") as batch:
        batch.add_column(sa.Column("kind", _KIND, nullable=False, server_default="study"))
        batch.drop_constraint(batch.f("uq_forward_job_upload_id_target"), type_="unique")
        batch.create_unique_constraint(
            batch.f("uq_forward_job_upload_id_target_kind"), ["upload_id", "target", "kind"]
        )
    op.create_table(
        "report_pacs_copy",
        sa.Column("report_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("md5", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["report.id"],
            name=op.f("fk_report_pacs_copy_report_id_report"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("report_id", "version", name=op.f("pk_report_pacs_copy")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_report_pacs_copy_sop_instance_uid")),
    )
    op.create_table(
        "report_pacs_instance",
        sa.Column("report_id", sa.Uuid(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["report.id"],
            name=op.f("fk_report_pacs_instance_report_id_report"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "report_id", "sop_instance_uid", name=op.f("pk_report_pacs_instance")
        ),
    )


def downgrade() -> None:
    op.drop_table("report_pacs_instance")
    op.drop_table("report_pacs_copy")
    op.execute("DELETE FROM forward_job WHERE kind = 'report'")
    with op.batch_alter_table("forward_job") as batch:
        batch.drop_constraint(batch.f("uq_forward_job_upload_id_target_kind"), type_="unique")
        batch.create_unique_constraint(
            batch.f("uq_forward_job_upload_id_target"), ["upload_id", "target"]
        )
        batch.drop_constraint(batch.f("ck_forward_job_jobkind"), type_="check")
        batch.drop_column("kind")
    # The PACS's versions have no signer: the older schema cannot hold them.
    op.execute("DELETE FROM report_version WHERE signed_by_id IS NULL")
    with op.batch_alter_table("report_version") as batch:
        batch.drop_column("source_instance_uid")
        batch.drop_column("source")
        batch.alter_column("signed_by_id", existing_type=sa.Uuid(), nullable=False)
