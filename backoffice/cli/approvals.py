"""``signalhub approvals pending|approve|reject``: a user's decisions on the signals of MANUAL subscriptions,
through ApprovalService.

``approve`` creates, in one transaction, a delivery per chosen ACTIVE device (every one by default), sized
by the subscription's rule unless ``--volume`` names the lots. The token, the answer and a refusal's one
line are as for every user command (``backoffice.cli.calls``); ``pending`` prints every page.
"""

from __future__ import annotations

import argparse
import uuid

from backoffice.cli import calls
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``pending``, ``approve`` and ``reject`` under ``parser``; each sets ``run``."""
    common = calls.caller_arguments()
    commands = parser.add_subparsers(dest="approvals_command", required=True, metavar="COMMAND", help="the call")

    pending = commands.add_parser("pending", parents=[common], help="signals awaiting your decision, oldest first")
    pending.set_defaults(run=run_pending)

    approve = commands.add_parser("approve", parents=[common], help="approve a signal: deliveries to your devices")
    approve.add_argument("signal_id", type=uuid.UUID, metavar="SIGNAL_ID", help="the signal")
    approve.add_argument(
        "--volume",
        default="",
        metavar="LOTS",
        help="the volume of every delivery (default: sized by the subscription's rule; required without one)",
    )
    approve.add_argument(
        "--device",
        action="append",
        default=[],
        type=uuid.UUID,
        metavar="ID",
        help="deliver to this device only; repeat for each (default: every ACTIVE device of yours)",
    )
    calls.add_request_id(approve)
    approve.set_defaults(run=run_approve)

    reject = commands.add_parser("reject", parents=[common], help="reject a signal: nothing is delivered")
    reject.add_argument("signal_id", type=uuid.UUID, metavar="SIGNAL_ID", help="the signal")
    reject.add_argument("--reason", default="", help="why (recorded)")
    calls.add_request_id(reject)
    reject.set_defaults(run=run_reject)


def run_pending(args: argparse.Namespace) -> None:
    request = pb.ListPendingApprovalsRequest()
    calls.every_page(args, rpc.ApprovalServiceStub, lambda stub: stub.ListPendingApprovals, request, "approvals")


def run_approve(args: argparse.Namespace) -> None:
    request = pb.ApproveSignalRequest(
        signal_id=str(args.signal_id),
        request_id=calls.request_id(args),
        volume=args.volume,
        device_ids=[str(device) for device in args.device],
    )
    calls.call(args, rpc.ApprovalServiceStub, lambda stub: stub.ApproveSignal, request)


def run_reject(args: argparse.Namespace) -> None:
    request = pb.RejectSignalRequest(
        signal_id=str(args.signal_id), request_id=calls.request_id(args), reason=args.reason
    )
    calls.call(args, rpc.ApprovalServiceStub, lambda stub: stub.RejectSignal, request)
