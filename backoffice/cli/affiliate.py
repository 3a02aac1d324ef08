"""``signalhub affiliate ...``: AffiliateService from the command line.

Every command but ``check`` is one call (list commands: every page) through the generated stubs with a
bearer token, printed as one JSON object, as every user command does (``backoffice.cli.calls``: the token
from ``$SIGNALHUB_API_TOKEN``, else the credentials file's ``api_token``, or a demo file's ``admin_token``
for the admin commands and ``user_token`` for the others; a refusal as one line). The server decides what
the token may do (the payout decisions and ``reverse-fill`` need an admin's).

``check`` runs on the server side, over the domain like ``signalhub admin``: it recomputes every
affiliate's balances from the ledger and prints what disagrees (exit status 1 if anything does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct

from backoffice.cli import calls
from backoffice.producer.cli import uuid_text
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc


@dataclass(frozen=True)
class Call:
    """One command: the RPC, its options (names in OPTIONS), how its request is built from them, and
    whether it needs an admin's token."""

    rpc: str
    help: str
    options: tuple[str, ...]
    request: Callable[[argparse.Namespace], Message]
    admin: bool = False
    pages: str = ""  # a list RPC: the repeated field to collect from every page


def _list_call(
    rpc: str, help: str, pages: str, request: Callable[[argparse.Namespace], Message], status: str = ""
) -> Call:
    """A list: every page of ``pages``, for the caller (admins: ``--affiliate-id``), maybe by ``status``.
    ``request`` builds the concrete request type, so that mypy checks its fields."""
    options = ("affiliate_id", f"{status}_status") if status else ("affiliate_id",)
    return Call(rpc, help, options, request, pages=pages)


def _payout_decision(rpc: str, help: str, request: Callable[[argparse.Namespace], Message], *options: str) -> Call:
    """An admin's decision on a payout: its id, the further ``options``, and a request_id."""
    return Call(rpc, f"admin: {help}", ("payout_id", *options, "request_id"), request, admin=True)


CALLS: dict[str, Call] = {
    "register": Call(
        "RegisterAffiliate",
        "become an affiliate",
        ("request_id",),
        lambda a: pb.RegisterAffiliateRequest(request_id=a.request_id),
    ),
    "link": Call("GetReferralLink", "your referral code and link", (), lambda a: pb.GetReferralLinkRequest()),
    "stats": Call(
        "GetAffiliateStats",
        "referrals, lots and commission by state and month",
        ("affiliate_id",),
        lambda a: pb.GetAffiliateStatsRequest(affiliate_id=a.affiliate_id),
    ),
    "referrals": _list_call(
        "ListReferrals",
        "the users you referred",
        "referrals",
        lambda a: pb.ListReferralsRequest(affiliate_id=a.affiliate_id),
    ),
    "commissions": _list_call(
        "ListCommissions",
        "your commissions, newest first",
        "commissions",
        lambda a: pb.ListCommissionsRequest(affiliate_id=a.affiliate_id, status=_status("commission", a.status)),
        "commission",
    ),
    "payouts": _list_call(
        "ListPayouts",
        "payouts, newest first (admins: everyone's)",
        "payouts",
        lambda a: pb.ListPayoutsRequest(affiliate_id=a.affiliate_id, status=_status("payout", a.status)),
        "payout",
    ),
    "request-payout": Call(
        "RequestPayout",
        "ask for part of your available commission",
        ("amount", "method", "request_id"),
        lambda a: pb.RequestPayoutRequest(request_id=a.request_id, amount=a.amount, method_details=a.method),
    ),
    "approve-payout": _payout_decision(
        "ApprovePayout",
        "approve a requested payout",
        lambda a: pb.ApprovePayoutRequest(id=a.id, request_id=a.request_id),
    ),
    "reject-payout": _payout_decision(
        "RejectPayout",
        "reject a payout (its amount returns to the balance)",
        lambda a: pb.RejectPayoutRequest(id=a.id, request_id=a.request_id, reason=a.reason),
        "reason",
    ),
    "mark-paid": _payout_decision(
        "MarkPayoutPaid",
        "record that an approved payout was paid",
        lambda a: pb.MarkPayoutPaidRequest(id=a.id, request_id=a.request_id, payment_reference=a.reference),
        "reference",
    ),
    "reverse-fill": Call(
        "ReverseFill",
        "admin: reverse the commission of a fill (void it, or claw it back)",
        ("fill_id", "reason", "request_id"),
        lambda a: pb.ReverseFillRequest(request_id=a.request_id, execution_event_id=a.id, reason=a.reason),
        admin=True,
    ),
}


