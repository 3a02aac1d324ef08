"""``signalhub signals list|show``: the signals a user may see (those of the producers they follow; admins:
all), through SignalService, and where one got to on each device, through ExecutionService.

The token, the answer and a refusal's one line are as for every user command (``backoffice.cli.calls``);
``list`` prints every page.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from backoffice.cli import calls
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc

STATUSES = calls.choices(pb.SignalStatus)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``list`` and ``show`` under ``parser``; each sets ``run``."""
    common = calls.caller_arguments()
    commands = parser.add_subparsers(dest="signals_command", required=True, metavar="COMMAND", help="the call")

    listing = commands.add_parser("list", parents=[common], help="the signals you may see, newest first")
    listing.add_argument("--producer-id", type=uuid.UUID, metavar="ID", help="only this producer's")
    listing.add_argument("--status", choices=sorted(STATUSES), help="only signals in this state")
    listing.set_defaults(run=run_list)

    show = commands.add_parser(
        "show", parents=[common], help="a signal, and per device its delivery, acks, fill and latencies"
    )
    show.add_argument("id", type=uuid.UUID, metavar="ID", help="the signal")
    show.set_defaults(run=run_show)


def run_list(args: argparse.Namespace) -> None:
    request = pb.ListSignalsRequest(
        producer_id=str(args.producer_id or ""), status=STATUSES.get(args.status or "", pb.SIGNAL_STATUS_UNSPECIFIED)
    )
    calls.every_page(args, rpc.SignalServiceStub, lambda stub: stub.ListSignals, request, "signals")


def run_show(args: argparse.Namespace) -> None:
    signal_id = str(args.id)

    async def show(office: calls.BackOffice) -> dict[str, Any]:
        # The signal first: one the caller may not see is NOT_FOUND before its execution is asked for.
        signal = await office.call(rpc.SignalServiceStub(office.channel).GetSignal, pb.GetSignalRequest(id=signal_id))
        execution = await office.call(
            rpc.ExecutionServiceStub(office.channel).GetSignalExecution,
            pb.GetSignalExecutionRequest(signal_id=signal_id),
        )
        return {"signal": calls.as_json(signal), "devices": [calls.as_json(device) for device in execution.devices]}

    calls.run(args, show)
