"""``signalhub positions list|close|protect``: a user's positions through PositionService, as that user.

The API token, the back office's address, the JSON answer and a refusal's one line are the same for every
user command (``backoffice.cli.calls``); ``list`` prints every page.
"""

from __future__ import annotations

import argparse
import uuid
from decimal import Decimal, InvalidOperation

from backoffice.cli import calls
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc

STATUSES = calls.choices(pb.PositionStatus)
REMOVE = "none"  # what `protect` takes to remove a level
LEVELS = ("stop_loss", "take_profit", "trailing_distance", "breakeven_trigger", "breakeven_offset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``list``, ``close`` and ``protect`` under ``parser``; each sets ``run``."""
    common = calls.caller_arguments()
    commands = parser.add_subparsers(dest="positions_command", required=True, metavar="COMMAND", help="the call")

    listing = commands.add_parser("list", parents=[common], help="your positions, newest first (every page)")
    listing.add_argument("--device-id", type=uuid.UUID, metavar="ID", help="only this device's")
    listing.add_argument("--status", choices=sorted(STATUSES), help="only positions in this state")
    listing.add_argument("--instrument", help="only this instrument (broker symbol or the signal's)")
    listing.set_defaults(run=run_list)

    close = commands.add_parser("close", parents=[common], help="close a position, or part of it")
    close.add_argument("--id", required=True, type=uuid.UUID, metavar="ID", help="the position")
    close.add_argument("--volume", type=_decimal, metavar="LOTS", help="lots to close (default: all of it)")
    calls.add_request_id(close)
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
    calls.add_request_id(protect)
    protect.set_defaults(run=run_protect)


def run_list(args: argparse.Namespace) -> None:
    request = pb.ListPositionsRequest(
        device_id=str(args.device_id or ""),
        status=STATUSES.get(args.status or "", pb.POSITION_STATUS_UNSPECIFIED),
        instrument=args.instrument or "",
    )
    calls.every_page(args, rpc.PositionServiceStub, lambda stub: stub.ListPositions, request, "positions")


def run_close(args: argparse.Namespace) -> None:
    request = pb.ClosePositionRequest(id=str(args.id), volume=args.volume or "", request_id=calls.request_id(args))
    calls.call(args, rpc.PositionServiceStub, lambda stub: stub.ClosePosition, request)


def run_protect(args: argparse.Namespace) -> None:
    given = {name: getattr(args, name) for name in LEVELS if getattr(args, name) is not None}
    if not given:
        calls.fail("nothing to change: give at least one level")
    request = pb.UpdateProtectionRequest(
        id=str(args.id),
        request_id=calls.request_id(args),
        **{name: "" if value == REMOVE else value for name, value in given.items()},
    )
    calls.call(args, rpc.PositionServiceStub, lambda stub: stub.UpdateProtection, request)


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
