"""The data model, shared by the back office and the gateway. Alembic (migrations/) is the schema's author;
a test fails when these models and the migrated schema differ. One module per area; every name is
re-exported here, and importing this package registers every table on ``Base.metadata``."""

from backoffice.models.accounts import (
    ApiToken,
    Producer,
    User,
)
from backoffice.models.affiliates import (
    Affiliate,
    AffiliateLedgerEntry,
    Commission,
    CommissionQueueItem,
    Payout,
    Referral,
)
from backoffice.models.base import NAMING_CONVENTION, Base
from backoffice.models.enums import (
    ActorType,
    AlertKind,
    ApprovalStatus,
    CloseCommandStatus,
    CloseReason,
    CommissionStatus,
    DeliveryState,
    DeviceStatus,
    EventKind,
    LedgerEntryKind,
    PayoutStatus,
    PositionEventKind,
    PositionStatus,
    ProducerStatus,
    Role,
    Side,
    SignalStatus,
    SizingMode,
    SubscriptionMode,
    SubscriptionStatus,
)
from backoffice.models.positions import (
    Alert,
    CloseCommand,
    Position,
    PositionEvent,
    Quote,
)
from backoffice.models.records import (
    AuditEvent,
    IdempotencyRecord,
    Nonce,
)
from backoffice.models.trading import (
    Approval,
    Delivery,
    Device,
    ExecutionEvent,
    Signal,
    Subscription,
)

# Every column that holds a vault-sealed secret, for `signalhub admin rotate-master-key`.
SEALED_COLUMNS: tuple[tuple[type[Base], str], ...] = (
    (IdempotencyRecord, "response_sealed"),
    (Producer, "secret_sealed"),
    (Producer, "previous_secret_sealed"),
    (Device, "secret_sealed"),
    (Device, "previous_secret_sealed"),
    (Payout, "method_details_sealed"),
)

__all__ = [
    "NAMING_CONVENTION",
    "SEALED_COLUMNS",
    "ActorType",
    "Affiliate",
    "AffiliateLedgerEntry",
    "Alert",
    "AlertKind",
    "ApiToken",
    "Approval",
    "ApprovalStatus",
    "AuditEvent",
    "Base",
    "CloseCommand",
    "CloseCommandStatus",
    "CloseReason",
    "Commission",
    "CommissionQueueItem",
    "CommissionStatus",
    "Delivery",
    "DeliveryState",
    "Device",
    "DeviceStatus",
    "EventKind",
    "ExecutionEvent",
    "IdempotencyRecord",
    "LedgerEntryKind",
    "Nonce",
    "Payout",
    "PayoutStatus",
    "Position",
    "PositionEvent",
    "PositionEventKind",
    "PositionStatus",
    "Producer",
    "ProducerStatus",
    "Quote",
    "Referral",
    "Role",
    "Side",
    "Signal",
    "SignalStatus",
    "SizingMode",
    "Subscription",
    "SubscriptionMode",
    "SubscriptionStatus",
    "User",
]
