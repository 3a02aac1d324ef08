"""``signalhub producer submit|cancel|quote``: signed calls as one producer, on top of ``ProducerClient``.

Credentials come from ``--credentials FILE`` (JSON with ``producer_id``, ``producer_secret`` and optionally
``backoffice``, like the ``.signalhub/demo.json`` that ``signalhub up`` writes, which is the default when
present), or from ``--producer-id`` with the secret in the environment variable
``SIGNALHUB_PRODUCER_SECRET``; never from an argument, which anyone on the machine could read in ``ps``.

The result is printed as one JSON object on stdout. A failure is one line on stderr (the gRPC code and
the server's reason) and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from google.protobuf import json_format
from google.protobuf.message import Message

from backoffice.producer.client import DEFAULT_DEADLINE_SECONDS, DEFAULT_TARGET, ProducerCallError, ProducerClient
from backoffice.producer.messages import make_quote
from signalhub.protocol import state
from signalhub.protocol.secret import Secret
from signalhub.protocol.state import DEFAULT_CREDENTIALS

SECRET_ENV = "SIGNALHUB_PRODUCER_SECRET"  # noqa: S105 - the variable's name, not a secret


@dataclass(frozen=True)
class Credentials:
    target: str
    producer_id: str
    secret: Secret  # masked in every repr


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``submit``, ``cancel`` and ``quote`` under ``parser``; each sets ``run``."""
    common = argparse.ArgumentParser(add_help=False)
    who = common.add_argument_group("credentials")
    exclusive = who.add_mutually_exclusive_group()
    exclusive.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE",
        help=f"JSON with producer_id, producer_secret and optionally backoffice (default {DEFAULT_CREDENTIALS} "
        "when present)",
    )
    exclusive.add_argument(
        "--producer-id", metavar="ID", help=f"the producer's id; its secret is read from ${SECRET_ENV}"
    )
    who.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"back office address (default: the credentials file's backoffice, else {DEFAULT_TARGET})",
    )
    who.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_DEADLINE_SECONDS,
        metavar="SECONDS",
        help="deadline of each attempt (default %(default)s)",
    )

    commands = parser.add_subparsers(dest="producer_command", required=True, metavar="COMMAND", help="the call")

    submit = commands.add_parser("submit", parents=[common], help="submit a signal; prints the Signal")
    submit.add_argument("--instrument", required=True, help="e.g. XAUUSD")
    submit.add_argument("--side", required=True, type=str.lower, choices=["buy", "sell"], help="buy or sell")
    submit.add_argument("--entry", metavar="PRICE", help="entry price (decimal); omit for market")
    submit.add_argument("--stop-loss", metavar="PRICE", help="hidden stop-loss (decimal)")
    submit.add_argument("--take-profit", metavar="PRICE", help="hidden take-profit (decimal)")
    submit.add_argument("--trailing-distance", metavar="PRICE", help="hidden trailing-stop distance (price units)")
    submit.add_argument("--breakeven-trigger", metavar="PRICE", help="hidden breakeven: move in favour (price units)")
    submit.add_argument("--breakeven-offset", metavar="PRICE", help="the breakeven stop's distance from the entry")
    submit.add_argument(
        "--signal-time",
        type=_aware_datetime,
        metavar="ISO8601",
        help="when the signal was emitted, with a UTC offset (default now); to repeat a --request-id "
        "byte for byte, repeat this too",
    )
    submit.add_argument(
        "--expire-seconds",
        type=_positive_float,
        metavar="SECONDS",
        help="expire this many seconds after the signal time (server default 60)",
    )
    submit.add_argument("--payload", type=_json_object, metavar="JSON", help="strategy data, a JSON object")
    submit.add_argument("--request-id", type=uuid_text, metavar="UUID", help="idempotency key (default: a new UUID)")
    submit.set_defaults(run=run_submit)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel one of your signals; prints the Signal")
    cancel.add_argument("--signal-id", required=True, type=uuid_text, metavar="ID", help="the signal to cancel")
    cancel.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    cancel.add_argument(
        "--close-positions", action="store_true", help="also close the positions opened from it (SIGNAL_CANCELLED)"
    )
    cancel.add_argument("--request-id", type=uuid_text, metavar="UUID", help="idempotency key (default: a new UUID)")
    cancel.set_defaults(run=run_cancel)

    quote = commands.add_parser("quote", parents=[common], help="submit one bid/ask quote")
    quote.add_argument("--instrument", required=True, help="e.g. XAUUSD")
    quote.add_argument("--bid", required=True, metavar="PRICE", help="bid price (decimal)")
    quote.add_argument("--ask", required=True, metavar="PRICE", help="ask price (decimal), not below the bid")
    quote.set_defaults(run=run_quote)


def run_submit(args: argparse.Namespace) -> None:
    async def call(client: ProducerClient) -> Message:
        return await client.submit_signal(
            args.instrument,
            args.side,
            entry_price=args.entry,
            stop_loss=args.stop_loss,
            take_profit=args.take_profit,
            signal_time=args.signal_time or datetime.now(UTC),
            expire_time=timedelta(seconds=args.expire_seconds) if args.expire_seconds is not None else None,
            payload=args.payload,
            request_id=args.request_id,
            trailing_distance=args.trailing_distance,
            breakeven_trigger=args.breakeven_trigger,
            breakeven_offset=args.breakeven_offset,
        )

    _run(args, call)


def run_cancel(args: argparse.Namespace) -> None:
    async def call(client: ProducerClient) -> Message:
        return await client.cancel_signal(
            args.signal_id, args.reason, request_id=args.request_id, close_positions=args.close_positions
        )

    _run(args, call)


def run_quote(args: argparse.Namespace) -> None:
    async def call(client: ProducerClient) -> Message:
        return await client.submit_quotes([make_quote(args.instrument, args.bid, args.ask)])

    _run(args, call)


def load_credentials(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Credentials:
    """Who to call as and where, from ``--producer-id`` + ``$SIGNALHUB_PRODUCER_SECRET`` or a JSON file."""
    found = state.load_credentials(
        "producer", args.producer_id, args.credentials, environ, secret_env=SECRET_ENV, address_key="backoffice"
    )
    return Credentials(args.target or found.address or DEFAULT_TARGET, found.key_id, found.secret)


def _run(args: argparse.Namespace, call: Callable[[ProducerClient], Awaitable[Message]]) -> None:
    try:
        credentials = load_credentials(args)
        result = asyncio.run(_call(credentials, args.timeout, call))
    except ProducerCallError as exc:
        _fail(str(exc))
    except (ValueError, TypeError) as exc:  # credentials, a decimal or an id: messages never echo a secret
        _fail(str(exc))
    print(
        json.dumps(
            json_format.MessageToDict(
                result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )
    )


async def _call(
    credentials: Credentials, deadline_seconds: float, call: Callable[[ProducerClient], Awaitable[Message]]
) -> Message:
    async with ProducerClient(
        credentials.target, credentials.producer_id, credentials.secret.reveal(), deadline_seconds=deadline_seconds
    ) as client:
        return await call(client)


def _fail(message: str) -> NoReturn:
    print(f"signalhub: {message}", file=sys.stderr)
    raise SystemExit(1)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def uuid_text(text: str) -> str:
    """An argparse type: a UUID in its canonical text (the affiliate command line uses it too)."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _aware_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a UTC offset (e.g. 2026-01-01T12:00:00+00:00): {text!r}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value
