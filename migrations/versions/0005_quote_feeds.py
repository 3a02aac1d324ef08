"""quotes act on their own producer's positions: producers.price_feed, quotes.price_feed, and the indexes
the hot quote queries use

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

- producers.price_feed: set by an admin; such a producer's quotes are read against every position on the
  instrument, any other producer's only against positions its own signals opened.
- quotes.price_feed: whether the stored quote came from such a producer (the monitor reads it back).
- ix_quotes_source_id_frame_id (the uplink's check of which device frames set a stored quote) and
  ix_quotes_received_at (the monitor's sweep and the worker's purge). The columns are added with a
  constant default, which Postgres records without rewriting the table; the quotes table holds one row
  per instrument and source, so its indexes build in moments.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("producers", "quotes"):
        op.add_column(table, sa.Column("price_feed", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.create_index("ix_quotes_source_id_frame_id", "quotes", ["source_id", "frame_id"], unique=False)
    op.create_index("ix_quotes_received_at", "quotes", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_quotes_received_at", table_name="quotes")
    op.drop_index("ix_quotes_source_id_frame_id", table_name="quotes")
    for table in ("quotes", "producers"):
        op.drop_column(table, "price_feed")
