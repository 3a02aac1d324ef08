"""account states stored and risk limits measured by functions in Postgres: one call per uplink batch

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Three functions, so that an uplink batch of account states is one statement, not eight round trips:

- ``store_account_states``: the newest state of each device in the arrays upserted (a newer state, or one
  that replaces a state dated ahead of the server's clock, or a device's own frame after its Hello's);
  returns the states stored.
- ``measure_risk_limits``: every limit of these devices' policies measured on their states (the rules are
  in ``backoffice.risk.limits``): the period's marks upserted, the stopouts reached inserted once (unique
  per device, limit and period start); returns the stopouts recorded now.
- ``record_account_states``: an uplink batch's AccountState frames: those recorded before (DUPLICATE), the
  states stored, the stopouts recorded. With ``p_quiet`` it raises SQLSTATE ``SHR01`` rather than record a
  stopout, so a caller running it alone (autocommit) can apply the batch in a transaction of its own that
  also raises the stopout's alert and queues its close commands; nothing of the statement remains.

Additive (no table changes): safe while the servers serve; a server of the previous release never calls
them.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STORE = """
CREATE OR REPLACE FUNCTION store_account_states(
    p_devices uuid[], p_balances numeric[], p_equities numeric[], p_margins numeric[], p_free_margins numeric[],
    p_times timestamptz[], p_frames text[], p_now timestamptz
) RETURNS TABLE (device_id uuid, balance numeric, equity numeric, state_time timestamptz)
LANGUAGE sql VOLATILE AS $$
    -- The newest of each device (the later of two equally dated), in device order: two transactions lock
    -- the same rows in the same order.
    INSERT INTO account_states AS stored
        (device_id, balance, equity, margin, free_margin, state_time, frame_id, received_at)
    SELECT DISTINCT ON (v.device_id)
        v.device_id, v.balance, v.equity, v.margin, v.free_margin, v.state_time, v.frame_id, p_now
    FROM unnest(p_devices, p_balances, p_equities, p_margins, p_free_margins, p_times, p_frames)
        WITH ORDINALITY AS v(device_id, balance, equity, margin, free_margin, state_time, frame_id, n)
    ORDER BY v.device_id, v.state_time DESC, v.n DESC
    ON CONFLICT (device_id) DO UPDATE SET
        balance = excluded.balance, equity = excluded.equity, margin = excluded.margin,
        free_margin = excluded.free_margin, state_time = excluded.state_time, frame_id = excluded.frame_id,
        received_at = excluded.received_at
    WHERE stored.state_time < excluded.state_time
       OR stored.state_time > excluded.received_at
       OR (stored.frame_id IS NULL AND excluded.frame_id IS NOT NULL)
    RETURNING stored.device_id, stored.balance, stored.equity, stored.state_time
