"""A device's risk policy: what its owner asks for (a draft), its validation, and the typed record that
the limit evaluation and the approval guards read. A device without a stored policy has the empty one.

Each stored limit carries a ``key``, a digest of what it is (period, metric, amounts, action), which
names it in its stopouts, and ``set_at``, when it was first set: an identical limit kept across an
update keeps its ``set_at``, because a LIFETIME limit measures from then."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit
from backoffice.models import Device, RiskAction, RiskMetric, RiskPeriod, RiskPolicy, Side
from backoffice.platform.auth import Caller
from backoffice.platform.db import any_id
from signalhub.protocol.errors import InvalidArgument, NotFound
from signalhub.protocol.wire import decimal_text, parse_optional_decimal

MAX_LIMITS = 10
MAX_PERCENT = Decimal(100)
_SIDES_ORDER = (Side.BUY, Side.SELL)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def limit_key(
    period: RiskPeriod,
    metric: RiskMetric,
    max_amount: Decimal | None,
    max_percent: Decimal | None,
    action: RiskAction,
) -> str:
    """A stable digest of what a limit is. Amounts are normalised first, so "5" and "5.00" are the same
    limit (and keep its set_at and its stopouts)."""
    canonical = json.dumps(
        [period.value, metric.value, _canonical(max_amount), _canonical(max_percent), action.value],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(value: Decimal | None) -> str:
    return "" if value is None else format(value.normalize(), "f")


@dataclass(frozen=True)
class Limit:
    """One limit of a policy: reached when ``metric`` over ``period`` is at least ``max_amount`` (account
    currency) or at least ``max_percent`` of its reference; at least one of the two is set."""

    period: RiskPeriod
    metric: RiskMetric
    max_amount: Decimal | None
    max_percent: Decimal | None
    action: RiskAction
    key: str  # names the limit in stopouts.limit_key
    set_at: datetime  # when it was first set: a LIFETIME limit measures from then

    @classmethod
    def of(
        cls,
        period: RiskPeriod,
        metric: RiskMetric,
        max_amount: Decimal | None,
        max_percent: Decimal | None,
        action: RiskAction,
        set_at: datetime,
    ) -> Limit:
        """A limit with its key computed from what it is."""
        key = limit_key(period, metric, max_amount, max_percent, action)
        return cls(period, metric, max_amount, max_percent, action, key, set_at)

    def to_json(self) -> dict[str, Any]:
        """The limit as risk_policies.limits (and a stopout's ``limit``) stores it."""
        return {
            "key": self.key,
            "period": self.period.value,
            "metric": self.metric.value,
            "max_amount": decimal_text(self.max_amount) or None,
            "max_percent": decimal_text(self.max_percent) or None,
            "action": self.action.value,
            "set_at": self.set_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limit:
        """A stored limit. A stopout's copy may lack ``key`` or ``set_at``: the key is then recomputed and
        ``set_at`` is the epoch's start (a stopout never reads it)."""
        period, metric, action = RiskPeriod(data["period"]), RiskMetric(data["metric"]), RiskAction(data["action"])
        amount, percent = _stored_decimal(data.get("max_amount")), _stored_decimal(data.get("max_percent"))
        key = data.get("key") or limit_key(period, metric, amount, percent, action)
        set_at = datetime.fromisoformat(data["set_at"]) if data.get("set_at") else _EPOCH
        return cls(period, metric, amount, percent, action, str(key), set_at)


def _stored_decimal(value: object) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


@dataclass(frozen=True)
class Policy:
    """A device's risk policy. Every number 0 (or None) means no limit; empty ``allowed_sides`` allows
    both sides. ``updated_at`` is None for a device that never had one (the empty policy)."""

    device_id: uuid.UUID
    limits: tuple[Limit, ...] = ()
    max_open_positions: int = 0
    max_open_positions_per_instrument: int = 0
    max_volume: Decimal | None = None
    max_deviation: Decimal | None = None
    max_delay_seconds: int = 0
    allowed_sides: frozenset[Side] = frozenset()
    updated_at: datetime | None = None

    @property
    def is_empty(self) -> bool:
        """Nothing is limited."""
        return replace(self, updated_at=None) == Policy(self.device_id)

    def allows_side(self, side: Side) -> bool:
        return not self.allowed_sides or side in self.allowed_sides

    def sides_in_order(self) -> tuple[Side, ...]:
        return tuple(side for side in _SIDES_ORDER if side in self.allowed_sides)


@dataclass(frozen=True)
class LimitDraft:
    """One limit as a request states it: enums None when unset (or unknown), amounts as decimal text."""

    period: RiskPeriod | None = None
    metric: RiskMetric | None = None
    max_amount: str = ""
    max_percent: str = ""
    action: RiskAction | None = None


@dataclass(frozen=True)
class PolicyDraft:
    """A whole policy as a request states it, before validation; a side None was unset (or unknown)."""

    limits: tuple[LimitDraft, ...] = ()
    max_open_positions: int = 0
    max_open_positions_per_instrument: int = 0
    max_volume: str = ""
    max_deviation: str = ""
    max_delay_seconds: int = 0
    allowed_sides: tuple[Side | None, ...] = ()


def validate_policy(draft: PolicyDraft, device_id: uuid.UUID, now: datetime, path: str = "policy") -> Policy:
    """The policy ``draft`` describes, its limits set at ``now``; INVALID_ARGUMENT with one violation per
    bad field, named by its path under ``path`` (``policy.limits[0].max_percent``)."""
    violations: list[tuple[str, str]] = []
    limits: list[Limit] = []
    if len(draft.limits) > MAX_LIMITS:
        violations.append((f"{path}.limits", f"at most {MAX_LIMITS} limits"))
    else:
        seen: dict[str, int] = {}
        for index, limit_draft in enumerate(draft.limits):
            limit = _validate_limit(limit_draft, f"{path}.limits[{index}]", now, violations)
            if limit is None:
                continue
            if limit.key in seen:
                violations.append((f"{path}.limits[{index}]", f"the same limit as {path}.limits[{seen[limit.key]}]"))
                continue
            seen[limit.key] = index
            limits.append(limit)
    for name in ("max_open_positions", "max_open_positions_per_instrument", "max_delay_seconds"):
        if getattr(draft, name) < 0:
            violations.append((f"{path}.{name}", "must not be negative (0: no limit)"))
    max_volume = _decimal(draft.max_volume, f"{path}.max_volume", violations)
    max_deviation = _decimal(draft.max_deviation, f"{path}.max_deviation", violations)
    if len(draft.allowed_sides) > len(_SIDES_ORDER):  # one violation, however long the list
        violations.append((f"{path}.allowed_sides", "at most BUY and SELL"))
    else:
        for index, side in enumerate(draft.allowed_sides):
            if side is None:
                violations.append((f"{path}.allowed_sides[{index}]", "BUY or SELL"))
    if violations:
        raise InvalidArgument(violations)
    return Policy(
        device_id,
        tuple(limits),
        draft.max_open_positions,
        draft.max_open_positions_per_instrument,
        max_volume,
        max_deviation,
        draft.max_delay_seconds,
        frozenset(side for side in draft.allowed_sides if side is not None),
        now,
    )


def _validate_limit(draft: LimitDraft, path: str, now: datetime, violations: list[tuple[str, str]]) -> Limit | None:
    """One limit of a draft, or None (its violations added) when it is bad."""
    before = len(violations)
    if draft.period is None:
        violations.append((f"{path}.period", "required: DAY, WEEK, MONTH or LIFETIME"))
    if draft.metric is None:
        violations.append((f"{path}.metric", "required: LOSS or DRAWDOWN"))
    if draft.action is None:
        violations.append((f"{path}.action", "required: STOP_OPENING or CLOSE_ALL"))
    amount = _decimal(draft.max_amount, f"{path}.max_amount", violations)
    percent = _decimal(draft.max_percent, f"{path}.max_percent", violations)
    if percent is not None and percent > MAX_PERCENT:
        violations.append((f"{path}.max_percent", "at most 100"))
    if not draft.max_amount.strip() and not draft.max_percent.strip():
        violations.append((f"{path}.max_amount", "set max_amount, max_percent or both"))
    if len(violations) > before:
        return None
    assert draft.period is not None and draft.metric is not None and draft.action is not None
    return Limit.of(draft.period, draft.metric, amount, percent, draft.action, now)


def _decimal(text: str, path: str, violations: list[tuple[str, str]]) -> Decimal | None:
    try:
        return parse_optional_decimal(text, path)
    except InvalidArgument as error:
        violations.extend(error.violations)
        return None


def _from_row(row: RiskPolicy) -> Policy:
    return Policy(
        row.device_id,
        tuple(Limit.from_json(limit) for limit in row.limits),
        row.max_open_positions,
        row.max_open_positions_per_instrument,
        row.max_volume,
        row.max_deviation,
        row.max_delay_seconds,
        frozenset(Side(side) for side in row.allowed_sides),
        row.updated_at,
    )


async def load_policies(session: AsyncSession, device_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Policy]:
    """The policy of each device, the empty one for a device without one, in one query."""
    ids = set(device_ids)
    found = await stored_policies(session, ids)
    return {device_id: found.get(device_id) or Policy(device_id) for device_id in ids}


async def stored_policies(session: AsyncSession, device_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Policy]:
    """The policies set for these devices, in one query; a device without one is absent (for a fan-out to
    many devices, most of which have none)."""
    if not device_ids:
        return {}
    rows = await session.scalars(select(RiskPolicy).where(any_id(RiskPolicy.device_id, device_ids)))
    return {row.device_id: _from_row(row) for row in rows}


async def load_policy(session: AsyncSession, device_id: uuid.UUID) -> Policy:
    """The device's policy; the empty one when none was set. No visibility check: for the server's own
    guards and evaluation, never for a caller's request."""
    return (await load_policies(session, [device_id]))[device_id]


async def require_device(session: AsyncSession, caller: Caller, device_id: uuid.UUID, *, lock: bool = False) -> None:
    """NotFound unless the device exists and is the caller's (an admin's: any). ``lock`` holds its row
    without blocking rows that refer to it, so two updates of one device's policy take turns."""
    query = select(Device.id).where(Device.id == device_id)
    if not caller.is_admin:
        query = query.where(Device.user_id == caller.id)
    if lock:
        query = query.with_for_update(key_share=True)
    if await session.scalar(query) is None:
        raise NotFound("device")


async def get_policy(session: AsyncSession, caller: Caller, device_id: uuid.UUID) -> Policy:
    """The policy of a device the caller may see (the empty one when none was set)."""
    await require_device(session, caller, device_id)
    return await load_policy(session, device_id)


async def update_policy(
    session: AsyncSession,
    caller: Caller,
    device_id: uuid.UUID,
    draft: PolicyDraft,
    *,
    now: datetime,
    request_id: str = "",
) -> Policy:
    """Replace the device's whole policy with ``draft``, in the caller's transaction, audited. A limit
    identical to one of the previous policy keeps that one's ``set_at``; a new or changed one is set
    ``now``. The draft is validated before anything is read, so a bad one changes nothing."""
    validated = validate_policy(draft, device_id, now)
    await require_device(session, caller, device_id, lock=True)
    previous = {limit.key: limit.set_at for limit in (await load_policy(session, device_id)).limits}
    limits = tuple(replace(limit, set_at=previous.get(limit.key, now)) for limit in validated.limits)
    policy = replace(validated, limits=limits)
    values = {
        "limits": [limit.to_json() for limit in policy.limits],
        "max_open_positions": policy.max_open_positions,
        "max_open_positions_per_instrument": policy.max_open_positions_per_instrument,
        "max_volume": policy.max_volume,
        "max_deviation": policy.max_deviation,
        "max_delay_seconds": policy.max_delay_seconds,
        "allowed_sides": [side.value for side in policy.sides_in_order()],
        "updated_at": now,
    }
    await session.execute(
        insert(RiskPolicy)
        .values(device_id=device_id, **values)
        .on_conflict_do_update(index_elements=[RiskPolicy.device_id], set_=values)
    )
    audit.record(
        session,
        caller,
        "UpdateRiskPolicy",
        "risk_policy",
        device_id,
        details={"limits": [limit.key for limit in policy.limits]},
        request_id=request_id,
    )
    return policy
