"""affiliates: referrals, the commission queue, commissions, payouts and the ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

The ledger is append-only and gapless: a trigger refuses UPDATE and DELETE, and an entry whose number
does not follow the affiliate's previous one. Referrals are never changed once written.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def _created() -> sa.Column[sa.DateTime]:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False)


def _restrict(column: str, target: str, table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete="RESTRICT"
    )


def upgrade() -> None:
    """The five tables, their indexes, and the triggers that keep referrals and the ledger unchanged."""
    op.create_table(
        "commission_queue",
        sa.Column("fill_event_id", sa.UUID(), nullable=False),
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("delivery_id", sa.UUID(), nullable=False),
        sa.Column("lots", sa.Numeric(), nullable=False),
        sa.Column("filled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fill_event_id", name=op.f("pk_commission_queue")),
    )
    op.create_table(
        "affiliates",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("referral_code", sa.Text(), nullable=False),
        _created(),
        _restrict("user_id", "users", "affiliates"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_affiliates")),
        sa.UniqueConstraint("referral_code", name=op.f("uq_affiliates_referral_code")),
        sa.UniqueConstraint("user_id", name=op.f("uq_affiliates_user_id")),
    )
    op.create_table(
        "commissions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("affiliate_id", sa.UUID(), nullable=False),
        sa.Column("referred_user_id", sa.UUID(), nullable=False),
        sa.Column("fill_event_id", sa.UUID(), nullable=False),
        sa.Column("position_id", sa.UUID(), nullable=True),
        sa.Column("lots", sa.Numeric(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("pricing", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("status", _enum("commission_status", "PENDING", "AVAILABLE", "VOIDED"), nullable=False),
        sa.Column("clawed_back", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("filled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reversed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reverse_reason", sa.Text(), nullable=True),
        _created(),
        sa.CheckConstraint(
            "lots > 0 AND amount >= 0 AND amount = round(amount, 2)", name=op.f("ck_commissions_lots_and_cents")
        ),
        _restrict("affiliate_id", "affiliates", "commissions"),
        _restrict("referred_user_id", "users", "commissions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commissions")),
        sa.UniqueConstraint("fill_event_id", name=op.f("uq_commissions_fill_event_id")),
    )
    op.create_index("ix_commissions_affiliate_id_created_at", "commissions", ["affiliate_id", "created_at"])
    op.create_index("ix_commissions_affiliate_id_month", "commissions", ["affiliate_id", "month"])
    op.create_index(
        "ix_commissions_pending_available_at",
        "commissions",
        ["available_at"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_table(
        "payouts",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("affiliate_id", sa.UUID(), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=True),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("status", _enum("payout_status", "REQUESTED", "APPROVED", "REJECTED", "PAID"), nullable=False),
        sa.Column("method_details_sealed", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("payment_reference", sa.Text(), nullable=True),
        _created(),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("amount > 0 AND amount = round(amount, 2)", name=op.f("ck_payouts_amount_in_cents")),
        _restrict("affiliate_id", "affiliates", "payouts"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
        sa.UniqueConstraint("affiliate_id", "request_id", name=op.f("uq_payouts_affiliate_id_request_id")),
    )
    op.create_index("ix_payouts_affiliate_id_created_at", "payouts", ["affiliate_id", "created_at"])
    op.create_table(
        "referrals",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("affiliate_id", sa.UUID(), nullable=False),
        sa.Column("referred_user_id", sa.UUID(), nullable=False),
        _created(),
        _restrict("affiliate_id", "affiliates", "referrals"),
        _restrict("referred_user_id", "users", "referrals"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referrals")),
        sa.UniqueConstraint("referred_user_id", name=op.f("uq_referrals_referred_user_id")),
    )
    op.create_index(op.f("ix_referrals_affiliate_id"), "referrals", ["affiliate_id"])
    kinds = ("ACCRUAL", "HOLD_RELEASE", "VOID", "CLAWBACK", "PAYOUT_REQUESTED", "PAYOUT_REJECTED", "PAYOUT_PAID")
    op.create_table(
        "affiliate_ledger",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("affiliate_id", sa.UUID(), nullable=False),
        sa.Column("entry_no", sa.BigInteger(), nullable=False),
        sa.Column("kind", _enum("ledger_entry_kind", *kinds), nullable=False),
        sa.Column("commission_id", sa.UUID(), nullable=True),
        sa.Column("payout_id", sa.UUID(), nullable=True),
        *(sa.Column(name, sa.Numeric(), nullable=False) for name in _LEDGER_AMOUNTS),
        _created(),
        sa.CheckConstraint(
            "least(amount, pending, available, reserved, paid, clawback_due) >= 0",
            name=op.f("ck_affiliate_ledger_not_negative"),
        ),
        _restrict("affiliate_id", "affiliates", "affiliate_ledger"),
        _restrict("commission_id", "commissions", "affiliate_ledger"),
        _restrict("payout_id", "payouts", "affiliate_ledger"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_affiliate_ledger")),
        sa.UniqueConstraint("affiliate_id", "entry_no", name=op.f("uq_affiliate_ledger_affiliate_id_entry_no")),
    )
    op.create_index("ix_affiliate_ledger_commission_id", "affiliate_ledger", ["commission_id"])
    op.create_index("ix_affiliate_ledger_payout_id", "affiliate_ledger", ["payout_id"])
    op.execute(_REFERRALS_IMMUTABLE)
    op.execute(
        "CREATE TRIGGER referrals_immutable BEFORE UPDATE OR DELETE ON referrals "
        "FOR EACH ROW EXECUTE FUNCTION referrals_immutable()"
    )
    op.execute(_LEDGER_APPEND_ONLY)
    op.execute(
        "CREATE TRIGGER affiliate_ledger_append_only BEFORE INSERT OR UPDATE OR DELETE ON affiliate_ledger "
        "FOR EACH ROW EXECUTE FUNCTION affiliate_ledger_append_only()"
    )


_LEDGER_AMOUNTS = ("amount", "pending", "available", "reserved", "paid", "clawback_due")

_REFERRALS_IMMUTABLE = """
CREATE FUNCTION referrals_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'referrals are written once and never changed (% refused)', TG_OP;
END $$;
"""

# A row-level BEFORE trigger sees the rows its own statement inserted before this one, so a batch of
# consecutive entries inserted in one statement passes.
_LEDGER_APPEND_ONLY = """
CREATE FUNCTION affiliate_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'affiliate_ledger is append-only (% refused)', TG_OP;
    END IF;
    IF NEW.entry_no <> 1 AND NOT EXISTS (
        SELECT 1 FROM affiliate_ledger WHERE affiliate_id = NEW.affiliate_id AND entry_no = NEW.entry_no - 1
    ) THEN
        RAISE EXCEPTION 'affiliate_ledger: entry % of affiliate % does not follow the one before it',
            NEW.entry_no, NEW.affiliate_id;
    END IF;
    RETURN NEW;
END $$;
"""


def downgrade() -> None:
    op.execute("DROP TRIGGER affiliate_ledger_append_only ON affiliate_ledger")
    op.execute("DROP FUNCTION affiliate_ledger_append_only()")
    op.execute("DROP TRIGGER referrals_immutable ON referrals")
    op.execute("DROP FUNCTION referrals_immutable()")
    for table in ("affiliate_ledger", "referrals", "payouts", "commissions", "affiliates", "commission_queue"):
        op.drop_table(table)  # their indexes go with them
