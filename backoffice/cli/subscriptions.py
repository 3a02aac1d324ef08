"""``signalhub subscriptions list|add|remove``: the producers a user follows, through ApprovalService.

``add`` subscribes to a producer, MANUAL (each signal waits in ``signalhub approvals pending``) or AUTO
(approved on arrival), with the Subscribe request's sizing options; the server checks them and names each
bad one. The token, the answer and a refusal's one line are as for every user command
(``backoffice.cli.calls``); ``list`` prints every page.
"""

from __future__ import annotations

import argparse
import uuid

from backoffice.cli import calls
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc

MODES = calls.choices(pb.SubscriptionMode)
SIZINGS = calls.choices(pb.SizingMode)
STATUSES = calls.choices(pb.SubscriptionStatus)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``list``, ``add`` and ``remove`` under ``parser``; each sets ``run``."""
    common = calls.caller_arguments()
    commands = parser.add_subparsers(dest="subscriptions_command", required=True, metavar="COMMAND", help="the call")

    listing = commands.add_parser("list", parents=[common], help="your subscriptions (admins: everyone's)")
    listing.add_argument("--producer-id", type=uuid.UUID, metavar="ID", help="only those to this producer")
    listing.add_argument("--status", choices=sorted(STATUSES), help="only those in this state")
    listing.set_defaults(run=run_list)

    add = commands.add_parser("add", parents=[common], help="follow a producer's signals")
    add.add_argument("producer_id", type=uuid.UUID, metavar="PRODUCER_ID", help="the producer to follow")
    add.add_argument(
        "--mode",
        required=True,
        choices=sorted(MODES),
        help="manual: each signal waits for your decision; auto: approved on arrival",
    )
    add.add_argument(
        "--sizing",
        choices=sorted(SIZINGS),
        help="how each device's volume is sized, with --sizing-value (default: manual has no rule, every "
        "approval names its volume; auto trades 0.01 lots)",
    )
    add.add_argument(
        "--sizing-value",
        default="",
        metavar="D",
        help="fixed-volume: lots; balance-ratio: lots per unit of balance; risk-percent: percent of equity",
    )
    add.add_argument("--max-volume", default="", metavar="LOTS", help="cap on each delivery's volume")
    add.add_argument(
        "--instrument",
        action="append",
        default=[],
        metavar="NAME",
        help="only signals on this instrument; repeat for each (default: every instrument)",
    )
    calls.add_request_id(add)
    add.set_defaults(run=run_add)

    remove = commands.add_parser("remove", parents=[common], help="stop following (unsubscribe)")
    remove.add_argument("id", type=uuid.UUID, metavar="ID", help="the subscription")
    remove.set_defaults(run=run_remove)


def run_list(args: argparse.Namespace) -> None:
    request = pb.ListSubscriptionsRequest(
        producer_id=str(args.producer_id or ""),
        status=STATUSES.get(args.status or "", pb.SUBSCRIPTION_STATUS_UNSPECIFIED),
    )
    calls.every_page(args, rpc.ApprovalServiceStub, lambda stub: stub.ListSubscriptions, request, "subscriptions")


def run_add(args: argparse.Namespace) -> None:
    request = pb.SubscribeRequest(
        request_id=calls.request_id(args),
        producer_id=str(args.producer_id),
        mode=MODES[args.mode],
        sizing=SIZINGS.get(args.sizing or "", pb.SIZING_MODE_UNSPECIFIED),
        sizing_value=args.sizing_value,
        max_volume=args.max_volume,
        instruments=args.instrument,
    )
    calls.call(args, rpc.ApprovalServiceStub, lambda stub: stub.Subscribe, request)


def run_remove(args: argparse.Namespace) -> None:
    request = pb.UnsubscribeRequest(id=str(args.id))
    calls.call(args, rpc.ApprovalServiceStub, lambda stub: stub.Unsubscribe, request)
