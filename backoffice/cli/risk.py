"""``signalhub risk get|set|stopouts|reset``: a device's risk policy and stopouts through RiskService, as its
owner (or an admin).

The API token, the back office's address, the JSON answer and a refusal's one line are the same for every
user command (``backoffice.cli.calls``); ``stopouts`` prints every page.

``set`` replaces the whole policy: whatever it is not given is no limit. The server validates the values
and names each bad one by its path (``policy.limits[0].max_percent``).
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Mapping
from typing import TypeVar

from backoffice.cli import calls
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from signalhub.v1 import common_pb2

T = TypeVar("T")
PERIODS = calls.choices(pb.RiskPeriod)
METRICS = calls.choices(pb.RiskMetric)
ACTIONS = calls.choices(pb.RiskAction)
SIDES = calls.choices(common_pb2.Side)
LIMIT_KEYS = ("period", "metric", "amount", "percent", "action")
LIMIT_HELP = (
    "period=day|week|month|lifetime,metric=loss|drawdown,action=stop-opening|close-all, and amount=D "
    "(account currency), percent=D (of the reference) or both; repeat for each limit (at most 10)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``get``, ``set``, ``stopouts`` and ``reset`` under ``parser``; each sets ``run``."""
    common = calls.caller_arguments()
    commands = parser.add_subparsers(dest="risk_command", required=True, metavar="COMMAND", help="the call")

    get = commands.add_parser("get", parents=[common], help="a device's risk policy")
    get.add_argument("--device", required=True, type=uuid.UUID, metavar="ID", help="the device")
    get.set_defaults(run=run_get)

    put = commands.add_parser(
        "set", parents=[common], help="replace a device's whole risk policy (what is not given: no limit)"
    )
    put.add_argument("--device", required=True, type=uuid.UUID, metavar="ID", help="the device")
    put.add_argument("--limit", action="append", type=_limit, default=[], metavar="K=V,...", help=LIMIT_HELP)
    put.add_argument("--max-open-positions", type=_int32, default=0, metavar="N", help="open positions (0: no limit)")
    put.add_argument(
        "--max-open-positions-per-instrument",
        type=_int32,
        default=0,
        metavar="N",
        help="open positions per instrument (0: no limit)",
    )
    put.add_argument("--max-volume", default="", metavar="D", help="largest volume of one delivery (lots)")
    put.add_argument("--max-deviation", default="", metavar="D", help="largest distance from the entry (price units)")
    put.add_argument(
        "--max-delay-seconds",
        type=_int32,
        default=0,
        metavar="N",
        help="a delivery expires at most N s after its signal",
    )
    put.add_argument("--allowed-sides", type=_sides, default=[], metavar="buy,sell", help="the sides it may trade")
    calls.add_request_id(put)
    put.set_defaults(run=run_set)

    stopouts = commands.add_parser("stopouts", parents=[common], help="a device's stopouts, newest first (every page)")
    stopouts.add_argument("--device", required=True, type=uuid.UUID, metavar="ID", help="the device")
    stopouts.add_argument("--active", action="store_true", help="only the ones still in force")
    stopouts.set_defaults(run=run_stopouts)

    reset = commands.add_parser("reset", parents=[common], help="lift a stopout now")
    reset.add_argument("id", type=uuid.UUID, metavar="ID", help="the stopout")
    calls.add_request_id(reset)
    reset.set_defaults(run=run_reset)


def run_get(args: argparse.Namespace) -> None:
    request = pb.GetRiskPolicyRequest(device_id=str(args.device))
    calls.call(args, rpc.RiskServiceStub, lambda stub: stub.GetRiskPolicy, request)


def run_set(args: argparse.Namespace) -> None:
    policy = pb.RiskPolicy(
        device_id=str(args.device),
        limits=args.limit,
        max_open_positions=args.max_open_positions,
        max_open_positions_per_instrument=args.max_open_positions_per_instrument,
        max_volume=args.max_volume,
        max_deviation=args.max_deviation,
        max_delay_seconds=args.max_delay_seconds,
        allowed_sides=args.allowed_sides,
    )
    request = pb.UpdateRiskPolicyRequest(request_id=calls.request_id(args), policy=policy)
    calls.call(args, rpc.RiskServiceStub, lambda stub: stub.UpdateRiskPolicy, request)


def run_stopouts(args: argparse.Namespace) -> None:
    request = pb.ListStopoutsRequest(device_id=str(args.device), active_only=args.active)
    calls.every_page(args, rpc.RiskServiceStub, lambda stub: stub.ListStopouts, request, "stopouts")


def run_reset(args: argparse.Namespace) -> None:
    request = pb.ResetStopoutRequest(id=str(args.id), request_id=calls.request_id(args))
    calls.call(args, rpc.RiskServiceStub, lambda stub: stub.ResetStopout, request)


def _limit(text: str) -> pb.RiskLimit:
    """``period=day,metric=loss,percent=5,action=close-all`` as a RiskLimit. Only the words are checked
    here; the server checks the amounts and what is missing, naming each by its path."""
    limit = pb.RiskLimit()
    for part in text.split(","):
        key, equals, value = (piece.strip() for piece in part.partition("="))
        if not equals or key not in LIMIT_KEYS:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: expected one of {', '.join(LIMIT_KEYS)} as KEY=VALUE")
        if key == "period":
            limit.period = _word(PERIODS, value, key)
        elif key == "metric":
            limit.metric = _word(METRICS, value, key)
        elif key == "action":
            limit.action = _word(ACTIONS, value, key)
        elif key == "amount":
            limit.max_amount = value
        else:
            limit.max_percent = value
    return limit


def _word(words: Mapping[str, T], value: str, key: str) -> T:
    try:
        return words[value.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{key}={value!r}: expected one of {', '.join(words)}") from None


def _sides(text: str) -> list[common_pb2.Side.ValueType]:
    return [_word(SIDES, side.strip(), "side") for side in text.split(",") if side.strip()]


def _int32(text: str) -> int:
    """A whole number the wire can carry (the server decides what it allows)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not -(2**31) <= number < 2**31:
        raise argparse.ArgumentTypeError(f"out of range: {text!r}")
    return number
