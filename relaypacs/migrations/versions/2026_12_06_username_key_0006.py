"""Usernames are unique and looked up by their identity (relaypacs.fields.name_key: NFKC and
case folding), so `ADMIN` can no longer exist beside `admin`.

Accounts that already collide keep working: the oldest takes the name's key; each later one gets
its key suffixed with its id (unique, and never what a typed name folds to), and still signs in
with its exact username. The log of the upgrade names how many there were, never who.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 05:30:00
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from relaypacs.fields import name_key

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_USER = sa.table(
    "user",
    sa.column("id", sa.Uuid),
    sa.column("username", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("username_key", sa.String),
)


def upgrade() -> None:
    # Added in place, never by rebuilding the table (SQLite's batch mode would drop `user`,
    # which every upload and session references): NOT NULL with an empty default, filled below,
    # then unique.
    op.add_column(
        "user",
        sa.Column("username_key", sa.String(length=256), nullable=False, server_default=""),
    )
    bind = op.get_bind()
    taken: set[str] = set()
    collisions = 0
    rows = bind.execute(
        sa.select(_USER.c.id, _USER.c.username).order_by(_USER.c.created_at, _USER.c.id)
    ).all()
    for user_id, username in rows:
        key = name_key(username)
        if key in taken:
            collisions += 1
            key = f"{key}#{user_id}"
        taken.add(key)
        bind.execute(sa.update(_USER).where(_USER.c.id == user_id).values(username_key=key))
    if collisions:
        logging.getLogger("alembic").warning(
            "%d accounts have a username that differs from an older one only in case or width; "
            "they keep signing in with their exact username",
            collisions,
        )
    op.create_index(op.f("ix_user_username_key"), "user", ["username_key"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_user_username_key"), table_name="user")
    op.execute('ALTER TABLE "user" DROP COLUMN username_key')  # in place (SQLite 3.35+ too)
