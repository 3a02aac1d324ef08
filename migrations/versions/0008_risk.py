"""risk protection per trading account: policies, account states, the marks limits measure from, stopouts

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

- risk_policies: a device's policy, replaced whole (limits as JSON, at most ten).
- account_states: the latest state each device reported, one row per device, overwritten.
- risk_marks: per device, period and period start, the reference balance, the highest equity and the last
  balance (the next period's reference).
- stopouts: a limit reached, unique per device, limit and period start (so two replicas, a restart or a
  repeated frame never record two).
- CloseReason gains RISK_LIMIT and AlertKind RISK_STOPOUT: their columns' CHECK constraints are recreated
  with the new values (they are text columns, so no type changes).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLOSE_REASONS = ("STOP_LOSS", "TAKE_PROFIT", "MANUAL", "SIGNAL_CANCELLED", "ADMIN")
ALERT_KINDS = ("DEVICE_SILENT", "DEVICE_DISCONNECTED", "CLOSE_FAILED")
# (table, column, constraint) of every column holding one of them.
CLOSE_REASON_CHECKS = (
    ("close_commands", "reason", "ck_close_commands_close_reason"),
    ("positions", "close_reason", "ck_positions_close_reason"),
    ("position_events", "reason", "ck_position_events_close_reason"),
)
ALERT_KIND_CHECKS = (("alerts", "kind", "ck_alerts_alert_kind"),)


def _allow(checks: Sequence[tuple[str, str, str]], values: Sequence[str]) -> None:
    allowed = ", ".join(f"'{value}'" for value in values)
    for table, column, name in checks:
        op.drop_constraint(op.f(name), table, type_="check")
        op.create_check_constraint(op.f(name), table, sa.text(f"{column} IN ({allowed})"))


def upgrade() -> None:
    """The four tables, then the new values of close reasons and alert kinds in their CHECK constraints."""
    op.create_table(
        "account_states",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("balance", sa.Numeric(), nullable=False),
        sa.Column("equity", sa.Numeric(), nullable=False),
        sa.Column("margin", sa.Numeric(), nullable=True),
        sa.Column("free_margin", sa.Numeric(), nullable=True),
        sa.Column("state_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("frame_id", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_account_states_device_id_devices"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_account_states")),
    )
    op.create_table(
        "risk_marks",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column(
            "period",
            sa.Enum(
                "DAY",
                "WEEK",
                "MONTH",
                "LIFETIME",
                name="risk_period",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reference_balance", sa.Numeric(), nullable=False),
        sa.Column("equity_high", sa.Numeric(), nullable=False),
        sa.Column("last_balance", sa.Numeric(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_risk_marks_device_id_devices"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("device_id", "period", "period_start", name=op.f("pk_risk_marks")),
    )
    op.create_table(
        "risk_policies",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column(
            "limits", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
        sa.Column("max_open_positions", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_open_positions_per_instrument", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_volume", sa.Numeric(), nullable=True),
        sa.Column("max_deviation", sa.Numeric(), nullable=True),
        sa.Column("max_delay_seconds", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("allowed_sides", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_risk_policies_device_id_devices"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_risk_policies")),
    )
    op.create_table(
        "stopouts",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("limit_key", sa.Text(), nullable=False),
        sa.Column("limit", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reference", sa.Numeric(), nullable=False),
        sa.Column("value", sa.Numeric(), nullable=False),
        sa.Column("equity", sa.Numeric(), nullable=False),
        sa.Column("trigger_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reset_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reset_by", sa.UUID(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_stopouts_device_id_devices"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stopouts")),
        sa.UniqueConstraint(
            "device_id", "limit_key", "period_start", name=op.f("uq_stopouts_device_id_limit_key_period_start")
        ),
    )
    op.create_index(op.f("ix_stopouts_device_id"), "stopouts", ["device_id"], unique=False)
    _allow(CLOSE_REASON_CHECKS, (*CLOSE_REASONS, "RISK_LIMIT"))
    _allow(ALERT_KIND_CHECKS, (*ALERT_KINDS, "RISK_STOPOUT"))


def downgrade() -> None:
    _allow(ALERT_KIND_CHECKS, ALERT_KINDS)
    _allow(CLOSE_REASON_CHECKS, CLOSE_REASONS)
    op.drop_index(op.f("ix_stopouts_device_id"), table_name="stopouts")
    op.drop_table("stopouts")
    op.drop_table("risk_policies")
    op.drop_table("risk_marks")
    op.drop_table("account_states")
