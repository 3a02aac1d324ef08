"""``signalhub positions list|close|protect``: a user's positions through PositionService, as that user.

The API token comes from the environment variable ``SIGNALHUB_API_TOKEN``, else from ``--credentials FILE``
(JSON with ``user_token`` and optionally ``backoffice``, like the ``.signalhub/demo.json`` that
``signalhub up`` writes, which is the default when present); never from an argument, which anyone on the
machine could read in ``ps``. The result is printed as one JSON object on stdout; a failure is one line on
stderr (the gRPC code, the server's reason, each bad field) and exit status 1.

Only the protocol layer and the generated stubs are imported: the command starts quickly and needs none
of the servers' dependencies.
"""

from __future__ import annotations

import argparse
import uuid
from decimal import Decimal, InvalidOperation

from backoffice.cli import calls
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc

STATUSES = {
    "open": pb.POSITION_STATUS_OPEN,
    "closing": pb.POSITION_STATUS_CLOSING,
    "closed": pb.POSITION_STATUS_CLOSED,
    "closed_error": pb.POSITION_STATUS_CLOSED_ERROR,
}
REMOVE = "none"  # what `protect` takes to remove a level
LEVELS = ("stop_loss", "take_profit", "trailing_distance", "breakeven_trigger", "breakeven_offset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``list``, ``close`` and ``protect`` under ``parser``; each sets ``run``."""
    common = calls.caller_arguments()
    commands = parser.add_subparsers(dest="positions_command", required=True, metavar="COMMAND", help="the call")

    listing = commands.add_parser("list", parents=[common], help="your positions, newest first")
    listing.add_argument("--device-id", type=uuid.UUID, metavar="ID", help="only this device's")
    listing.add_argument("--status", choices=sorted(STATUSES), help="only positions in this state")
    listing.add_argument("--instrument", help="only this instrument (broker symbol or the signal's)")
    listing.add_argument("--page-size", type=int, default=0, help="positions per page (default 50, at most 500)")
    listing.add_argument("--page-token", default="", help="next_page_token of the previous page")
    listing.set_defaults(run=run_list)

    close = commands.add_parser("close", parents=[common], help="close a position, or part of it")
    close.add_argument("--id", required=True, type=uuid.UUID, metavar="ID", help="the position")
    close.add_argument("--volume", type=_decimal, metavar="LOTS", help="lots to close (default: all of it)")
    close.add_argument("--request-id", type=uuid.UUID, metavar="UUID", help="idempotency key (default: a new UUID)")
    close.set_defaults(run=run_close)

    protect = commands.add_parser(
        "protect", parents=[common], help=f"move the hidden levels (a decimal sets one, '{REMOVE}' removes it)"
    )
    protect.add_argument("--id", required=True, type=uuid.UUID, metavar="ID", help="the position")
    for name, what in (
        ("stop-loss", "hidden stop-loss price"),
        ("take-profit", "hidden take-profit price"),
        ("trailing-distance", "trailing-stop distance in price units"),
        ("breakeven-trigger", "move in favour (price units) after which the stop goes to breakeven"),
        ("breakeven-offset", "the breakeven stop's distance from the entry (price units)"),
    ):
        protect.add_argument(f"--{name}", type=_level, metavar="PRICE|none", help=f"{what}, or '{REMOVE}'")
    protect.add_argument("--request-id", type=uuid.UUID, metavar="UUID", help="idempotency key (default: a new UUID)")
    protect.set_defaults(run=run_protect)


def run_list(args: argparse.Namespace) -> None:
    request = pb.ListPositionsRequest(
        device_id=str(args.device_id or ""),
        status=STATUSES.get(args.status or "", pb.POSITION_STATUS_UNSPECIFIED),
        instrument=args.instrument or "",
        page_size=args.page_size,
        page_token=args.page_token,
    )
    calls.run(
        args,
        rpc.PositionServiceStub,
        lambda stub, metadata, timeout: stub.ListPositions(request, metadata=metadata, timeout=timeout),
    )


def run_close(args: argparse.Namespace) -> None:
    request = pb.ClosePositionRequest(id=str(args.id), volume=args.volume or "", request_id=_request_id(args))
    calls.run(
        args,
        rpc.PositionServiceStub,
        lambda stub, metadata, timeout: stub.ClosePosition(request, metadata=metadata, timeout=timeout),
    )


def run_protect(args: argparse.Namespace) -> None:
    given = {name: getattr(args, name) for name in LEVELS if getattr(args, name) is not None}
    if not given:
        calls.fail("nothing to change: give at least one level")
    request = pb.UpdateProtectionRequest(
        id=str(args.id),
        request_id=_request_id(args),
        **{name: "" if value == REMOVE else value for name, value in given.items()},
    )
    calls.run(
        args,
        rpc.PositionServiceStub,
        lambda stub, metadata, timeout: stub.UpdateProtection(request, metadata=metadata, timeout=timeout),
    )


def _request_id(args: argparse.Namespace) -> str:
    return str(args.request_id or uuid.uuid4())


def _decimal(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a decimal: {text!r}")
    return text.strip()


def _level(text: str) -> str:
    return REMOVE if text.strip().lower() == REMOVE else _decimal(text)
