"""a signal's submission and a person's approval each written by one function in Postgres

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

SubmitSignal and ApproveSignal each had two implementations: one statement for the common case, and the
ORM for the rest (AUTO subscribers, an approval not yet created, risk guards, a repeated request_id). Now
each has one. The caller reads what a decision needs and plans the deliveries in Python (sizing each
device from its last Hello is Python's, shared with nothing here); one function call then writes the
whole decision in one transaction, after checking that what the plan was made from still holds. When it
does not, nothing is written and the function says so; the caller reads again and plans again.

- ``stopout_active``: the one rule for a stopout in force (not reset, its period not over); the back
  office's queries call it too (``backoffice.risk.stopouts.active_at``).
- ``device_room``: whether a device's open-position caps let it take one more delivery on an instrument,
  counting OPEN and CLOSING positions and the deliveries that may still become one.
- ``device_guard``: a device's risk guard for a delivery on one instrument: its policy's guards, whether a
  stopout of it is active, and, when its policy caps open positions, whether it has room.
- ``lock_devices``: advisory locks on devices, in id order (no cycle between two decisions), to the commit.
- ``guards_hold``: takes the capped devices' locks and checks each still has the room the plan saw: two
  decisions on one device conflict only when one of them fills its last place.
- ``claim_request``: an idempotency record with the sealed first answer; when the key was claimed before,
  a 'replay' row with that record instead.
- ``insert_planned_deliveries``: a decision's deliveries, every varying column one array.
- ``submit_signal``: AUTO subscriptions other than those planned for, or guards that moved, answer 'plan';
  a request seen before answers 'replay' with its record; otherwise the signal, its AUTO approvals with
  their deliveries, a PENDING approval per other subscriber, its audit row and its idempotency record.
- ``approve_signal``: a signal no longer open, an approval no longer PENDING (or created meanwhile), or
  guards that moved answer 'changed'; a request seen before answers 'replay'; otherwise the approval
  (created if the subscriber had none) APPROVED with its deliveries, audit row and idempotency record.
  Locks: the signal FOR SHARE, then the approval, then the guards, the order CancelSignal and expiry use.

The idempotency record is claimed after the checks, in the same transaction as the change: a concurrent
request under the same key waits on its unique index until the first commits, then answers 'replay'.

Two partial indexes serve ``device_room``: a device's deliveries in flight and its positions held, by
instrument. Built CONCURRENTLY, outside the migration's transaction, as the tables take writes all the
time; should a build fail, Postgres leaves an INVALID index of that name behind: drop it and migrate again.
Otherwise additive (no table changes): safe while the servers serve.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STOPOUT_ACTIVE = r"""
CREATE OR REPLACE FUNCTION stopout_active(p_reset_time timestamptz, p_end_time timestamptz, p_now timestamptz)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_reset_time IS NULL AND (p_end_time IS NULL OR p_end_time > p_now)
$$
"""

ROOM = r"""
CREATE OR REPLACE FUNCTION device_room(p_device uuid, p_instrument text, p_max integer, p_max_per_instrument integer)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (p_max = 0 OR count(*) < p_max)
           AND (p_max_per_instrument = 0
                OR count(*) FILTER (WHERE held.instrument = p_instrument) < p_max_per_instrument)
    FROM (
        SELECT instrument FROM positions WHERE device_id = p_device AND status IN ('OPEN', 'CLOSING')
        UNION ALL
        SELECT instrument FROM deliveries
        WHERE device_id = p_device AND state IN ('PENDING', 'SENT', 'RECEIVED', 'PLACED')
    ) held
