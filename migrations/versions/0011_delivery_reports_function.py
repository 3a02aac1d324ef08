"""a batch's acks and fills applied by one function in Postgres: the delivery state machine in one place

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

``apply_delivery_reports`` takes an uplink batch's acks and fills (one array element per frame, in the
order the devices sent them) and does in one call what was six round trips: finds the frames recorded
before, locks the deliveries in id order, moves each through the state machine (the rules are in the
``backoffice.deliveries`` package docstring; this function is their one implementation), refuses a fill
whose volume the delivery cannot take, writes the execution events, the deliveries and the commission
queue's fills, and returns one row per frame: its verdict, why when refused, and for an accepted fill
what its position needs. The caller builds the receipts from those rows.

Additive (no table changes): safe while the servers serve.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPLY = r"""
CREATE OR REPLACE FUNCTION apply_delivery_reports(
    p_devices uuid[], p_frames text[], p_delivery_ids uuid[], p_stages text[], p_reasons text[],
    p_tickets text[], p_prices text[], p_volumes text[], p_fill_times timestamptz[], p_event_ids uuid[],
    p_now timestamptz
) RETURNS TABLE (
    o_verdict text, o_problem text, o_state text, o_signal_id uuid, o_instrument text, o_side text,
    o_remaining numeric, o_volume_step numeric, o_volume_max numeric
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    -- The deliveries named, locked, as parallel arrays (k is a delivery's index in them).
    ids uuid[]; owners uuid[]; signals uuid[]; instruments text[]; sides text[]; attempts integer[];
    states text[]; reasons text[]; sent boolean[]; volumes numeric[]; steps numeric[]; maxes numeric[];
    filled numeric[]; changed boolean[];
    recorded text[];  -- device/frame keys recorded before, and accepted earlier in this batch
    fills text[];     -- fills recorded (delivery, ticket, price, volume, time): the same again is a DUPLICATE
    -- The events to insert.
    e_ids uuid[] := '{}'; e_devices uuid[] := '{}'; e_frames text[] := '{}'; e_kinds text[] := '{}';
    e_deliveries uuid[] := '{}'; e_stages text[] := '{}'; e_bodies jsonb[] := '{}';
    e_times timestamptz[] := '{}';
    fill record;
    i integer; k integer; frame_key text; fill_key text; stage text; current_state text; volume numeric;
    verdict text; body jsonb;
BEGIN
    SELECT array_agg(x.id ORDER BY x.id), array_agg(x.device_id ORDER BY x.id), array_agg(x.signal_id ORDER BY x.id),
           array_agg(x.instrument ORDER BY x.id), array_agg(x.side ORDER BY x.id), array_agg(x.attempt ORDER BY x.id),
           array_agg(x.state ORDER BY x.id), array_agg(x.state_reason ORDER BY x.id),
           array_agg(x.sent ORDER BY x.id), array_agg(x.volume ORDER BY x.id), array_agg(x.step ORDER BY x.id),
           array_agg(x.max ORDER BY x.id), array_agg(0::numeric ORDER BY x.id), array_agg(false ORDER BY x.id)
    INTO ids, owners, signals, instruments, sides, attempts, states, reasons, sent, volumes, steps, maxes, filled,
         changed
    FROM (
        -- The symbol's volume step and maximum from the device's Hello (checked when it came; anything
        -- but a plain positive decimal counts as unsaid).
        SELECT d.id, d.device_id, d.signal_id, d.instrument, d.side, d.attempt, d.state, d.state_reason,
               d.sent_at IS NOT NULL AS sent, d.volume,
               CASE WHEN s.step ~ '^[0-9]+(\.[0-9]+)?$' THEN nullif(s.step::numeric, 0) END AS step,
               CASE WHEN s.max ~ '^[0-9]+(\.[0-9]+)?$' THEN nullif(s.max::numeric, 0) END AS max
        FROM deliveries d
        JOIN devices v ON v.id = d.device_id
        CROSS JOIN LATERAL (
            SELECT v.last_hello -> 'symbols' -> d.instrument ->> 'volume_step' AS step,
                   v.last_hello -> 'symbols' -> d.instrument ->> 'volume_max' AS max
        ) AS s
        WHERE d.id = ANY(p_delivery_ids) AND d.device_id = ANY(p_devices)
        ORDER BY d.id
        FOR UPDATE OF d
    ) AS x;
    ids := coalesce(ids, '{}');

    SELECT coalesce(array_agg(e.device_id::text || '/' || e.frame_id), '{}') INTO recorded
    FROM execution_events e
    WHERE e.device_id = ANY(p_devices) AND e.frame_id = ANY(p_frames);

    fills := '{}';
    FOR fill IN
        SELECT e.delivery_id, e.body ->> 'broker_ticket' AS ticket, e.body ->> 'price' AS price,
               e.body ->> 'volume' AS volume, e.event_time
        FROM execution_events e
        WHERE e.delivery_id = ANY(ids) AND e.kind = 'FILL'
    LOOP
        k := array_position(ids, fill.delivery_id);
        filled[k] := filled[k] + coalesce(fill.volume::numeric, 0);
        fills := fills || concat_ws('|', fill.delivery_id, fill.ticket, fill.price, fill.volume,
                                    coalesce(fill.event_time::text, ''));
    END LOOP;

    FOR i IN 1 .. coalesce(array_length(p_frames, 1), 0) LOOP
        o_verdict := NULL; o_problem := NULL; o_state := NULL; o_signal_id := NULL; o_instrument := NULL;
        o_side := NULL; o_remaining := NULL; o_volume_step := NULL; o_volume_max := NULL;
        frame_key := p_devices[i]::text || '/' || p_frames[i];
        IF frame_key = ANY(recorded) THEN
            o_verdict := 'DUPLICATE';
            RETURN NEXT;
            CONTINUE;
        END IF;
        k := array_position(ids, p_delivery_ids[i]);
        IF k IS NULL OR owners[k] <> p_devices[i] THEN  -- another device's delivery is not found either
            o_verdict := 'REJECTED'; o_problem := 'NOT_FOUND';
            RETURN NEXT;
            CONTINUE;
        END IF;
        stage := p_stages[i];
        -- Cancelled on its way: the device's word wins, as after EXPIRED.
        current_state := CASE WHEN states[k] = 'CANCELLED' AND sent[k] THEN 'SENT' ELSE states[k] END;
        verdict := CASE
            WHEN current_state IN ('SKIPPED', 'CANCELLED', 'FAILED') THEN 'REJECTED'
            WHEN current_state = 'REJECTED' THEN CASE WHEN stage = 'FILLED' THEN 'REJECTED' ELSE 'DUPLICATE' END
            WHEN stage = 'REJECTED' THEN CASE WHEN current_state = 'FILLED' THEN 'REJECTED' ELSE 'ACCEPTED' END
            -- How far along the way to a fill: EXPIRED counts as not received.
            WHEN (CASE stage WHEN 'RECEIVED' THEN 1 WHEN 'PLACED' THEN 2 WHEN 'FILLED' THEN 3 ELSE 0 END)
               > (CASE current_state WHEN 'RECEIVED' THEN 1 WHEN 'PLACED' THEN 2 WHEN 'FILLED' THEN 3 ELSE 0 END)
                THEN 'ACCEPTED'
            ELSE 'DUPLICATE'
        END;
        IF stage = 'FILLED' THEN
            fill_key := concat_ws('|', p_delivery_ids[i], p_tickets[i], p_prices[i], p_volumes[i],
                                  coalesce(p_fill_times[i]::text, ''));
            IF current_state = 'FILLED' THEN  -- a partial fill, unless it repeats a recorded one exactly
                verdict := CASE WHEN fill_key = ANY(fills) THEN 'DUPLICATE' ELSE 'ACCEPTED' END;
            END IF;
            IF verdict = 'ACCEPTED' THEN
                -- A delivery's fills together never exceed its volume; each a multiple of the symbol's
                -- step, at most its maximum.
                volume := p_volumes[i]::numeric;
                o_remaining := volumes[k] - filled[k];
                o_volume_step := steps[k];
                o_volume_max := maxes[k];
                o_problem := CASE
                    WHEN volume <= 0 THEN 'VOLUME_NOT_POSITIVE'
                    WHEN volume > o_remaining THEN 'VOLUME_OVER_REMAINING'
                    WHEN steps[k] IS NOT NULL AND volume % steps[k] <> 0 THEN 'VOLUME_OFF_STEP'
                    WHEN maxes[k] IS NOT NULL AND volume > maxes[k] THEN 'VOLUME_OVER_MAX'
                END;
                IF o_problem IS NOT NULL THEN
                    o_verdict := 'REJECTED';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
            END IF;
        END IF;
        IF verdict <> 'ACCEPTED' THEN
            o_verdict := verdict;
            IF verdict = 'REJECTED' THEN
                o_problem := 'INVALID_TRANSITION'; o_state := states[k];
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;
        states[k] := stage;
        changed[k] := true;
        recorded := recorded || frame_key;
        body := jsonb_build_object('attempt', attempts[k]);
        IF stage = 'FILLED' THEN
            body := body || jsonb_build_object('price', p_prices[i], 'volume', p_volumes[i],
                                               'broker_ticket', p_tickets[i]);
            fills := fills || fill_key;
            filled[k] := filled[k] + volume;
        ELSIF p_reasons[i] <> '' THEN
            body := body || jsonb_build_object('reason', p_reasons[i]);
        END IF;
        IF stage = 'REJECTED' THEN
            reasons[k] := coalesce(nullif(p_reasons[i], ''), 'rejected by the device');
        END IF;
        e_ids := e_ids || p_event_ids[i];
        e_devices := e_devices || p_devices[i];
        e_frames := e_frames || p_frames[i];
        e_kinds := e_kinds || CASE WHEN stage = 'FILLED' THEN 'FILL' ELSE 'ACK' END;
        e_deliveries := e_deliveries || p_delivery_ids[i];
        e_stages := e_stages || stage;
        e_bodies := e_bodies || body;
        e_times := e_times || CASE WHEN stage = 'FILLED' THEN p_fill_times[i] END;
        o_verdict := 'ACCEPTED'; o_signal_id := signals[k]; o_instrument := instruments[k]; o_side := sides[k];
        RETURN NEXT;
    END LOOP;

    IF array_length(e_ids, 1) IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO execution_events (id, device_id, frame_id, kind, delivery_id, stage, body, event_time, received_at)
    SELECT e.id, e.device_id, e.frame_id, e.kind, e.delivery_id, e.stage, e.body, e.event_time, p_now
    FROM unnest(e_ids, e_devices, e_frames, e_kinds, e_deliveries, e_stages, e_bodies, e_times)
        WITH ORDINALITY AS e(id, device_id, frame_id, kind, delivery_id, stage, body, event_time, n)
    ORDER BY e.n;
    -- Each fill queued for commission accrual (the worker accrues it, off this transaction).
    INSERT INTO commission_queue (fill_event_id, device_id, delivery_id, lots, filled_at)
    SELECT e.id, e.device_id, e.delivery_id, (e.body ->> 'volume')::numeric, p_now
    FROM unnest(e_ids, e_devices, e_kinds, e_deliveries, e_bodies) AS e(id, device_id, kind, delivery_id, body)
    WHERE e.kind = 'FILL';
    UPDATE deliveries d
    SET state = u.state, state_reason = u.reason, updated_at = p_now
    FROM unnest(ids, states, reasons, changed) AS u(id, state, reason, changed)
    WHERE d.id = u.id AND u.changed;
END
$$
"""


def upgrade() -> None:
    op.execute(APPLY)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION apply_delivery_reports(uuid[], text[], uuid[], text[], text[], text[], text[], text[],"
        " timestamptz[], uuid[], timestamptz)"
    )
