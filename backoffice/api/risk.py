"""RiskService."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import models, risk
from backoffice.platform import paging
from backoffice.platform.interceptors import current_caller
from backoffice.platform.mutations import Mutations, Wake
from backoffice.platform.vault import Vault
from signalhub.protocol import wire
from signalhub.protocol.errors import InvalidArgument
from signalhub.protocol.wire import parse_id
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2

EnumT = TypeVar("EnumT", bound=enum.Enum)
_PERIOD, _METRIC, _ACTION, _SIDE = "RISK_PERIOD", "RISK_METRIC", "RISK_ACTION", "SIDE"


def _known(wire_enum: Any, prefix: str, number: int, domain: type[EnumT]) -> EnumT | None:
    """The domain value of a wire enum number; None for UNSPECIFIED or a number the contract lacks (the
    domain's validation names the field)."""
    try:
        return wire.enum_from_wire(wire_enum, prefix, number, domain, prefix)
    except InvalidArgument:
        return None


def decode_policy(message: pb.RiskPolicy) -> risk.PolicyDraft:
    return risk.PolicyDraft(
        limits=tuple(
            risk.LimitDraft(
                period=_known(pb.RiskPeriod, _PERIOD, limit.period, models.RiskPeriod),
                metric=_known(pb.RiskMetric, _METRIC, limit.metric, models.RiskMetric),
                max_amount=limit.max_amount,
                max_percent=limit.max_percent,
                action=_known(pb.RiskAction, _ACTION, limit.action, models.RiskAction),
            )
            for limit in message.limits
        ),
        max_open_positions=message.max_open_positions,
        max_open_positions_per_instrument=message.max_open_positions_per_instrument,
        max_volume=message.max_volume,
        max_deviation=message.max_deviation,
        max_delay_seconds=message.max_delay_seconds,
        allowed_sides=tuple(_known(common_pb2.Side, _SIDE, side, models.Side) for side in message.allowed_sides),
    )


def encode_limit(limit: risk.Limit) -> pb.RiskLimit:
    return pb.RiskLimit(
        period=wire.enum_to_wire(pb.RiskPeriod, _PERIOD, limit.period),
        metric=wire.enum_to_wire(pb.RiskMetric, _METRIC, limit.metric),
        max_amount=wire.decimal_text(limit.max_amount),
        max_percent=wire.decimal_text(limit.max_percent),
        action=wire.enum_to_wire(pb.RiskAction, _ACTION, limit.action),
    )


def encode_policy(policy: risk.Policy) -> pb.RiskPolicy:
    return pb.RiskPolicy(
        device_id=str(policy.device_id),
        limits=[encode_limit(limit) for limit in policy.limits],
        max_open_positions=policy.max_open_positions,
        max_open_positions_per_instrument=policy.max_open_positions_per_instrument,
        max_volume=wire.decimal_text(policy.max_volume),
        max_deviation=wire.decimal_text(policy.max_deviation),
        max_delay_seconds=policy.max_delay_seconds,
        allowed_sides=[wire.enum_to_wire(common_pb2.Side, _SIDE, side) for side in policy.sides_in_order()],
    )


def encode_stopout(stopout: models.Stopout, now: datetime) -> pb.Stopout:
    return pb.Stopout(
        id=str(stopout.id),
        device_id=str(stopout.device_id),
        limit=encode_limit(risk.limit_of(stopout)),
        reference=wire.decimal_text(stopout.reference),
        value=wire.decimal_text(stopout.value),
        equity=wire.decimal_text(stopout.equity),
        trigger_time=wire.timestamp(stopout.trigger_time),
        end_time=wire.timestamp(stopout.end_time),
        reset_time=wire.timestamp(stopout.reset_time),
        active=risk.is_active(stopout, now),
    )


class RiskServicer:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], vault: Vault) -> None:
        self._sessions = sessions
        self._mutations = Mutations(sessions, vault)

    async def GetRiskPolicy(self, request: pb.GetRiskPolicyRequest, context: Any) -> pb.RiskPolicy:
        caller = current_caller()
        device_id = parse_id(request.device_id, "device_id")
        async with self._sessions() as session:
            return encode_policy(await risk.get_policy(session, caller, device_id))

    async def UpdateRiskPolicy(self, request: pb.UpdateRiskPolicyRequest, context: Any) -> pb.RiskPolicy:
        caller = current_caller()
        device_id = parse_id(request.policy.device_id, "policy.device_id")
        draft = decode_policy(request.policy)

        async def update(session: AsyncSession, wake: Wake) -> pb.RiskPolicy:
            policy = await risk.update_policy(
                session, caller, device_id, draft, now=datetime.now(UTC), request_id=request.request_id
            )
            return encode_policy(policy)

        return await self._mutations.run(caller.id, request, pb.RiskPolicy, update)

    async def ListStopouts(self, request: pb.ListStopoutsRequest, context: Any) -> pb.ListStopoutsResponse:
        caller = current_caller()
        device_id = parse_id(request.device_id, "device_id")
        now = datetime.now(UTC)
        async with self._sessions() as session:
            found, token = await risk.list_stopouts(
                session, caller, device_id, active_only=request.active_only, now=now, page=paging.requested(request)
            )
        return pb.ListStopoutsResponse(stopouts=[encode_stopout(s, now) for s in found], next_page_token=token)

    async def ResetStopout(self, request: pb.ResetStopoutRequest, context: Any) -> pb.Stopout:
        caller = current_caller()
        stopout_id = parse_id(request.id, "id")

        async def reset(session: AsyncSession, wake: Wake) -> pb.Stopout:
            now = datetime.now(UTC)
            stopout = await risk.reset_stopout(session, caller, stopout_id, now=now, request_id=request.request_id)
            return encode_stopout(stopout, now)

        return await self._mutations.run(caller.id, request, pb.Stopout, reset)
