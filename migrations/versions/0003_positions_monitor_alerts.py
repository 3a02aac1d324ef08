"""server-side position management: hidden trailing stops and breakeven, position events, quotes per
source, one outstanding close command per position, alerts

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

- signals and positions gain the hidden trailing distance and breakeven trigger and offset; positions
  also the signal's instrument (producers' quotes name it), the best price a trailing stop follows,
  the volume closed so far, the profit in price units, why it was closed, and ``updated_at``, which a
  trigger sets on every write: the monitor re-reads what changed since it last looked.
- position_events: what happened to a position, with its hidden levels after it.
- close_commands: a unique index allows one PENDING or SENT command per position, so a trigger seen by
  two monitors (or again after a restart) closes a position once.
- quotes: the latest quote per instrument *and source*, with the device frame that set it.
- alerts: one open alert per kind and subject (a unique index), resolved when the incident ends.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


CLOSE_REASONS = ("STOP_LOSS", "TAKE_PROFIT", "MANUAL", "SIGNAL_CANCELLED", "ADMIN")
ACTOR_TYPES = ("USER", "PRODUCER", "DEVICE", "SYSTEM")


def upgrade() -> None:
    """Columns first (backfilled where they are required), then the new tables, indexes and trigger."""
    for table in ("signals", "positions"):
        op.add_column(table, sa.Column("trailing_distance", sa.Numeric(), nullable=True))
        op.add_column(table, sa.Column("breakeven_trigger", sa.Numeric(), nullable=True))
        op.add_column(table, sa.Column("breakeven_offset", sa.Numeric(), nullable=True))
    op.add_column(
        "signals", sa.Column("cancel_closes_positions", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column("positions", sa.Column("signal_instrument", sa.Text(), nullable=True))
    op.execute("UPDATE positions SET signal_instrument = s.instrument FROM signals s WHERE s.id = positions.signal_id")
    op.alter_column("positions", "signal_instrument", existing_type=sa.Text(), nullable=False)
    op.add_column("positions", sa.Column("best_price", sa.Numeric(), nullable=True))
    op.add_column("positions", sa.Column("levels_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "positions", sa.Column("breakeven_done", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column("positions", sa.Column("close_reason", _enum("close_reason", *CLOSE_REASONS), nullable=True))
    op.add_column("positions", sa.Column("closed_volume", sa.Numeric(), server_default=sa.text("0"), nullable=False))
    op.add_column("positions", sa.Column("price_profit", sa.Numeric(), nullable=True))
    op.add_column(
        "positions",
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )
    op.create_index("ix_positions_updated_at", "positions", ["updated_at"], unique=False)
    # clock_timestamp(), not now(): a long transaction's rows must not look older than they are.
    op.execute(
        """
        CREATE FUNCTION positions_touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := clock_timestamp();
            RETURN NEW;
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER positions_touch BEFORE INSERT OR UPDATE ON positions "
        "FOR EACH ROW EXECUTE FUNCTION positions_touch()"
    )

    # A second outstanding command per position was never meant to exist; keep the oldest.
    op.execute(
        """
        UPDATE close_commands c SET status = 'EXPIRED', error = 'superseded by an older command'
        WHERE c.status IN ('PENDING', 'SENT') AND EXISTS (
            SELECT 1 FROM close_commands o WHERE o.position_id = c.position_id
              AND o.status IN ('PENDING', 'SENT') AND (o.created_at, o.id) < (c.created_at, c.id))
        """
    )
    op.create_index(
        "uq_close_commands_outstanding_position_id",
        "close_commands",
        ["position_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('PENDING', 'SENT')"),
    )

    op.add_column("quotes", sa.Column("frame_id", sa.Text(), nullable=True))
    op.drop_constraint("pk_quotes", "quotes", type_="primary")
    op.create_primary_key("pk_quotes", "quotes", ["instrument", "source_type", "source_id"])

    op.create_table(
        "position_events",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("position_id", sa.UUID(), nullable=False),
        sa.Column(
            "kind",
            _enum(
                "position_event_kind",
                "OPENED",
                "FILL_ADDED",
                "PROTECTION_UPDATED",
                "TRAILING_STOP_MOVED",
                "BREAKEVEN_MOVED",
                "CLOSE_REQUESTED",
                "PARTIALLY_CLOSED",
                "CLOSED",
                "CLOSE_FAILED",
            ),
            nullable=False,
        ),
        sa.Column("stop_loss", sa.Numeric(), nullable=True),
        sa.Column("take_profit", sa.Numeric(), nullable=True),
        sa.Column("price", sa.Numeric(), nullable=True),
        sa.Column("volume", sa.Numeric(), nullable=True),
        sa.Column("close_command_id", sa.UUID(), nullable=True),
        sa.Column("reason", _enum("close_reason", *CLOSE_REASONS), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("actor_type", _enum("actor_type", *ACTOR_TYPES), nullable=False),
        sa.Column("actor_id", sa.UUID(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["close_command_id"],
            ["close_commands.id"],
            name=op.f("fk_position_events_close_command_id_close_commands"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["position_id"],
            ["positions.id"],
            name=op.f("fk_position_events_position_id_positions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_position_events")),
    )
    op.create_index("ix_position_events_position_id_seq", "position_events", ["position_id", "seq"], unique=False)

    op.create_table(
        "alerts",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("kind", _enum("alert_kind", "DEVICE_SILENT", "DEVICE_DISCONNECTED", "CLOSE_FAILED"), nullable=False),
        sa.Column("subject_id", sa.UUID(), nullable=False),
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("position_id", sa.UUID(), nullable=True),
        sa.Column("close_command_id", sa.UUID(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["close_command_id"],
            ["close_commands.id"],
            name=op.f("fk_alerts_close_command_id_close_commands"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_alerts_device_id_devices"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["position_id"], ["positions.id"], name=op.f("fk_alerts_position_id_positions"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_alerts_user_id_users"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("ix_alerts_created_at", "alerts", ["created_at"], unique=False)
    op.create_index(
        "uq_alerts_open_kind_subject_id",
        "alerts",
        ["kind", "subject_id"],
        unique=True,
        postgresql_where=sa.text("resolved_at IS NULL"),
    )


def downgrade() -> None:
    """The new tables and columns go; quotes are one per instrument again (the newest of each is kept)."""
    op.drop_index(
        "uq_alerts_open_kind_subject_id", table_name="alerts", postgresql_where=sa.text("resolved_at IS NULL")
    )
    op.drop_index("ix_alerts_created_at", table_name="alerts")
    op.drop_table("alerts")
    op.drop_index("ix_position_events_position_id_seq", table_name="position_events")
    op.drop_table("position_events")
    # Back to one quote per instrument: keep the newest of each.
    op.execute(
        """
        DELETE FROM quotes q WHERE EXISTS (
            SELECT 1 FROM quotes n WHERE n.instrument = q.instrument
              AND (n.quote_time, n.source_id) > (q.quote_time, q.source_id))
        """
    )
    op.drop_constraint("pk_quotes", "quotes", type_="primary")
    op.create_primary_key("pk_quotes", "quotes", ["instrument"])
    op.drop_column("quotes", "frame_id")
    op.drop_index(
        "uq_close_commands_outstanding_position_id",
        table_name="close_commands",
        postgresql_where=sa.text("status IN ('PENDING', 'SENT')"),
    )
    op.execute("DROP TRIGGER positions_touch ON positions")
    op.execute("DROP FUNCTION positions_touch()")
    op.drop_index("ix_positions_updated_at", table_name="positions")
    for column in (
        "updated_at",
        "price_profit",
        "closed_volume",
        "close_reason",
        "breakeven_done",
        "levels_at",
        "best_price",
        "signal_instrument",
    ):
        op.drop_column("positions", column)
    op.drop_column("signals", "cancel_closes_positions")
    for table in ("signals", "positions"):
        for column in ("breakeven_offset", "breakeven_trigger", "trailing_distance"):
            op.drop_column(table, column)
