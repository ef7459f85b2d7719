"""The automatic assignment rule, set by an administrator (`assignment_rule`, one row; none:
RELAYPACS_REPORT_AUTO_ASSIGN decides).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 20:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "assignment_rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("by_modality", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_assignment_rule_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assignment_rule")),
    )


def downgrade() -> None:
    op.drop_table("assignment_rule")
