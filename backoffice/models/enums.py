"""Every enum of the data model (stored as text with a CHECK constraint)."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    ADMIN = "ADMIN"
    USER = "USER"


class ProducerStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    REVOKED = "REVOKED"


class Side(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class SignalStatus(enum.StrEnum):
    OPEN = "OPEN"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"


class SubscriptionMode(enum.StrEnum):
    MANUAL = "MANUAL"
    AUTO = "AUTO"


class SizingMode(enum.StrEnum):
    FIXED_VOLUME = "FIXED_VOLUME"
    BALANCE_RATIO = "BALANCE_RATIO"
    RISK_PERCENT = "RISK_PERCENT"


class SubscriptionStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    UNSUBSCRIBED = "UNSUBSCRIBED"


class ApprovalStatus(enum.StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


class DeviceStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"


class DeliveryState(enum.StrEnum):
    PENDING = "PENDING"  # created, not yet pushed
    SENT = "SENT"  # pushed, no RECEIVED ack yet
    RECEIVED = "RECEIVED"
    PLACED = "PLACED"
    FILLED = "FILLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"  # the server could not send it (e.g. could not be sealed)
    SKIPPED = "SKIPPED"  # sizing gave no tradable volume; the reason is recorded
    CANCELLED = "CANCELLED"  # the signal was cancelled before the device acked RECEIVED: never (re-)sent


class EventKind(enum.StrEnum):
    SENT = "SENT"  # the gateway pushed a delivery or close order (server-side: no frame_id)
    ACK = "ACK"
    FILL = "FILL"
    CLOSE_RESULT = "CLOSE_RESULT"
    EXPIRED = "EXPIRED"
    ERROR = "ERROR"
    QUOTE = "QUOTE"
    HEARTBEAT = "HEARTBEAT"
    HELLO = "HELLO"


class PositionStatus(enum.StrEnum):
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"
    CLOSED_ERROR = "CLOSED_ERROR"


class CloseReason(enum.StrEnum):
    STOP_LOSS = "STOP_LOSS"
    TAKE_PROFIT = "TAKE_PROFIT"
    MANUAL = "MANUAL"
    SIGNAL_CANCELLED = "SIGNAL_CANCELLED"
    ADMIN = "ADMIN"
    RISK_LIMIT = "RISK_LIMIT"  # a CLOSE_ALL risk limit of the device's policy was reached


class CloseCommandStatus(enum.StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


class PositionEventKind(enum.StrEnum):
    OPENED = "OPENED"
    FILL_ADDED = "FILL_ADDED"
    PROTECTION_UPDATED = "PROTECTION_UPDATED"
    TRAILING_STOP_MOVED = "TRAILING_STOP_MOVED"
    BREAKEVEN_MOVED = "BREAKEVEN_MOVED"
    CLOSE_REQUESTED = "CLOSE_REQUESTED"
    PARTIALLY_CLOSED = "PARTIALLY_CLOSED"
    CLOSED = "CLOSED"
    CLOSE_FAILED = "CLOSE_FAILED"


class AlertKind(enum.StrEnum):
    DEVICE_SILENT = "DEVICE_SILENT"  # an open position's device not heard from for long
    DEVICE_DISCONNECTED = "DEVICE_DISCONNECTED"  # a device with open positions disconnected for a while
    CLOSE_FAILED = "CLOSE_FAILED"
    RISK_STOPOUT = "RISK_STOPOUT"  # a risk limit was reached; resolved when its stopout ends


class ActorType(enum.StrEnum):
    USER = "USER"
    PRODUCER = "PRODUCER"
    DEVICE = "DEVICE"
    SYSTEM = "SYSTEM"


class CommissionStatus(enum.StrEnum):
    PENDING = "PENDING"  # in its hold period
    AVAILABLE = "AVAILABLE"
    VOIDED = "VOIDED"  # its fill was reversed (after release: clawed back)


class PayoutStatus(enum.StrEnum):
    REQUESTED = "REQUESTED"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    PAID = "PAID"


class LedgerEntryKind(enum.StrEnum):  # what each moves: backoffice/affiliates/ledger.py
    ACCRUAL = "ACCRUAL"
    HOLD_RELEASE = "HOLD_RELEASE"
    VOID = "VOID"
    CLAWBACK = "CLAWBACK"
    PAYOUT_REQUESTED = "PAYOUT_REQUESTED"
    PAYOUT_REJECTED = "PAYOUT_REJECTED"
    PAYOUT_PAID = "PAYOUT_PAID"


class RiskPeriod(enum.StrEnum):
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    LIFETIME = "LIFETIME"


class RiskMetric(enum.StrEnum):
    LOSS = "LOSS"  # the period's reference balance minus the current equity
    DRAWDOWN = "DRAWDOWN"  # the period's highest equity minus the current equity


class RiskAction(enum.StrEnum):
    STOP_OPENING = "STOP_OPENING"
    CLOSE_ALL = "CLOSE_ALL"
