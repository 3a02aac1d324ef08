"""optional request_id on signals, optional sizing on MANUAL subscriptions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

A request_id makes a call idempotent; without one the call simply is not (AIP-155). The unique key on
(producer_id, request_id) still holds for the signals that carry one (NULLs never collide).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("signals", "request_id", existing_type=sa.UUID(), nullable=True)
    op.alter_column("subscriptions", "sizing_mode", existing_type=sa.String(32), nullable=True)
    op.alter_column("subscriptions", "sizing_value", existing_type=sa.Numeric(), nullable=True)


def downgrade() -> None:
    # A MANUAL subscription without sizing had every volume given by hand: one lot is the closest rule.
    op.execute("UPDATE subscriptions SET sizing_mode = 'FIXED_VOLUME', sizing_value = 1 WHERE sizing_mode IS NULL")
    op.alter_column("subscriptions", "sizing_value", existing_type=sa.Numeric(), nullable=False)
    op.alter_column("subscriptions", "sizing_mode", existing_type=sa.String(32), nullable=False)
    # Signals submitted without a request_id get a fresh one: the column was required before.
    op.execute("UPDATE signals SET request_id = gen_random_uuid() WHERE request_id IS NULL")
    op.alter_column("signals", "request_id", existing_type=sa.UUID(), nullable=False)