def _uuid(text: str) -> str:
    return uuid_text(text) if text else ""  # "" is not given


def _method(path: str) -> Struct:
    """How to pay, read from a JSON file (bank or wallet details stay off the command line)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read JSON from {path}: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("the method file must hold a JSON object")
    method = Struct()
    method.update(value)
    return method


# Each option a command may take: its flags and argparse's keywords.
OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "request_id": (("--request-id",), {"type": _uuid, "help": "idempotency key (default: a new UUID)"}),
    "affiliate_id": (("--affiliate-id",), {"type": _uuid, "help": "admins: this affiliate's"}),
    "commission_status": (("--status",), {"choices": ("pending", "available", "voided"), "help": "only these"}),
    "payout_status": (("--status",), {"choices": ("requested", "approved", "rejected", "paid"), "help": "only these"}),
    "amount": (("--amount",), {"required": True, "help": "decimal, in whole cents (e.g. 50.00)"}),
    "method": (("--method-file",), {"dest": "method", "type": _method, "required": True, "help": "JSON: how to pay"}),
    "payout_id": (("id",), {"type": _uuid, "help": "the payout's id"}),
    "fill_id": (("id",), {"type": _uuid, "help": "the fill's execution event id (ExecutionEvent.id)"}),
    "reason": (("--reason",), {"required": True, "help": "why (recorded, and shown to the affiliate)"}),
    "reference": (("--reference",), {"required": True, "help": "the payment's reference, e.g. a transfer id"}),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one subcommand per call, and ``check``; each sets ``run``."""
    common = calls.caller_arguments()
    commands = parser.add_subparsers(dest="affiliate_command", required=True, metavar="COMMAND", help="the call")
    for name, call in CALLS.items():
        sub = commands.add_parser(name, parents=[common], help=call.help)
        sub.set_defaults(run=run_call, call=call, status=None, affiliate_id="")
        for option in call.options:
            flags, keywords = OPTIONS[option]
            sub.add_argument(*flags, **keywords)
    check = commands.add_parser("check", help="admin, on the server: recompute every balance from the ledger")
    check.set_defaults(run=run_check)


def run_call(args: argparse.Namespace) -> None:
    call: Call = args.call
    if "request_id" in call.options and not args.request_id:
        args.request_id = str(uuid.uuid4())
    request: Any = call.request(args)  # Any: a list request of its own type, or any other request

    def method(stub: rpc.AffiliateServiceAsyncStub) -> Any:  # Any: the RPC is named at run time
        return getattr(stub, call.rpc)

    if call.pages:
        calls.every_page(args, rpc.AffiliateServiceStub, method, request, call.pages, admin=call.admin)
    else:
        calls.call(args, rpc.AffiliateServiceStub, method, request, admin=call.admin)


def run_check(args: argparse.Namespace) -> None:
    from backoffice import bootstrap
    from backoffice.affiliates import ledger
    from backoffice.cli.local import check_postgres, load_settings

    async def check() -> ledger.CheckReport:
        settings = load_settings()
        await check_postgres(settings.database_url)
        async with bootstrap.resources(settings) as res, res.sessions() as session:
            return await ledger.check(session)

    report = asyncio.run(check())
    print(json.dumps({"affiliates": report.affiliates, "entries": report.entries, "problems": list(report.problems)}))
    if report.problems:
        raise SystemExit(1)


def _status(kind: str, status: str | None) -> Any:  # Any: each generated enum has its own ValueType
    """The wire number of ``status`` ("pending") of ``kind`` ("commission"); 0 (unspecified) for none."""
    if not status:
        return 0
    return (
        pb.DESCRIPTOR.enum_types_by_name[f"{kind.capitalize()}Status"]
        .values_by_name[f"{kind.upper()}_STATUS_{status.upper()}"]
        .number
    )