$$
"""

GUARD = r"""
CREATE OR REPLACE FUNCTION device_guard(p_device uuid, p_instrument text, p_now timestamptz)
RETURNS TABLE (
    o_max_open_positions integer, o_max_open_positions_per_instrument integer, o_max_volume numeric,
    o_max_deviation numeric, o_max_delay_seconds integer, o_allowed_sides text[], o_stopped boolean,
    o_room boolean
)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(p.max_open_positions, 0), coalesce(p.max_open_positions_per_instrument, 0), p.max_volume,
           p.max_deviation, coalesce(p.max_delay_seconds, 0), coalesce(p.allowed_sides, '{}'), g.stopped,
           -- Counted only under a cap (CASE evaluates it lazily): most guarded devices have none.
           CASE WHEN p.max_open_positions > 0 OR p.max_open_positions_per_instrument > 0
                THEN device_room(p_device, p_instrument, p.max_open_positions, p.max_open_positions_per_instrument)
                ELSE true END
    FROM (
        SELECT EXISTS (
            SELECT 1 FROM stopouts s
            WHERE s.device_id = p_device AND stopout_active(s.reset_time, s.end_time, p_now)
        ) AS stopped
    ) g
    LEFT JOIN risk_policies p ON p.device_id = p_device
    WHERE g.stopped OR p.device_id IS NOT NULL
