"""The request id of the `complete` that queued a forward job (`forward_job.request_id`): set in
the forwarding worker's log context and sent to the PACS as X-Request-ID.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("forward_job") as batch:
        batch.add_column(sa.Column("request_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("forward_job") as batch:
        batch.drop_column("request_id")
