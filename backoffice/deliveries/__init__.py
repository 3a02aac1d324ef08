"""A delivery's whole lifecycle, in one package: one instruction of one approved signal to one device.

Every function works inside the caller's transaction, but ``claim``, which is one statement of its own:

- ``recipient_columns``, ``guard_join``, ``recipient``, ``plan_for_approval`` and ``planned_columns``
  (create.py): what a delivery needs of a device (and its risk guard, guards.py) as a decision's read
  selects it; one delivery per chosen device when a signal is approved, sized per device (PENDING), or
  SKIPPED with the reason when sizing or a guard gives nothing tradable; every approval of a signal is
  planned first, then written by the decision's one function call (``backoffice.signals.submit``,
  ``backoffice.approvals.approve_signal``).
- ``cancel_for_signal`` (cancel.py): a cancelled signal's deliveries that were not received are never
  (re-)sent.

- ``claim`` (claim.py): what is due for some connected devices, oldest first, marked SENT (attempt + 1) with a SENT
  execution event. A delivery is due while it has no RECEIVED ack: when PENDING, when it was sent on an
  earlier stream (the device reconnected), or when the ack timeout passed. Nothing is sent after its
  ``expire_time``: it becomes EXPIRED, with an EXPIRED event. A close command is due while PENDING, or
  SENT without a CloseResult (it has no ack of its own) on an earlier stream, or past the ack timeout at
  most ``max_close_attempts`` sends on one stream (then ``backoffice.positions.expire_closes`` ends it): a
  device that is offline keeps its close commands until it reconnects, and sends into a dying
  connection do not use up the budget.
- ``expire_due`` (expiry.py) expires deliveries of devices that are not connected; ``due_devices`` names the devices
  with something due, for the gateway's periodic sweep (a lost wake-up hint costs latency, never data).
- ``record_reports`` (device_frames.py): a batch of device frames. Each ack, fill and close result is kept as an
  immutable execution event and applied to its delivery, close command or position, in the caller's one
  transaction (a heartbeat is presence, not a record: it is accepted and nothing is written); the caller
  commits before it answers any Receipt, then announces what the batch returned (quotes and positions
  for the monitor, alerts). A quote is market data, not a record: only the newest per symbol is kept
  (``backoffice.quotes``), and a repeat of the frame that set it is a DUPLICATE. An account state likewise:
  only the newest per device is kept (``backoffice.devices.account_states``), an older one is accepted and
  changes nothing; the statement that stores the states also measures the devices' risk limits
  (``backoffice.risk.limits``). ``record_alone`` takes a batch of acks alone, or of account states
  alone that reaches no limit, as one statement committing on its own.

What a device may report about a delivery of its own (anything else answers REJECTED, and a delivery of
another device is NOT_FOUND, exactly like an unknown one). These rules have one implementation, the
Postgres function ``apply_delivery_reports`` (migration 0011), which applies a batch's acks and fills in
one statement; device_frames.py builds the receipts from what it returns:

- RECEIVED, PLACED and FILLED move a delivery forward from PENDING, SENT or EXPIRED (the device's word
  beats the server's presumption that it never arrived: the bridge itself refuses to place late). A stage
  the delivery has already reached or passed is a DUPLICATE (e.g. RECEIVED after FILLED, an ack that
  arrived late); nothing is recorded or changed. A further fill of a FILLED delivery is a partial fill
  and adds to its position, unless it repeats a recorded fill exactly (ticket, price, volume, time):
  then it is a DUPLICATE. A delivery's fills together never exceed its volume, and each is a multiple
  of the symbol's volume step and at most its maximum (from the device's Hello): a fill beyond that is
  REJECTED (INVALID_ARGUMENT on ``fill.volume``, reason FILL_VOLUME_REFUSED) and changes nothing, so
  neither positions nor commissions can be minted by reporting more.
- REJECTED ends a delivery that is not FILLED; after REJECTED, further acks are DUPLICATEs and a fill is
  refused. REJECTED after FILLED is refused too: both are conflicts a person must look at.
- Deliveries that were never sent (SKIPPED, CANCELLED before it was sent, FAILED) accept nothing. One
  cancelled after it was sent counts as SENT: the bridge may have placed it, and a real fill is recorded
  (its position is closed at once, see ``backoffice.positions.open_positions``).

A close command accepts one result: SUCCEEDED or FAILED (also after it EXPIRED without one: the device's
word about the broker wins); the same outcome again is a DUPLICATE, the other one is refused. Frames that
are refused are not recorded.
"""

from backoffice.deliveries.cancel import cancel_for_signal
from backoffice.deliveries.claim import (
    DEFAULT_CLOSE_ATTEMPTS,
    Claim,
    ClaimRequest,
    CloseOrder,
    DeliveryOrder,
    Order,
    claim,
)
from backoffice.deliveries.create import (
    Planned,
    Recipient,
    guard_join,
    plan_for_approval,
    planned_columns,
    recipient,
    recipient_columns,
)
from backoffice.deliveries.device_frames import (
    ACCEPTED,
    DUPLICATE,
    AccountStateReport,
    AckReport,
    CloseReport,
    DeviceReport,
    FillReport,
    HeartbeatReport,
    Outcome,
    QuoteReport,
    Recorded,
    Report,
    Verdict,
    record_alone,
    record_reports,
)
from backoffice.deliveries.expiry import due_devices, expire_due
from backoffice.deliveries.guards import GUARD_COLUMNS, DeviceGuard, Guards, serialized
from backoffice.deliveries.guards import capped as guards_capped
from backoffice.deliveries.guards import counted as guards_counted
from backoffice.deliveries.states import EXPIRED_REASON, MAY_FILL, UNRECEIVED

__all__ = [
    "ACCEPTED",
    "DEFAULT_CLOSE_ATTEMPTS",
    "DUPLICATE",
    "EXPIRED_REASON",
    "GUARD_COLUMNS",
    "MAY_FILL",
    "UNRECEIVED",
    "AccountStateReport",
    "AckReport",
    "Claim",
    "ClaimRequest",
    "CloseOrder",
    "CloseReport",
    "DeliveryOrder",
    "DeviceGuard",
    "DeviceReport",
    "FillReport",
    "Guards",
    "HeartbeatReport",
    "Order",
    "Outcome",
    "Planned",
    "QuoteReport",
    "Recipient",
    "Recorded",
    "Report",
    "Verdict",
    "cancel_for_signal",
    "claim",
    "due_devices",
    "expire_due",
    "guard_join",
    "guards_capped",
    "guards_counted",
    "plan_for_approval",
    "planned_columns",
    "recipient",
    "recipient_columns",
    "record_alone",
    "record_reports",
    "serialized",
]
