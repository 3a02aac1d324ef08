"""Test support for affiliates: affiliates and referred traders made through the stubs, fills recorded by
the gateway's own ``record_reports`` (the uplink's transaction, which queues them), and the worker's
accrual and release run with a chosen program and clock."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
from google.protobuf.struct_pb2 import Struct
from sqlalchemy import insert, select

from backoffice import deliveries, models
from backoffice.affiliates import accrual
from backoffice.affiliates.program import Program, Tier
from backoffice.bootstrap import Resources
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.conftest import KeyCredentials, UserCredentials, make_device, make_user
from tests.gateway.support import Book

IBAN = "DE89370400440532013000"
# Small tiers, so a few fills cross them: 5.00 a lot up to 1 lot this month, 7.00 up to 2, then 10.00.
PROGRAM = Program(
    tiers=(Tier(Decimal(0), Decimal("5.00")), Tier(Decimal(1), Decimal("7.00")), Tier(Decimal(2), Decimal("10.00"))),
    hold=timedelta(days=30),
    payout_minimum=Decimal("50.00"),
    currency="USD",
    public_url="https://signalhub.example",
)


def stub(channel: grpc.aio.Channel) -> rpc.AffiliateServiceStub:
    return rpc.AffiliateServiceStub(channel)


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Affiliate:
    user: UserCredentials
    id: str
    code: str


@dataclass(frozen=True)
class Trader:
    """A referred user with one device."""

    user: UserCredentials
    device: KeyCredentials

    @property
    def device_id(self) -> uuid.UUID:
        return self.device.id


async def make_affiliate(channel: grpc.aio.Channel, res: Resources) -> Affiliate:
    user = await make_user(res)
    made = await stub(channel).RegisterAffiliate(
        pb.RegisterAffiliateRequest(request_id=new_id()), metadata=user.metadata, timeout=5
    )
    return Affiliate(user, made.id, made.referral_code)


async def create_user(
    channel: grpc.aio.Channel, admin: UserCredentials, referral_code: str, email: str | None = None
) -> pb.CreateUserResponse:
    request = pb.CreateUserRequest(
        request_id=new_id(),
        email=email or f"{uuid.uuid4().hex}@referred.test",
        role=pb.ROLE_USER,
        referral_code=referral_code,
    )
    return await rpc.AccountServiceStub(channel).CreateUser(request, metadata=admin.metadata, timeout=5)


async def make_trader(
    channel: grpc.aio.Channel, res: Resources, admin: UserCredentials, affiliate: Affiliate | None
) -> Trader:
    """A user referred by ``affiliate`` (None: referred by nobody) with a device."""
    created = await create_user(channel, admin, affiliate.code if affiliate else "")
    user = UserCredentials(uuid.UUID(created.user.id), created.api_token, models.Role.USER)
    return Trader(user, await make_device(res, user))


async def new_deliveries(res: Resources, trader: Trader, volumes: Sequence[Decimal]) -> list[uuid.UUID]:
    """One SENT delivery of each of ``volumes`` to the trader's device, written in bulk (one signal and
    approval each)."""
    count = len(volumes)
    book = await Book.open(res, trader.user.id)
    now = datetime.now(UTC)
    signal_ids, approval_ids, delivery_ids = ([uuid.uuid4() for _ in range(count)] for _ in range(3))
    expire = now + timedelta(hours=1)
    common = {"instrument": "XAUUSD", "side": models.Side.BUY}
    async with res.sessions.begin() as session:
        await session.execute(
            insert(models.Signal),
            [
                {
                    "id": signal_id,
                    "producer_id": book.producer_id,
                    "signal_time": now,
                    "expire_time": expire,
                    "status": models.SignalStatus.OPEN,
                    **common,
                }
                for signal_id in signal_ids
            ],
        )
        await session.execute(
            insert(models.Approval),
            [
                {
                    "id": approval_id,
                    "signal_id": signal_id,
                    "subscription_id": book.subscription_id,
                    "user_id": trader.user.id,
                    "status": models.ApprovalStatus.APPROVED,
                }
                for approval_id, signal_id in zip(approval_ids, signal_ids, strict=True)
            ],
        )
        await session.execute(
            insert(models.Delivery),
            [
                {
                    "id": delivery_id,
                    "approval_id": approval_id,
                    "signal_id": signal_id,
                    "device_id": trader.device_id,
                    "volume": volume,
                    "expire_time": expire,
                    "state": models.DeliveryState.SENT,
                    "sent_at": now,
                    **{**common, "instrument": "GOLD.m"},
                }
                for delivery_id, approval_id, signal_id, volume in zip(
                    delivery_ids, approval_ids, signal_ids, volumes, strict=True
                )
            ],
        )
    return delivery_ids


async def record_fills(
    res: Resources, trader: Trader, lots: Sequence[str], *, now: datetime | None = None, batch: int = 500
) -> list[uuid.UUID]:
    """One fill of each of ``lots`` on a fresh delivery of the trader's device, recorded by the gateway's
    ``record_reports`` (which queues each fill for accrual) with the server clock at ``now``."""
    delivery_ids = await new_deliveries(res, trader, [Decimal(volume) for volume in lots])
    reports = [
        deliveries.DeviceReport(
            trader.device_id,
            f"fill-{uuid.uuid4().hex}",
            deliveries.FillReport(delivery_id, f"T-{index}", Decimal("2034.25"), Decimal(volume), None),
        )
        for index, (delivery_id, volume) in enumerate(zip(delivery_ids, lots, strict=True))
    ]
    for start in range(0, len(reports), batch):
        async with res.sessions.begin() as session:
            recorded = await deliveries.record_reports(
                session, reports[start : start + batch], now or datetime.now(UTC)
            )
        assert all(o == deliveries.ACCEPTED for o in recorded.outcomes), recorded.outcomes
    return await fill_event_ids(res, delivery_ids)


async def fill_event_ids(res: Resources, delivery_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """The FILL execution events of the deliveries, in the deliveries' order."""
    async with res.sessions() as session:
        rows = dict(
            (
                await session.execute(
                    select(models.ExecutionEvent.delivery_id, models.ExecutionEvent.id).where(
                        models.ExecutionEvent.delivery_id.in_(delivery_ids),
                        models.ExecutionEvent.kind == models.EventKind.FILL,
                    )
                )
            ).all()
        )
    return [rows[d] for d in delivery_ids]


