"""close commands say whether they close the whole position

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

A further fill of a delivery can add to its position while a close command is out. A command meant to close
the whole position (a level crossed, a cancelled signal, a risk limit, or a person closing all of it) then
leaves the added volume open; with ``whole`` the close result queues a command for the rest. Commands made
before this revision are taken as partial: nothing is closed that nobody asked to close. Catalog-only (a
constant default), under a lock timeout like every step that runs while the servers serve.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET lock_timeout = '2s'")
    op.execute("ALTER TABLE close_commands ADD COLUMN whole boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    op.execute("SET lock_timeout = '2s'")
    op.execute("ALTER TABLE close_commands DROP COLUMN whole")
