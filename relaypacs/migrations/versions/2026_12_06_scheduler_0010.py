"""The scheduler's leases (`scheduled_job`), the daily statistics (`daily_stat`), the upload
status `expired` (abandoned uploads) and `upload.purged_at` (its stored bytes deleted: expired,
or delivered and past the retention).

The CHECK constraint of the upload statuses is widened in place. On SQLite it is rewritten in
the schema (PRAGMA writable_schema, the procedure SQLite documents for constraint changes that
no stored row can break), not by rebuilding `upload`: a rebuild drops the table, and with
foreign keys on (they cannot be turned off inside the migration's transaction) dropping it
would cascade into the files and chunks of every upload.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = (
    "pending",
    "received",
    "validated",
    "rejected",
    "cancelled",
    "queued",
    "forwarding",
    "delivered",
    "failed",
)
NEW_STATUSES = (*OLD_STATUSES, "expired")


def _in_list(statuses: tuple[str, ...]) -> str:
    return ", ".join(f"'{status}'" for status in statuses)


def _upload_statuses(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        sql = bind.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'upload'")
        ).scalar_one()
        before, after = f"status IN ({_in_list(old)})", f"status IN ({_in_list(new)})"
        if before not in sql:
            raise RuntimeError("the upload table's status constraint is not the expected one")
        version = bind.execute(sa.text("PRAGMA schema_version")).scalar_one()
        bind.execute(sa.text("PRAGMA writable_schema = ON"))
        bind.execute(
            sa.text("UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = 'upload'"),
            {"sql": sql.replace(before, after)},
        )
        bind.execute(sa.text(f"PRAGMA schema_version = {int(version) + 1}"))
        bind.execute(sa.text("PRAGMA writable_schema = OFF"))
        return
    op.drop_constraint(op.f("ck_upload_uploadstatus"), "upload", type_="check")
    op.create_check_constraint("uploadstatus", "upload", f"status IN ({_in_list(new)})")


def upgrade() -> None:
    op.create_table(
        "scheduled_job",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_started", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_outcome", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduled_job")),
    )
    op.create_table(
        "daily_stat",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_daily_stat")),
    )
    # In place (ALTER TABLE ADD COLUMN, on SQLite too): see the module's docstring.
    op.add_column("upload", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    _upload_statuses(OLD_STATUSES, NEW_STATUSES)


def downgrade() -> None:
    op.execute("UPDATE upload SET status = 'cancelled' WHERE status = 'expired'")
    _upload_statuses(NEW_STATUSES, OLD_STATUSES)
    op.execute('ALTER TABLE "upload" DROP COLUMN "purged_at"')
    op.drop_table("daily_stat")
    op.drop_table("scheduled_job")