async def accrue(res: Resources, program: Program = PROGRAM) -> int:
    """The worker's accrual round with ``program``."""
    return await accrual.drain(res.sessions, program)


async def release(res: Resources, now: datetime) -> int:
    return await accrual.release_due(res.sessions, now)


async def commissions(
    channel: grpc.aio.Channel, who: UserCredentials, affiliate_id: str = "", **filters: object
) -> list[pb.Commission]:
    """Every commission ListCommissions shows ``who``, page after page, newest first."""
    found: list[pb.Commission] = []
    token = ""
    while True:
        page = await stub(channel).ListCommissions(
            pb.ListCommissionsRequest(page_size=500, page_token=token, affiliate_id=affiliate_id, **filters),  # type: ignore[arg-type]
            metadata=who.metadata,
            timeout=30,
        )
        found.extend(page.commissions)
        token = page.next_page_token
        if not token:
            return found


async def stats(
    channel: grpc.aio.Channel, who: UserCredentials, affiliate_id: str = ""
) -> pb.GetAffiliateStatsResponse:
    return await stub(channel).GetAffiliateStats(
        pb.GetAffiliateStatsRequest(affiliate_id=affiliate_id), metadata=who.metadata, timeout=10
    )


async def money(
    channel: grpc.aio.Channel, who: UserCredentials, *names: str, affiliate_id: str = ""
) -> tuple[str, ...]:
    """The named figures of GetAffiliateStats (``commission_`` left off: "pending", "available", ...)."""
    found = await stats(channel, who, affiliate_id)
    return tuple(getattr(found, name if name == "lots" else f"commission_{name}") for name in names)


async def affiliate_and_trader(
    channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> tuple[Affiliate, Trader]:
    """A new affiliate and a new trader it referred."""
    affiliate = await make_affiliate(channel, res)
    return affiliate, await make_trader(channel, res, admin, affiliate)


def payout_request(amount: str) -> pb.RequestPayoutRequest:
    details = Struct()
    details.update({"method": "bank", "iban": IBAN})
    return pb.RequestPayoutRequest(request_id=new_id(), amount=amount, method_details=details)


async def reverse(
    channel: grpc.aio.Channel, who: UserCredentials, fill: uuid.UUID, reason: str = "broker cancelled"
) -> pb.Commission:
    request = pb.ReverseFillRequest(request_id=new_id(), execution_event_id=str(fill), reason=reason)
    return await stub(channel).ReverseFill(request, metadata=who.metadata, timeout=10)


async def ledger_kinds(res: Resources, affiliate_id: str) -> list[models.LedgerEntryKind]:
    """The kinds of the affiliate's ledger entries, in order."""
    async with res.sessions() as session:
        found = await session.scalars(
            select(models.AffiliateLedgerEntry.kind)
            .where(models.AffiliateLedgerEntry.affiliate_id == uuid.UUID(affiliate_id))
            .order_by(models.AffiliateLedgerEntry.entry_no)
        )
        return list(found.all())
