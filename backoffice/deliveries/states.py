"""Groups of delivery states that more than one step of the lifecycle asks about."""

from __future__ import annotations

from backoffice.models import DeliveryState

# Deliveries without a RECEIVED ack: the only ones ever (re-)sent.
UNRECEIVED = (DeliveryState.PENDING, DeliveryState.SENT)
# What a device may still report a fill for.
MAY_FILL = (*UNRECEIVED, DeliveryState.RECEIVED, DeliveryState.PLACED, DeliveryState.EXPIRED)
EXPIRED_REASON = "expire_time passed before the device received it"
