"""The gateway's lines in a signal's trace (the signal's id, see signalhub.protocol.logs): each instruction
sent, at DEBUG, and each device report applied, after its commit: acks at DEBUG, fills, rejections and
close results at INFO. The per-frame lines cost nothing unless DEBUG is on: the callers check
``log.isEnabledFor(logging.DEBUG)`` once per batch before calling ``sent``."""

from __future__ import annotations

import logging
import uuid

from backoffice import deliveries
from backoffice.deliveries import AckReport, CloseReport, DeviceReport, FillReport, Outcome
from backoffice.models import DeliveryState
from signalhub.protocol.wire import decimal_text

log = logging.getLogger("signalhub.gateway.trace")


def sent(device_id: uuid.UUID, order: deliveries.Order) -> None:
    """An instruction sealed and queued for its device's stream (DEBUG: one line per frame)."""
    if isinstance(order, deliveries.DeliveryOrder):
        log.debug(
            "delivery sent",
            extra={
                "trace": str(order.signal_id),
                "device_id": str(device_id),
                "delivery_id": str(order.id),
                "attempt": order.attempt,
            },
        )
    else:
        log.debug(
            "close order sent",
            extra={
                "device_id": str(device_id),
                "position_id": str(order.position_id),
                "command_id": str(order.id),
                "attempt": order.attempt,
            },
        )


def applied(item: DeviceReport, outcome: Outcome) -> None:
    """A device report committed (an accepted one carries its signal as ``outcome.trace``); runs in the
    stream's context, so the line also carries the stream's request id."""
    if outcome.trace is None:
        return
    report = item.report
    fields: dict[str, object] = {"trace": str(outcome.trace), "device_id": str(item.device_id)}
    if isinstance(report, AckReport):
        fields.update(delivery_id=str(report.delivery_id), stage=report.stage.value)
        if report.stage is DeliveryState.REJECTED:
            log.info("delivery rejected by the device", extra={**fields, "reason": report.reason})
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("ack recorded", extra=fields)
    elif isinstance(report, FillReport):
        fields.update(
            delivery_id=str(report.delivery_id),
            price=decimal_text(report.price),
            volume=decimal_text(report.volume),
            broker_ticket=report.broker_ticket,
        )
        log.info("fill recorded", extra=fields)
    elif isinstance(report, CloseReport):
        fields.update(command_id=str(report.command_id), success=report.success)
        log.info("close result recorded", extra=fields)
