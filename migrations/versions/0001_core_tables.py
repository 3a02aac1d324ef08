"""core tables

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Execution events are immutable: a trigger refuses UPDATE and DELETE on them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column(
            "actor_type",
            sa.Enum(
                "USER",
                "PRODUCER",
                "DEVICE",
                "SYSTEM",
                name="actor_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("actor_id", sa.UUID(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("object_type", sa.Text(), nullable=False),
        sa.Column("object_id", sa.UUID(), nullable=True),
        sa.Column(
            "details", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_created_at", "audit_events", ["created_at"], unique=False)
    op.create_index("ix_audit_events_object_type_object_id", "audit_events", ["object_type", "object_id"], unique=False)
    op.create_table(
        "idempotency_records",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("caller_id", sa.UUID(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("response_sealed", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_records")),
        sa.UniqueConstraint(
            "caller_id", "method", "request_id", name=op.f("uq_idempotency_records_caller_id_method_request_id")
        ),
    )
    op.create_index(op.f("ix_idempotency_records_created_at"), "idempotency_records", ["created_at"], unique=False)
    op.create_table(
        "nonces",
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("nonce", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "nonce", name=op.f("pk_nonces")),
    )
    op.create_index(op.f("ix_nonces_expires_at"), "nonces", ["expires_at"], unique=False)
    op.create_table(
        "quotes",
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column("bid", sa.Numeric(), nullable=False),
        sa.Column("ask", sa.Numeric(), nullable=False),
        sa.Column("quote_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "source_type",
            sa.Enum(
                "USER",
                "PRODUCER",
                "DEVICE",
                "SYSTEM",
                name="actor_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("source_id", sa.UUID(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("instrument", name=op.f("pk_quotes")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column(
            "role",
            sa.Enum("ADMIN", "USER", name="role", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), server_default="", nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"], unique=False)
    op.create_table(
        "devices",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("mac_address", sa.Text(), nullable=True),
        sa.Column(
            "symbol_map", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column(
            "status",
            sa.Enum(
                "ACTIVE",
                "INACTIVE",
                "REVOKED",
                name="device_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("previous_secret_sealed", sa.Text(), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("secret_rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_hello", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("last_hello_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_devices_user_id_users"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("user_id", "request_id", name=op.f("uq_devices_user_id_request_id")),
    )
    op.create_index(op.f("ix_devices_user_id"), "devices", ["user_id"], unique=False)
    op.create_table(
        "producers",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("ACTIVE", "REVOKED", name="producer_status", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("created_by", sa.UUID(), nullable=True),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("previous_secret_sealed", sa.Text(), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("secret_rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_producers_created_by_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_producers")),
    )
    op.create_table(
        "signals",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("producer_id", sa.UUID(), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column(
            "side",
            sa.Enum("BUY", "SELL", name="side", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("entry_price", sa.Numeric(), nullable=True),
        sa.Column("stop_loss", sa.Numeric(), nullable=True),
        sa.Column("take_profit", sa.Numeric(), nullable=True),
        sa.Column("signal_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "payload", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column(
            "status",
            sa.Enum(
                "OPEN",
                "EXPIRED",
                "CANCELLED",
                name="signal_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["producer_id"], ["producers.id"], name=op.f("fk_signals_producer_id_producers"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signals")),
        sa.UniqueConstraint("producer_id", "request_id", name=op.f("uq_signals_producer_id_request_id")),
    )
    op.create_index(
        "ix_signals_open_expire_time",
        "signals",
        ["expire_time"],
        unique=False,
        postgresql_where=sa.text("status = 'OPEN'"),
    )
    op.create_index("ix_signals_producer_id_signal_time", "signals", ["producer_id", "signal_time"], unique=False)
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("producer_id", sa.UUID(), nullable=False),
        sa.Column(
            "mode",
            sa.Enum("MANUAL", "AUTO", name="subscription_mode", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column(
            "sizing_mode",
            sa.Enum(
                "FIXED_VOLUME",
                "BALANCE_RATIO",
                "RISK_PERCENT",
                name="sizing_mode",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("sizing_value", sa.Numeric(), nullable=False),
        sa.Column("max_volume", sa.Numeric(), nullable=True),
        sa.Column("instruments", sa.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "ACTIVE",
                "UNSUBSCRIBED",
                name="subscription_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("unsubscribed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["producer_id"], ["producers.id"], name=op.f("fk_subscriptions_producer_id_producers"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_subscriptions_user_id_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_index("ix_subscriptions_producer_id_status", "subscriptions", ["producer_id", "status"], unique=False)
    op.create_index(
        "uq_subscriptions_active_user_producer",
        "subscriptions",
        ["user_id", "producer_id"],
        unique=True,
        postgresql_where=sa.text("status = 'ACTIVE'"),
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("signal_id", sa.UUID(), nullable=False),
        sa.Column("subscription_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "APPROVED",
                "REJECTED",
                "EXPIRED",
                name="approval_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("automatic", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("volume", sa.Numeric(), nullable=True),
        sa.Column("device_ids", sa.ARRAY(sa.UUID()), server_default=sa.text("'{}'::uuid[]"), nullable=False),
        sa.Column("decided_by", sa.UUID(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["decided_by"], ["users.id"], name=op.f("fk_approvals_decided_by_users"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["signal_id"], ["signals.id"], name=op.f("fk_approvals_signal_id_signals"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_approvals_subscription_id_subscriptions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_approvals_user_id_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
        sa.UniqueConstraint("signal_id", "user_id", name=op.f("uq_approvals_signal_id_user_id")),
    )
    op.create_index("ix_approvals_user_id_status", "approvals", ["user_id", "status"], unique=False)
    op.create_table(
        "deliveries",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("approval_id", sa.UUID(), nullable=False),
        sa.Column("signal_id", sa.UUID(), nullable=False),
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column(
            "side",
            sa.Enum("BUY", "SELL", name="side", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("volume", sa.Numeric(), nullable=False),
        sa.Column("entry_price", sa.Numeric(), nullable=True),
        sa.Column("max_deviation", sa.Numeric(), nullable=True),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "PENDING",
                "SENT",
                "RECEIVED",
                "PLACED",
                "FILLED",
                "REJECTED",
                "EXPIRED",
                "FAILED",
                "SKIPPED",
                "CANCELLED",
                name="delivery_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("state_reason", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["approval_id"], ["approvals.id"], name=op.f("fk_deliveries_approval_id_approvals"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_deliveries_device_id_devices"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["signal_id"], ["signals.id"], name=op.f("fk_deliveries_signal_id_signals"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("approval_id", "device_id", name=op.f("uq_deliveries_approval_id_device_id")),
    )
    op.create_index(
        "ix_deliveries_pending_device_id_created_at",
        "deliveries",
        ["device_id", "created_at"],
        unique=False,
        postgresql_where=sa.text("state IN ('PENDING', 'SENT')"),
    )
    op.create_index("ix_deliveries_signal_id", "deliveries", ["signal_id"], unique=False)
    op.create_table(
        "positions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("signal_id", sa.UUID(), nullable=False),
        sa.Column("delivery_id", sa.UUID(), nullable=False),
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column(
            "side",
            sa.Enum("BUY", "SELL", name="side", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("volume", sa.Numeric(), nullable=False),
        sa.Column("entry_price", sa.Numeric(), nullable=False),
        sa.Column("stop_loss", sa.Numeric(), nullable=True),
        sa.Column("take_profit", sa.Numeric(), nullable=True),
        sa.Column("broker_ticket", sa.Text(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "OPEN",
                "CLOSING",
                "CLOSED",
                "CLOSED_ERROR",
                name="position_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("close_price", sa.Numeric(), nullable=True),
        sa.Column("profit", sa.Numeric(), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"], ["deliveries.id"], name=op.f("fk_positions_delivery_id_deliveries"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_positions_device_id_devices"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["signal_id"], ["signals.id"], name=op.f("fk_positions_signal_id_signals"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_positions")),
        sa.UniqueConstraint("delivery_id", name=op.f("uq_positions_delivery_id")),
    )
    op.create_index("ix_positions_device_id_opened_at", "positions", ["device_id", "opened_at"], unique=False)
    op.create_index(
        "ix_positions_open_instrument",
        "positions",
        ["instrument"],
        unique=False,
        postgresql_where=sa.text("status = 'OPEN'"),
    )
    op.create_table(
        "close_commands",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("position_id", sa.UUID(), nullable=False),
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("volume", sa.Numeric(), nullable=False),
        sa.Column(
            "reason",
            sa.Enum(
                "STOP_LOSS",
                "TAKE_PROFIT",
                "MANUAL",
                "SIGNAL_CANCELLED",
                "ADMIN",
                name="close_reason",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "SENT",
                "SUCCEEDED",
                "FAILED",
                "EXPIRED",
                name="close_command_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("requested_by", sa.UUID(), nullable=True),
        sa.Column("close_price", sa.Numeric(), nullable=True),
        sa.Column("closed_volume", sa.Numeric(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_close_commands_device_id_devices"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["position_id"], ["positions.id"], name=op.f("fk_close_commands_position_id_positions"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"], ["users.id"], name=op.f("fk_close_commands_requested_by_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_close_commands")),
    )
    op.create_index(
        "ix_close_commands_pending_device_id_created_at",
        "close_commands",
        ["device_id", "created_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('PENDING', 'SENT')"),
    )
    op.create_index("ix_close_commands_position_id", "close_commands", ["position_id"], unique=False)
    op.create_table(
        "execution_events",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("frame_id", sa.Text(), nullable=True),
        sa.Column(
            "kind",
            sa.Enum(
                "SENT",
                "ACK",
                "FILL",
                "CLOSE_RESULT",
                "EXPIRED",
                "ERROR",
                "QUOTE",
                "HEARTBEAT",
                "HELLO",
                name="event_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("delivery_id", sa.UUID(), nullable=True),
        sa.Column("close_command_id", sa.UUID(), nullable=True),
        sa.Column("stage", sa.Text(), nullable=True),
        sa.Column(
            "body", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["close_command_id"],
            ["close_commands.id"],
            name=op.f("fk_execution_events_close_command_id_close_commands"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_execution_events_delivery_id_deliveries"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_execution_events_device_id_devices"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_events")),
        sa.UniqueConstraint("device_id", "frame_id", name=op.f("uq_execution_events_device_id_frame_id")),
    )
    op.create_index("ix_execution_events_close_command_id", "execution_events", ["close_command_id"], unique=False)
    op.create_index(
        "ix_execution_events_delivery_id_received_at", "execution_events", ["delivery_id", "received_at"], unique=False
    )
    op.execute(
        """
        CREATE FUNCTION execution_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'execution_events are immutable (% refused)', TG_OP;
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER execution_events_immutable BEFORE UPDATE OR DELETE ON execution_events "
        "FOR EACH ROW EXECUTE FUNCTION execution_events_immutable()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER execution_events_immutable ON execution_events")
    op.execute("DROP FUNCTION execution_events_immutable()")
    op.drop_index("ix_execution_events_delivery_id_received_at", table_name="execution_events")
    op.drop_index("ix_execution_events_close_command_id", table_name="execution_events")
    op.drop_table("execution_events")
    op.drop_index("ix_close_commands_position_id", table_name="close_commands")
    op.drop_index(
        "ix_close_commands_pending_device_id_created_at",
        table_name="close_commands",
        postgresql_where=sa.text("status IN ('PENDING', 'SENT')"),
    )
    op.drop_table("close_commands")
    op.drop_index("ix_positions_open_instrument", table_name="positions", postgresql_where=sa.text("status = 'OPEN'"))
    op.drop_index("ix_positions_device_id_opened_at", table_name="positions")
    op.drop_table("positions")
    op.drop_index("ix_deliveries_signal_id", table_name="deliveries")
    op.drop_index(
        "ix_deliveries_pending_device_id_created_at",
        table_name="deliveries",
        postgresql_where=sa.text("state IN ('PENDING', 'SENT')"),
    )
    op.drop_table("deliveries")
    op.drop_index("ix_approvals_user_id_status", table_name="approvals")
    op.drop_table("approvals")
    op.drop_index(
        "uq_subscriptions_active_user_producer",
        table_name="subscriptions",
        postgresql_where=sa.text("status = 'ACTIVE'"),
    )
    op.drop_index("ix_subscriptions_producer_id_status", table_name="subscriptions")
    op.drop_table("subscriptions")
    op.drop_index("ix_signals_producer_id_signal_time", table_name="signals")
    op.drop_index("ix_signals_open_expire_time", table_name="signals", postgresql_where=sa.text("status = 'OPEN'"))
    op.drop_table("signals")
    op.drop_table("producers")
    op.drop_index(op.f("ix_devices_user_id"), table_name="devices")
    op.drop_table("devices")
    op.drop_index(op.f("ix_api_tokens_user_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("users")
    op.drop_table("quotes")
    op.drop_index(op.f("ix_nonces_expires_at"), table_name="nonces")
    op.drop_table("nonces")
    op.drop_index(op.f("ix_idempotency_records_created_at"), table_name="idempotency_records")
    op.drop_table("idempotency_records")
    op.drop_index("ix_audit_events_object_type_object_id", table_name="audit_events")
    op.drop_index("ix_audit_events_created_at", table_name="audit_events")
    op.drop_table("audit_events")
