"""What the user commands of the command line (``signalhub positions``, ``signalhub risk``) do alike: the
caller's API token and the back office's address by one convention (``$SIGNALHUB_API_TOKEN``, else the
credentials file's ``user_token``), one call through the generated stubs, its answer
printed as one JSON object, and a refusal as one line on stderr (the status code once) with exit status 1.
The token is never an argument, which anyone on the machine could read in ``ps``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from signalhub.protocol import state
from signalhub.protocol.state import DEFAULT_CREDENTIALS
from signalhub.protocol.wire import status_details

TOKEN_ENV = "SIGNALHUB_API_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_TARGET = "127.0.0.1:50051"

StubT = TypeVar("StubT")
Metadata = tuple[tuple[str, str], ...]


def caller_arguments() -> argparse.ArgumentParser:
    """A parent parser with the options every user command takes: where the token comes from, the back
    office's address, the deadline."""
    common = argparse.ArgumentParser(add_help=False)
    who = common.add_argument_group("credentials")
    who.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE",
        help=f"JSON with user_token and optionally backoffice (default {DEFAULT_CREDENTIALS} "
        f"when present); ${TOKEN_ENV} takes precedence",
    )
    who.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"back office address (default: the file's backoffice, else {DEFAULT_TARGET})",
    )
    who.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline (default %(default)s)")
    return common


def run(
    args: argparse.Namespace,
    stub: Callable[[grpc.aio.Channel], StubT],
    call: Callable[[StubT, Metadata, float], Awaitable[Message]],
) -> None:
    """Make ``call`` on the stub ``stub`` builds, with the caller's token (``args``: credentials, target,
    timeout) and print its answer; a refusal ends the command with one line."""
    try:
        token, address = state.load_token(args.credentials, os.environ, token_env=TOKEN_ENV, key="user_token")
    except state.CredentialsError as exc:
        fail(str(exc))
    target = args.target or address or DEFAULT_TARGET
    metadata = (("authorization", f"Bearer {token.reveal().decode()}"),)

    async def once() -> Message:
        async with grpc.aio.insecure_channel(target) as channel:
            return await call(stub(channel), metadata, args.timeout)

    try:
        result = asyncio.run(once())
    except grpc.aio.AioRpcError as error:
        fail(describe(error))
    fields = json_format.MessageToDict(
        result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    print(json.dumps(fields))


def describe(error: grpc.aio.AioRpcError) -> str:
    """The code, the server's reason (when it says more than the code) and message, and each bad field,
    on one line."""
    details = status_details(error)
    code = error.code().name
    head = f"{code} {details.reason}" if details.reason and details.reason != code else code
    text = f"{head}: {error.details()}" if error.details() else head
    if details.violations:
        text += " (" + "; ".join(f"{field}: {problem}" for field, problem in details.violations.items()) + ")"
    return text


def fail(message: str) -> NoReturn:
    print(f"signalhub: {message}", file=sys.stderr)
    raise SystemExit(1)