$$
"""

MEASURE = """
CREATE OR REPLACE FUNCTION measure_risk_limits(
    p_devices uuid[], p_balances numeric[], p_equities numeric[], p_now timestamptz
) RETURNS TABLE (id uuid, device_id uuid, spec jsonb, value numeric)
LANGUAGE sql VOLATILE AS $$
    WITH states AS (
        SELECT s.device_id, s.balance, s.equity
        FROM unnest(p_devices, p_balances, p_equities) AS s(device_id, balance, equity)
    ),
    limits AS (  -- each limit of each device, with its calendar period in UTC (LIFETIME: since it was set)
        SELECT s.device_id, s.balance, s.equity, l.spec, l.spec ->> 'key' AS key, l.spec ->> 'period' AS period,
               l.spec ->> 'metric' AS metric,
               NULLIF(l.spec ->> 'max_amount', '')::numeric AS max_amount,
               NULLIF(l.spec ->> 'max_percent', '')::numeric AS max_percent,
               CASE l.spec ->> 'period'
                   WHEN 'DAY' THEN date_trunc('day', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                   WHEN 'WEEK' THEN date_trunc('week', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                   WHEN 'MONTH' THEN date_trunc('month', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                   ELSE (l.spec ->> 'set_at')::timestamptz
               END AS period_start,
               (CASE l.spec ->> 'period'
                   WHEN 'DAY' THEN date_trunc('day', p_now AT TIME ZONE 'UTC') + interval '1 day'
                   WHEN 'WEEK' THEN date_trunc('week', p_now AT TIME ZONE 'UTC') + interval '7 days'
                   WHEN 'MONTH' THEN date_trunc('month', p_now AT TIME ZONE 'UTC') + interval '1 month'
               END) AT TIME ZONE 'UTC' AS period_end
        FROM states s
        JOIN risk_policies p ON p.device_id = s.device_id
        CROSS JOIN LATERAL jsonb_array_elements(p.limits) AS l(spec)
    ),
    resets AS (  -- the latest reset of each limit
        SELECT st.device_id, st.limit_key, max(st.reset_time) AS reset_time
        FROM stopouts st
        WHERE st.device_id = ANY(p_devices) AND st.reset_time IS NOT NULL
        GROUP BY st.device_id, st.limit_key
    ),
    measured AS (  -- reset within its period: measured afresh, from the reset
        SELECT l.*, coalesce(r.reset_time >= l.period_start, false) AS afresh,
               CASE WHEN r.reset_time >= l.period_start THEN r.reset_time ELSE l.period_start END AS start
        FROM limits l
        LEFT JOIN resets r ON r.device_id = l.device_id AND r.limit_key = l.key
    ),
    wanted AS (
        SELECT m.device_id, m.period, m.start, bool_or(m.afresh) AS afresh, min(m.balance) AS balance,
               min(m.equity) AS equity
        FROM measured m
        GROUP BY m.device_id, m.period, m.start
    ),
    marks AS (  -- a new period's reference: the previous period's last balance, else this state's balance;
                -- after a reset this state's equity (what was lost before it is forgiven)
        INSERT INTO risk_marks AS mark
            (device_id, period, period_start, reference_balance, equity_high, last_balance, updated_at)
        SELECT w.device_id, w.period, w.start,
               CASE WHEN w.afresh THEN w.equity
                    WHEN previous.period_start < w.start THEN previous.last_balance
                    ELSE w.balance END,
               w.equity, w.balance, p_now
        FROM wanted w
        LEFT JOIN LATERAL (
            SELECT pm.period_start, pm.last_balance
            FROM risk_marks pm
            WHERE pm.device_id = w.device_id AND pm.period = w.period
            ORDER BY pm.period_start DESC
            LIMIT 1
        ) AS previous ON true
        ORDER BY w.device_id, w.period, w.start
        ON CONFLICT (device_id, period, period_start) DO UPDATE
        SET equity_high = greatest(mark.equity_high, excluded.equity_high), last_balance = excluded.last_balance,
            updated_at = excluded.updated_at
        RETURNING mark.device_id, mark.period, mark.period_start, mark.reference_balance, mark.equity_high
    ),
    valued AS (  -- LOSS from the reference balance, DRAWDOWN from the highest equity
        SELECT m.*, v.reference, v.reference - m.equity AS value
        FROM measured m
        JOIN marks k ON k.device_id = m.device_id AND k.period = m.period AND k.period_start = m.start
        CROSS JOIN LATERAL (
            SELECT CASE WHEN m.metric = 'LOSS' THEN k.reference_balance ELSE k.equity_high END AS reference
        ) AS v
    )
    INSERT INTO stopouts AS st
        (id, device_id, limit_key, "limit", period_start, reference, value, equity, trigger_time, end_time)
    SELECT gen_random_uuid(), v.device_id, v.key, v.spec, v.start, v.reference, v.value, v.equity, p_now, v.period_end
    FROM valued v
    WHERE (v.max_amount IS NOT NULL AND v.value >= v.max_amount)
       OR (v.max_percent IS NOT NULL AND v.reference > 0 AND v.value * 100 >= v.reference * v.max_percent)
    ORDER BY v.device_id, v.key
    ON CONFLICT (device_id, limit_key, period_start) DO NOTHING
    RETURNING st.id, st.device_id, st."limit", st.value
$$
"""

RECORD = """
CREATE OR REPLACE FUNCTION record_account_states(
    p_devices uuid[], p_balances numeric[], p_equities numeric[], p_margins numeric[], p_free_margins numeric[],
    p_times timestamptz[], p_frames text[], p_now timestamptz, p_quiet boolean
) RETURNS TABLE (
    kind text, device_id uuid, frame_id text, balance numeric, equity numeric, state_time timestamptz,
    stopout_id uuid, spec jsonb, value numeric
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    fresh_devices uuid[]; fresh_frames text[]; fresh_balances numeric[]; fresh_equities numeric[];
    fresh_margins numeric[]; fresh_free_margins numeric[]; fresh_times timestamptz[];
    stored_devices uuid[]; stored_balances numeric[]; stored_equities numeric[]; stored_times timestamptz[];
    stopouts integer;
BEGIN
    -- A frame that set a stored state before is a DUPLICATE; the rest are stored, the newest per device.
    RETURN QUERY
        SELECT 'duplicate', f.device_id, f.frame_id, NULL::numeric, NULL::numeric, NULL::timestamptz,
               NULL::uuid, NULL::jsonb, NULL::numeric
        FROM unnest(p_devices, p_frames) AS f(device_id, frame_id)
        WHERE EXISTS (SELECT 1 FROM account_states a WHERE a.device_id = f.device_id AND a.frame_id = f.frame_id);
    SELECT array_agg(f.device_id ORDER BY f.n), array_agg(f.frame_id ORDER BY f.n),
           array_agg(f.balance ORDER BY f.n), array_agg(f.equity ORDER BY f.n), array_agg(f.margin ORDER BY f.n),
           array_agg(f.free_margin ORDER BY f.n), array_agg(f.state_time ORDER BY f.n)
    INTO fresh_devices, fresh_frames, fresh_balances, fresh_equities, fresh_margins, fresh_free_margins,
         fresh_times
    FROM unnest(p_devices, p_frames, p_balances, p_equities, p_margins, p_free_margins, p_times)
        WITH ORDINALITY AS f(device_id, frame_id, balance, equity, margin, free_margin, state_time, n)
    WHERE NOT EXISTS (SELECT 1 FROM account_states a WHERE a.device_id = f.device_id AND a.frame_id = f.frame_id);
    IF fresh_devices IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(s.device_id ORDER BY s.device_id), array_agg(s.balance ORDER BY s.device_id),
           array_agg(s.equity ORDER BY s.device_id), array_agg(s.state_time ORDER BY s.device_id)
    INTO stored_devices, stored_balances, stored_equities, stored_times
    FROM store_account_states(
        fresh_devices, fresh_balances, fresh_equities, fresh_margins, fresh_free_margins, fresh_times,
        fresh_frames, p_now
    ) AS s;
    IF stored_devices IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT 'stored', s.device_id, NULL::text, s.balance, s.equity, s.state_time, NULL::uuid, NULL::jsonb,
               NULL::numeric
        FROM unnest(stored_devices, stored_balances, stored_equities, stored_times)
            AS s(device_id, balance, equity, state_time);
    RETURN QUERY
        SELECT 'stopout', m.device_id, NULL::text, NULL::numeric, NULL::numeric, NULL::timestamptz, m.id, m.spec,
               m.value
        FROM measure_risk_limits(stored_devices, stored_balances, stored_equities, p_now) AS m;
    GET DIAGNOSTICS stopouts = ROW_COUNT;
    IF p_quiet AND stopouts > 0 THEN
        RAISE EXCEPTION 'a risk limit was reached: the batch must be applied with its stopout''s consequences'
            USING ERRCODE = 'SHR01';
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(STORE)
    op.execute(MEASURE)
    op.execute(RECORD)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION record_account_states(uuid[], numeric[], numeric[], numeric[], numeric[], timestamptz[],"
        " text[], timestamptz, boolean)"
    )
    op.execute("DROP FUNCTION measure_risk_limits(uuid[], numeric[], numeric[], timestamptz)")
    op.execute(
        "DROP FUNCTION store_account_states(uuid[], numeric[], numeric[], numeric[], numeric[], timestamptz[],"
        " text[], timestamptz)"
    )
