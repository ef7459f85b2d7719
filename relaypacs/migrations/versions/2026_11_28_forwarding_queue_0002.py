"""Forwarding queue: forward_job (outbox), per-file forwarding state, new upload statuses.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 01:16:56.931407
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "forward_job",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("upload_id", sa.Uuid(), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "done",
                "cancelled",
                name="jobstatus",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_count", sa.Integer(), nullable=False),
        sa.Column("confirmed_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("stow_requests", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["upload_id"],
            ["upload.id"],
            name=op.f("fk_forward_job_upload_id_upload"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forward_job")),
        sa.UniqueConstraint("upload_id", "target", name=op.f("uq_forward_job_upload_id_target")),
    )
    with op.batch_alter_table("forward_job", schema=None) as batch_op:
        batch_op.create_index(
            "ix_forward_job_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )

    with op.batch_alter_table("upload", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("upload_file", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "forward_status",
                sa.Enum(
                    "pending",
                    "sent",
                    "confirmed",
                    "failed",
                    name="forwardstatus",
                    native_enum=False,
                    create_constraint=True,
                    length=16,
                ),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("forward_error", sa.Text(), nullable=True))

    _upload_statuses(NEW_STATUSES)


OLD_STATUSES = ("pending", "received", "validated", "rejected", "cancelled")
NEW_STATUSES = (*OLD_STATUSES, "queued", "forwarding", "delivered", "failed")


def _upload_statuses(statuses: tuple[str, ...]) -> None:
    """Replace the CHECK constraint that lists the upload statuses."""
    allowed = ", ".join(f"'{status}'" for status in statuses)
    with op.batch_alter_table("upload") as batch_op:
        batch_op.drop_constraint(op.f("ck_upload_uploadstatus"), type_="check")
        batch_op.create_check_constraint("uploadstatus", f"status IN ({allowed})")


def downgrade() -> None:
    _upload_statuses(OLD_STATUSES)
    with op.batch_alter_table("upload_file", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_upload_file_forwardstatus"), type_="check")
        batch_op.drop_column("forward_error")
        batch_op.drop_column("forward_status")

    with op.batch_alter_table("upload", schema=None) as batch_op:
        batch_op.drop_column("delivered_at")

    with op.batch_alter_table("forward_job", schema=None) as batch_op:
        batch_op.drop_index("ix_forward_job_status_next_attempt_at")

    op.drop_table("forward_job")
