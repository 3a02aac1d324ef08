"""``signalhub admin alerts`` and ``signalhub admin audit``: the alerts the server raised and the audit log,
through AuditService, with an admin's API token (a demo file's ``admin_token``). Client calls like every
user command (``backoffice.cli.calls``), not the database-side ``admin`` commands; each prints every page,
newest first.
"""

from __future__ import annotations

import argparse
import uuid

from backoffice.cli import calls
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc

ALERT_STATUSES = calls.choices(pb.AlertStatus)
ALERT_KINDS = calls.choices(pb.AlertKind)


def add_commands(admin: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``alerts`` and ``audit`` to the ``admin`` commands; each sets ``run``."""
    common = calls.caller_arguments()
    alerts = admin.add_parser("alerts", parents=[common], help="the alerts raised, newest first (admin's API token)")
    alerts.add_argument("--status", choices=sorted(ALERT_STATUSES), help="only open or only resolved alerts")
    alerts.add_argument("--kind", choices=sorted(ALERT_KINDS), help="only alerts of this kind")
    alerts.add_argument("--device", type=uuid.UUID, metavar="ID", help="only alerts about this device")
    alerts.set_defaults(run=run_alerts)

    audit = admin.add_parser("audit", parents=[common], help="the audit log, newest first (admin's API token)")
    audit.add_argument("--actor", type=uuid.UUID, metavar="ID", help="only changes by this user, producer or device")
    audit.add_argument("--object-type", default="", metavar="TYPE", help="only changes to this kind of object (device)")
    audit.add_argument("--object", type=uuid.UUID, metavar="ID", help="only changes to this object")
    audit.add_argument("--action", default="", help="only this action (e.g. RevokeDevice)")
    audit.set_defaults(run=run_audit)


def run_alerts(args: argparse.Namespace) -> None:
    request = pb.ListAlertsRequest(
        status=ALERT_STATUSES.get(args.status or "", pb.ALERT_STATUS_UNSPECIFIED),
        kind=ALERT_KINDS.get(args.kind or "", pb.ALERT_KIND_UNSPECIFIED),
        device_id=str(args.device or ""),
    )
    calls.every_page(args, rpc.AuditServiceStub, lambda stub: stub.ListAlerts, request, "alerts", admin=True)


def run_audit(args: argparse.Namespace) -> None:
    request = pb.ListAuditEventsRequest(
        actor_id=str(args.actor or ""),
        object_type=args.object_type,
        object_id=str(args.object or ""),
        action=args.action,
    )
    calls.every_page(args, rpc.AuditServiceStub, lambda stub: stub.ListAuditEvents, request, "audit_events", admin=True)
