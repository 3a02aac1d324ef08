"""the index ListSignals pages on: signals by (created_at, id)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

- ix_signals_created_at_id: a page of ListSignals, newest first, walks it backwards from the page token's
  place and stops once the page is full, where it used to read and sort every visible signal. Built
  CONCURRENTLY, outside the migration's transaction: the signals table grows with every SubmitSignal, and
  a plain CREATE INDEX would hold off those inserts while it builds. Should the build fail, Postgres leaves
  an INVALID index of that name behind: drop it and migrate again.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_signals_created_at_id", "signals", ["created_at", "id"], postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_signals_created_at_id", table_name="signals", postgresql_concurrently=True)