$$
"""

LOCK = r"""
CREATE OR REPLACE FUNCTION lock_devices(p_devices uuid[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    device uuid;
BEGIN
    FOR device IN SELECT DISTINCT d FROM unnest(p_devices) d ORDER BY d LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(device::text, 0));
    END LOOP;
END
$$
"""

GUARDS_HOLD = r"""
CREATE OR REPLACE FUNCTION guards_hold(p_devices uuid[], p_instruments text[], p_room boolean[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM lock_devices(p_devices);
    RETURN NOT EXISTS (
        SELECT 1
        FROM unnest(p_devices, p_instruments, p_room) AS c(device, instrument, room)
        LEFT JOIN risk_policies p ON p.device_id = c.device
        WHERE c.room IS DISTINCT FROM (
            coalesce(p.max_open_positions, 0) = 0 AND coalesce(p.max_open_positions_per_instrument, 0) = 0
            OR device_room(c.device, c.instrument, p.max_open_positions, p.max_open_positions_per_instrument)
        )
    );
END
$$
"""

CLAIM = r"""
CREATE OR REPLACE FUNCTION claim_request(
    p_record uuid, p_caller uuid, p_method text, p_request_id uuid, p_hash bytea, p_response text
) RETURNS TABLE (o_outcome text, o_record_id uuid, o_request_hash bytea, o_response text)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- A concurrent request with the same key waits here on the unique index until the first commits.
    INSERT INTO idempotency_records (id, caller_id, method, request_id, request_hash, response_sealed)
    VALUES (p_record, p_caller, p_method, p_request_id, p_hash, p_response)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'replay', r.id, r.request_hash, r.response_sealed FROM idempotency_records r
            WHERE r.caller_id = p_caller AND r.method = p_method AND r.request_id = p_request_id;
    END IF;
END
$$
"""

INSERT_DELIVERIES = r"""
CREATE OR REPLACE FUNCTION insert_planned_deliveries(
    p_signal uuid, p_side text, p_entry numeric, p_now timestamptz,
    p_ids uuid[], p_approvals uuid[], p_devices uuid[], p_instruments text[], p_volumes numeric[],
    p_deviations numeric[], p_expiries timestamptz[], p_states text[], p_reasons text[]
) RETURNS void
LANGUAGE sql VOLATILE AS $$
    INSERT INTO deliveries (id, approval_id, signal_id, device_id, instrument, side, volume, entry_price,
                            max_deviation, expire_time, state, state_reason, created_at, updated_at)
    SELECT d.id, d.approval, p_signal, d.device, d.instrument, p_side, d.volume, p_entry, d.deviation,
           d.expiry, d.state, d.reason, p_now, p_now
    FROM unnest(p_ids, p_approvals, p_devices, p_instruments, p_volumes, p_deviations, p_expiries, p_states,
                p_reasons) WITH ORDINALITY
        AS d(id, approval, device, instrument, volume, deviation, expiry, state, reason, n)
    ORDER BY d.n
$$
"""

SUBMIT = r"""
CREATE OR REPLACE FUNCTION submit_signal(
    p_id uuid, p_producer uuid, p_request_id uuid, p_instrument text, p_side text, p_entry numeric,
    p_stop numeric, p_target numeric, p_signal_time timestamptz, p_expire timestamptz, p_payload jsonb,
    p_trailing numeric, p_be_trigger numeric, p_be_offset numeric, p_now timestamptz,
    p_record uuid, p_method text, p_hash bytea, p_response text, p_audit uuid, p_audit_details jsonb,
    p_auto_subscriptions uuid[], p_auto_approvals uuid[], p_auto_reasons text[],
    p_guard_devices uuid[], p_guard_instruments text[], p_guard_room boolean[],
    p_d_ids uuid[], p_d_approvals uuid[], p_d_devices uuid[], p_d_instruments text[], p_d_volumes numeric[],
    p_d_deviations numeric[], p_d_expiries timestamptz[], p_d_states text[], p_d_reasons text[]
) RETURNS TABLE (o_outcome text, o_record_id uuid, o_request_hash bytea, o_response text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    taking uuid[];     -- the subscriptions taking the signal, their subscribers, whether AUTO
    takers uuid[];
    automatic boolean[];
BEGIN
    -- The plan holds while the capped devices have the room it saw (their locks taken first: the wait
    -- comes before anything is read) and the AUTO subscriptions taking the signal are those it was made
    -- for. The subscriptions are read once, here, for the check and the approvals alike.
    IF cardinality(p_guard_devices) > 0
       AND NOT guards_hold(p_guard_devices, p_guard_instruments, p_guard_room) THEN
        RETURN QUERY SELECT 'plan', NULL::uuid, NULL::bytea, NULL::text;
        RETURN;
    END IF;
    SELECT coalesce(array_agg(s.id), '{}'), coalesce(array_agg(s.user_id), '{}'),
           coalesce(array_agg(s.mode = 'AUTO'), '{}')
    INTO taking, takers, automatic
    FROM subscriptions s
    WHERE s.producer_id = p_producer AND s.status = 'ACTIVE'
      AND (cardinality(s.instruments) = 0 OR p_instrument = ANY(s.instruments));
    IF (SELECT count(*) FROM unnest(taking, automatic) t(id, auto) WHERE t.auto) <> cardinality(p_auto_subscriptions)
       OR EXISTS (SELECT 1 FROM unnest(p_auto_subscriptions) x
                  WHERE NOT EXISTS (SELECT 1 FROM unnest(taking, automatic) t(id, auto) WHERE t.id = x AND t.auto)) THEN
        RETURN QUERY SELECT 'plan', NULL::uuid, NULL::bytea, NULL::text;
        RETURN;
    END IF;
    IF p_request_id IS NOT NULL THEN
        RETURN QUERY SELECT * FROM claim_request(p_record, p_producer, p_method, p_request_id, p_hash, p_response);
        IF FOUND THEN RETURN; END IF;  -- a request seen before: its record
    END IF;
    -- One statement: the signal (a late retry whose idempotency record was purged fails here, on the
    -- unique producer and request_id), its approvals (the AUTO ones planned, with their devices; PENDING
    -- for every other subscription taking it) and the audit row; then the AUTO approvals' deliveries.
    WITH signal AS (
        INSERT INTO signals (id, producer_id, request_id, instrument, side, entry_price, stop_loss, take_profit,
                             signal_time, expire_time, payload, trailing_distance, breakeven_trigger,
                             breakeven_offset, status, cancel_closes_positions, created_at)
        VALUES (p_id, p_producer, p_request_id, p_instrument, p_side, p_entry, p_stop, p_target, p_signal_time,
                p_expire, p_payload, p_trailing, p_be_trigger, p_be_offset, 'OPEN', false, p_now)
        RETURNING id
    ), chosen AS (
        SELECT d.approval, array_agg(d.device ORDER BY d.n) AS devices
        FROM unnest(p_d_approvals, p_d_devices) WITH ORDINALITY AS d(approval, device, n)
        GROUP BY d.approval
    ), approved AS (
        INSERT INTO approvals (id, signal_id, subscription_id, user_id, status, automatic, decided_at,
                               device_ids, reason, created_at)
        SELECT a.id, signal.id, t.id, t.user_id, 'APPROVED', true, p_now, coalesce(chosen.devices, '{}'),
               a.reason, p_now
        FROM signal, unnest(p_auto_approvals, p_auto_subscriptions, p_auto_reasons) AS a(id, subscription, reason)
        JOIN unnest(taking, takers) AS t(id, user_id) ON t.id = a.subscription
        LEFT JOIN chosen ON chosen.approval = a.id
        UNION ALL
        SELECT gen_random_uuid(), signal.id, t.id, t.user_id, 'PENDING', false, NULL, '{}', NULL, p_now
        FROM signal, unnest(taking, takers, automatic) AS t(id, user_id, auto)
        WHERE NOT t.auto
        RETURNING id
    )
    INSERT INTO audit_events (id, actor_type, actor_id, action, object_type, object_id, details, request_id)
    SELECT p_audit, 'PRODUCER', p_producer, 'SubmitSignal', 'signal', signal.id, p_audit_details,
           p_request_id::text
    FROM signal;
    IF cardinality(p_d_ids) > 0 THEN
        PERFORM insert_planned_deliveries(p_id, p_side, p_entry, p_now, p_d_ids, p_d_approvals, p_d_devices,
                                          p_d_instruments, p_d_volumes, p_d_deviations, p_d_expiries, p_d_states,
                                          p_d_reasons);
    END IF;
    RETURN QUERY SELECT 'stored', NULL::uuid, NULL::bytea, NULL::text;
END
$$
"""

APPROVE = r"""
CREATE OR REPLACE FUNCTION approve_signal(
    p_signal uuid, p_approval uuid, p_subscription uuid, p_user uuid, p_create boolean, p_now timestamptz,
    p_volume numeric, p_device_ids uuid[], p_reason text,
    p_record uuid, p_method text, p_request_id uuid, p_hash bytea, p_response text,
    p_audit uuid, p_actor_type text, p_audit_details jsonb, p_audit_request_id text,
    p_guard_devices uuid[], p_guard_instruments text[], p_guard_room boolean[],
    p_d_ids uuid[], p_d_approvals uuid[], p_d_devices uuid[], p_d_instruments text[], p_d_volumes numeric[],
    p_d_deviations numeric[], p_d_expiries timestamptz[], p_d_states text[], p_d_reasons text[]
) RETURNS TABLE (o_outcome text, o_record_id uuid, o_request_hash bytea, o_response text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    signal record;
BEGIN
    -- FOR SHARE: a concurrent CancelSignal (FOR UPDATE) waits, or this sees the signal closed.
    SELECT s.side, s.entry_price INTO signal FROM signals s
    WHERE s.id = p_signal AND s.status = 'OPEN' AND s.expire_time > p_now FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'changed', NULL::uuid, NULL::bytea, NULL::text;
        RETURN;
    END IF;
    IF p_create THEN
        -- The subscriber had no approval yet (it subscribed after the signal came): one is created, unless
        -- a concurrent decision created it first or the subscription ended meanwhile.
        INSERT INTO approvals (id, signal_id, subscription_id, user_id, status, created_at)
        SELECT p_approval, p_signal, p_subscription, p_user, 'PENDING', p_now
        WHERE EXISTS (SELECT 1 FROM subscriptions WHERE id = p_subscription AND status = 'ACTIVE')
        ON CONFLICT (signal_id, user_id) DO NOTHING;
    ELSE
        PERFORM 1 FROM approvals WHERE id = p_approval AND status = 'PENDING' FOR UPDATE;
    END IF;
    IF NOT FOUND
       OR (cardinality(p_guard_devices) > 0
           AND NOT guards_hold(p_guard_devices, p_guard_instruments, p_guard_room)) THEN
        RETURN QUERY SELECT 'changed', NULL::uuid, NULL::bytea, NULL::text;
        RETURN;
    END IF;
    IF p_request_id IS NOT NULL THEN
        RETURN QUERY SELECT * FROM claim_request(p_record, p_user, p_method, p_request_id, p_hash, p_response);
        IF FOUND THEN RETURN; END IF;  -- a request seen before: its record
    END IF;
    WITH approved AS (
        UPDATE approvals SET status = 'APPROVED', automatic = false, decided_by = p_user, decided_at = p_now,
                             volume = p_volume, device_ids = p_device_ids, reason = p_reason
        WHERE id = p_approval
    )
    INSERT INTO audit_events (id, actor_type, actor_id, action, object_type, object_id, details, request_id)
    VALUES (p_audit, p_actor_type, p_user, 'ApproveSignal', 'signal', p_signal, p_audit_details,
            NULLIF(p_audit_request_id, ''));
    IF cardinality(p_d_ids) > 0 THEN
        PERFORM insert_planned_deliveries(p_signal, signal.side, signal.entry_price, p_now, p_d_ids,
                                          p_d_approvals, p_d_devices, p_d_instruments, p_d_volumes,
                                          p_d_deviations, p_d_expiries, p_d_states, p_d_reasons);
    END IF;
    RETURN QUERY SELECT 'stored', NULL::uuid, NULL::bytea, NULL::text;
END
$$
"""

_ARRAYS = "uuid[], uuid[], uuid[], text[], numeric[], numeric[], timestamptz[], text[], text[]"
_GUARDS = "uuid[], text[], boolean[]"
DROPS = (
    f"approve_signal(uuid, uuid, uuid, uuid, boolean, timestamptz, numeric, uuid[], text, uuid, text, uuid, bytea,"
    f" text, uuid, text, jsonb, text, {_GUARDS}, {_ARRAYS})",
    "submit_signal(uuid, uuid, uuid, text, text, numeric, numeric, numeric, timestamptz, timestamptz, jsonb, numeric,"
    f" numeric, numeric, timestamptz, uuid, text, bytea, text, uuid, jsonb, uuid[], uuid[], text[], {_GUARDS},"
    f" {_ARRAYS})",
    f"insert_planned_deliveries(uuid, text, numeric, timestamptz, {_ARRAYS})",
    "claim_request(uuid, uuid, text, uuid, bytea, text)",
    f"guards_hold({_GUARDS})",
    "lock_devices(uuid[])",
    "device_guard(uuid, text, timestamptz)",
    "device_room(uuid, text, integer, integer)",
    "stopout_active(timestamptz, timestamptz, timestamptz)",
)
# A device's deliveries that may still become a position, and its positions held, by instrument.
INDEXES = (
    ("ix_deliveries_in_flight_device_id", "deliveries", "state IN ('PENDING', 'SENT', 'RECEIVED', 'PLACED')"),
    ("ix_positions_held_device_id", "positions", "status IN ('OPEN', 'CLOSING')"),
)


def upgrade() -> None:
    for function in (STOPOUT_ACTIVE, ROOM, GUARD, LOCK, GUARDS_HOLD, CLAIM, INSERT_DELIVERIES, SUBMIT, APPROVE):
        op.execute(function)
    with op.get_context().autocommit_block():
        for name, table, where in INDEXES:
            op.create_index(
                name,
                table,
                ["device_id", "instrument"],
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, _ in INDEXES:
            op.drop_index(name, table_name=table, postgresql_concurrently=True)
    for signature in DROPS:
        op.execute(f"DROP FUNCTION {signature}")
