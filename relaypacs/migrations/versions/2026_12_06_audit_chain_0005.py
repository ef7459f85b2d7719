"""The audit log becomes tamper-evident and harder to rewrite.

Each record gets `prev_hash` and `hash` (relaypacs/audit/chain.py), computed here for the
records already there. The database refuses more: TRUNCATE on PostgreSQL (the row triggers never
saw it), and on SQLite an INSERT that would replace a record (`INSERT OR REPLACE` deletes the old
row without firing delete triggers).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from relaypacs.audit.chain import GENESIS, ChainedRecord, link

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_AUDIT = sa.table(
    "audit_event",
    sa.column("id", sa.BigInteger),
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("actor_id", sa.Uuid),
    sa.column("actor_role", sa.String),
    sa.column("action", sa.String),
    sa.column("object_type", sa.String),
    sa.column("object_id", sa.String),
    sa.column("study_instance_uid", sa.String),
    sa.column("outcome", sa.String),
    sa.column("client_ip", sa.String),
    sa.column("details", sa.JSON),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
)


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _row_triggers(create: bool) -> None:
    """The append-only triggers of revision 0001 (UPDATE and DELETE refused)."""
    if _postgresql():
        if create:
            op.execute(
                "CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event "
                "FOR EACH ROW EXECUTE FUNCTION audit_event_append_only()"
            )
        else:
            op.execute("DROP TRIGGER audit_event_append_only ON audit_event")
        return
    for operation in ("UPDATE", "DELETE"):
        if create:
            op.execute(
                f"CREATE TRIGGER audit_event_no_{operation.lower()} BEFORE {operation} "
                "ON audit_event BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END"
            )
        else:
            op.execute(f"DROP TRIGGER audit_event_no_{operation.lower()}")


def _chain_existing_records() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(_AUDIT).order_by(_AUDIT.c.id)).mappings().all()
    prev = GENESIS
    for row in rows:
        values: dict[str, Any] = dict(row)
        values["details"] = values["details"] or {}
        values["prev_hash"] = prev
        values["hash"] = None
        digest = link(prev, ChainedRecord(**values))
        bind.execute(
            sa.update(_AUDIT).where(_AUDIT.c.id == row["id"]).values(prev_hash=prev, hash=digest)
        )
        prev = digest


def upgrade() -> None:
    # Added in place (ALTER TABLE ADD COLUMN on SQLite too): the table and its triggers stay.
    op.add_column("audit_event", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("audit_event", sa.Column("hash", sa.String(length=64), nullable=True))
    _row_triggers(create=False)  # the existing records get their links
    _chain_existing_records()
    _row_triggers(create=True)
    if _postgresql():
        op.execute(
            "CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_event_no_replace BEFORE INSERT ON audit_event "
            "WHEN EXISTS (SELECT 1 FROM audit_event WHERE id = NEW.id) "
            "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END"
        )


def downgrade() -> None:
    if _postgresql():
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_event")
        _row_triggers(create=False)
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_replace")
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
    _row_triggers(create=True)
