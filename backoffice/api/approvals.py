"""ApprovalService: subscriptions and approvals."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import approvals, signals, subscriptions
from backoffice.api.signals import encode_signal
from backoffice.models import Approval, ApprovalStatus, SizingMode, Subscription, SubscriptionMode, SubscriptionStatus
from backoffice.platform import hints, idempotency, paging
from backoffice.platform.auth import Caller
from backoffice.platform.interceptors import current_caller
from backoffice.platform.mutations import Mutations, Wake
from backoffice.platform.vault import Vault
from signalhub.protocol import wire
from signalhub.protocol.errors import InvalidArgument
from signalhub.protocol.logs import trace_var
from signalhub.protocol.wire import parse_id, parse_optional_decimal, parse_optional_id
from signalhub.v1 import backoffice_pb2 as pb

log = logging.getLogger("signalhub.approvals")


def encode_subscription(subscription: Subscription) -> pb.Subscription:
    return pb.Subscription(
        id=str(subscription.id),
        user_id=str(subscription.user_id),
        producer_id=str(subscription.producer_id),
        mode=wire.enum_to_wire(pb.SubscriptionMode, "SUBSCRIPTION_MODE", subscription.mode),
        sizing=wire.enum_to_wire(pb.SizingMode, "SIZING_MODE", subscription.sizing_mode),
        sizing_value=wire.decimal_text(subscription.sizing_value),
        max_volume=wire.decimal_text(subscription.max_volume),
        instruments=subscription.instruments,
        status=wire.enum_to_wire(pb.SubscriptionStatus, "SUBSCRIPTION_STATUS", subscription.status),
        create_time=wire.timestamp(subscription.created_at),
        unsubscribe_time=wire.timestamp(subscription.unsubscribed_at),
    )


def encode_approval(approval: Approval, expire_time: Any = None, signal: pb.Signal | None = None) -> pb.Approval:
    return pb.Approval(
        id=str(approval.id),
        signal_id=str(approval.signal_id),
        subscription_id=str(approval.subscription_id),
        user_id=str(approval.user_id),
        status=wire.enum_to_wire(pb.ApprovalStatus, "APPROVAL_STATUS", approval.status),
        volume=wire.decimal_text(approval.volume),
        device_ids=[str(d) for d in approval.device_ids],
        auto_approved=approval.automatic,
        decided_by_user_id=str(approval.decided_by) if approval.decided_by else "",
        reason=approval.reason or "",
        create_time=wire.timestamp(approval.created_at),
        decide_time=wire.timestamp(approval.decided_at),
        expire_time=wire.timestamp(expire_time),
        signal=signal,
    )


async def _listed(session: AsyncSession, caller: Caller, rows: Sequence[Approval]) -> list[pb.Approval]:
    """A list's approvals, each with its signal's expiry and the signal as GetSignal shows it to the caller."""
    signal_ids = sorted({a.signal_id for a in rows})
    expiries = await approvals.expire_times(session, signal_ids)
    shown = {view.signal.id: encode_signal(view) for view in await signals.get_many(session, caller, signal_ids)}
    return [encode_approval(a, expiries.get(a.signal_id), shown.get(a.signal_id)) for a in rows]


class ApprovalServicer:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], vault: Vault, redis: Redis, *, max_subscriptions_per_user: int
    ) -> None:
        self._sessions = sessions
        self._mutations = Mutations(sessions, vault, redis)
        self._max_subscriptions = max_subscriptions_per_user

    async def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> pb.Subscription:
        caller = current_caller()
        terms = _decode_terms(request)

        async def subscribe(session: AsyncSession, wake: Wake) -> pb.Subscription:
            subscription = await subscriptions.subscribe(
                session, caller, terms, request.request_id, cap=self._max_subscriptions
            )
            return encode_subscription(subscription)

        return await self._mutations.run(caller.id, request, pb.Subscription, subscribe)

    async def Unsubscribe(self, request: pb.UnsubscribeRequest, context: Any) -> pb.Subscription:
        caller = current_caller()
        subscription_id = parse_id(request.id, "id")
        async with self._sessions.begin() as session:
            return encode_subscription(await subscriptions.unsubscribe(session, caller, subscription_id))

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: Any
    ) -> pb.ListSubscriptionsResponse:
        caller = current_caller()
        status = wire.optional_enum_from_wire(
            pb.SubscriptionStatus, "SUBSCRIPTION_STATUS", request.status, SubscriptionStatus, "status"
        )
        async with self._sessions() as session:
            rows, token = await subscriptions.list_subscriptions(
                session,
                caller,
                producer_id=parse_optional_id(request.producer_id, "producer_id"),
                status=status,
                page=paging.requested(request),
            )
        return pb.ListSubscriptionsResponse(subscriptions=[encode_subscription(s) for s in rows], next_page_token=token)

    async def ListPendingApprovals(
        self, request: pb.ListPendingApprovalsRequest, context: Any
    ) -> pb.ListPendingApprovalsResponse:
        caller = current_caller()
        async with self._sessions() as session:
            rows, token = await approvals.list_pending(session, caller, page=paging.requested(request))
            listed = await _listed(session, caller, rows)
        return pb.ListPendingApprovalsResponse(approvals=listed, next_page_token=token)

    async def ApproveSignal(self, request: pb.ApproveSignalRequest, context: Any) -> pb.Approval:
        caller = current_caller()
        signal_id = parse_id(request.signal_id, "signal_id")
        volume = parse_optional_decimal(request.volume, "volume")
        device_ids = [parse_id(d, f"device_ids[{i}]") for i, d in enumerate(request.device_ids)]

        decision = await approvals.approve_signal(
            self._sessions,
            self._mutations.vault,
            caller,
            idempotency.key_of(request),
            signal_id,
            volume=volume,
            device_ids=device_ids,
            request_id=request.request_id,
            respond=encode_approval,
            response_type=pb.Approval,
        )
        await self._mutations.publish(Wake(devices={hints.WAKE: list(decision.woken_devices)}))
        trace_var.set(str(signal_id))  # this call's lines, the rpc line included, carry the signal's trace
        if not decision.repeated:
            log.info("deliveries created", extra={"deliveries": len(decision.woken_devices), "approval": "manual"})
        return decision.response

    async def RejectSignal(self, request: pb.RejectSignalRequest, context: Any) -> pb.Approval:
        caller = current_caller()
        signal_id = parse_id(request.signal_id, "signal_id")

        async def reject(session: AsyncSession, wake: Wake) -> pb.Approval:
            approval = await approvals.reject_signal(
                session, caller, signal_id, reason=request.reason, request_id=request.request_id
            )
            expiries = await approvals.expire_times(session, [signal_id])
            return encode_approval(approval, expiries.get(signal_id))

        return await self._mutations.run(caller.id, request, pb.Approval, reject)

    async def ListApprovals(self, request: pb.ListApprovalsRequest, context: Any) -> pb.ListApprovalsResponse:
        caller = current_caller()
        status = wire.optional_enum_from_wire(
            pb.ApprovalStatus, "APPROVAL_STATUS", request.status, ApprovalStatus, "status"
        )
        async with self._sessions() as session:
            rows, token = await approvals.list_approvals(
                session,
                caller,
                signal_id=parse_optional_id(request.signal_id, "signal_id"),
                status=status,
                page=paging.requested(request),
            )
            listed = await _listed(session, caller, rows)
        return pb.ListApprovalsResponse(approvals=listed, next_page_token=token)


def _decode_terms(request: pb.SubscribeRequest) -> subscriptions.SubscriptionTerms:
    """The subscription terms of a Subscribe request; every bad field is named in one INVALID_ARGUMENT."""
    violations: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    checks: dict[str, Callable[[], Any]] = {
        "producer_id": lambda: parse_id(request.producer_id, "producer_id"),
        "mode": lambda: wire.enum_from_wire(
            pb.SubscriptionMode, "SUBSCRIPTION_MODE", request.mode, SubscriptionMode, "mode"
        ),
        "sizing": lambda: wire.optional_enum_from_wire(
            pb.SizingMode, "SIZING_MODE", request.sizing, SizingMode, "sizing"
        ),
        "sizing_value": lambda: parse_optional_decimal(request.sizing_value, "sizing_value"),
        "max_volume": lambda: parse_optional_decimal(request.max_volume, "max_volume"),
        "instruments": lambda: subscriptions.validate_instruments(request.instruments),
    }
    for name, check in checks.items():
        try:
            values[name] = check()
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    sizing, sizing_value = values.get("sizing"), values.get("sizing_value")
    if "sizing" in values and "sizing_value" in values and (sizing is None) != (sizing_value is None):
        missing = "sizing" if sizing is None else "sizing_value"
        violations.append((missing, "give sizing and sizing_value together, or neither"))
    if sizing is SizingMode.RISK_PERCENT and sizing_value is not None and sizing_value > 100:
        violations.append(("sizing_value", "a percentage of equity: at most 100"))
    if violations:
        raise InvalidArgument(violations)
    return subscriptions.SubscriptionTerms(**values)
