"""every signature nonce in Postgres: the nonces table becomes UNLOGGED

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Nonces used to live in Redis, with this table only as the fallback while Redis was unreachable; a Redis
that restarted empty forgot them, so a call captured before could be replayed within its window. Every
nonce is now recorded here, one insert per signed call: UNLOGGED, so those commits wait for no WAL flush.
The table holds ten minutes of nonces, so rewriting it is quick.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE nonces SET UNLOGGED")


def downgrade() -> None:
    op.execute("ALTER TABLE nonces SET LOGGED")
