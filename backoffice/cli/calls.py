"""What every user command of the command line (``signalhub positions``, ``risk``, ``subscriptions``,
``devices``, ``approvals``, ``signals``, ``affiliate``, ``admin alerts|audit``) does alike: the caller's API
token and the back office's address by one convention (``signalhub.protocol.state.load_token``:
``$SIGNALHUB_API_TOKEN``, else the credentials file's ``api_token``, or a demo file's ``admin_token`` for
admin commands and ``user_token`` for the others), calls through the generated stubs (a list: every page),
the answer printed as one JSON object, and a refusal as one line on stderr (the status code once, each bad
field named) with exit status 1. The token is never an argument, which anyone on the machine could read in
``ps``.

Only the protocol layer and the generated stubs are imported: the commands start quickly and need none of
the servers' dependencies."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from signalhub.protocol import state
from signalhub.protocol.state import DEFAULT_CREDENTIALS
from signalhub.protocol.wire import status_details

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

TOKEN_ENV = "SIGNALHUB_API_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_TARGET = "127.0.0.1:50051"

StubT = TypeVar("StubT")
RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)
ValueT = TypeVar("ValueT", bound=int)
Metadata = tuple[tuple[str, str], ...]
Answer = Message | dict[str, Any]


class PageRequest(Protocol):
    """A list request: it asks for the page after ``page_token``."""

    page_token: str


class Page(Protocol):
    """A list response: ``next_page_token`` is empty on the last page."""

    next_page_token: str


PageRequestT = TypeVar("PageRequestT", bound=PageRequest)
PageT = TypeVar("PageT", bound=Page)


def caller_arguments() -> argparse.ArgumentParser:
    """A parent parser with the options every user command takes: where the token comes from, the back
    office's address and channel, the deadline."""
    common = argparse.ArgumentParser(add_help=False)
    who = common.add_argument_group("credentials")
    who.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE",
        help=f"JSON with api_token (as `signalhub admin create-user` prints it), or a demo file's admin_token "
        f"(admin commands) or user_token (the others), and optionally backoffice (default {DEFAULT_CREDENTIALS} "
        f"when present); ${TOKEN_ENV} takes precedence over the file's token",
    )
    who.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"back office address (default: the credentials file's backoffice, else {DEFAULT_TARGET})",
    )
    who.add_argument("--tls", action="store_true", help="check the back office against gRPC's default roots")
    who.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per call (default %(default)s)")
    return common


def add_request_id(parser: argparse.ArgumentParser) -> None:
    """``--request-id``: the idempotency key of a call that changes something (retrying with it is safe)."""
    parser.add_argument("--request-id", type=uuid.UUID, metavar="UUID", help="idempotency key (default: a new UUID)")


def request_id(args: argparse.Namespace) -> str:
    """The ``--request-id`` given, else a new one."""
    return str(args.request_id or uuid.uuid4())


@dataclass(frozen=True)
class BackOffice:
    """The back office as one command reaches it: an open channel, the caller's token, each call's deadline,
    and the gateway's address when the credentials file named one (a device's credentials name it)."""

    channel: grpc.aio.Channel
    metadata: Metadata
    timeout: float
    gateway: str | None = None

    async def call(self, method: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT], request: RequestT) -> ResponseT:
        return await method(request, metadata=self.metadata, timeout=self.timeout)

    async def every_page(
        self, method: grpc.aio.UnaryUnaryMultiCallable[PageRequestT, PageT], request: PageRequestT, items: str
    ) -> dict[str, Any]:
        """Each page of a list from the first to the last, its ``items`` (the repeated field) collected
        under that name."""
        collected: list[dict[str, Any]] = []
        while True:
            page = await method(request, metadata=self.metadata, timeout=self.timeout)
            collected.extend(as_json(item) for item in getattr(page, items))
            if not page.next_page_token:
                return {items: collected}
            request.page_token = page.next_page_token


def run(args: argparse.Namespace, body: Callable[[BackOffice], Awaitable[Answer]], *, admin: bool = False) -> None:
    """Run ``body`` against the back office as the caller (``args``: credentials, target, tls, timeout;
    ``admin``: a demo file's admin token) and print its answer; a refusal ends the command with one line."""
    try:
        found = state.load_token(args.credentials, os.environ, token_env=TOKEN_ENV, admin=admin)
    except state.CredentialsError as exc:
        fail(str(exc))
    target = args.target or found.backoffice or DEFAULT_TARGET
    metadata = (("authorization", f"Bearer {found.token.reveal().decode()}"),)

    async def once() -> Answer:
        channel = (
            grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
            if args.tls
            else grpc.aio.insecure_channel(target)
        )
        async with channel:
            return await body(BackOffice(channel, metadata, args.timeout, found.gateway))

    try:
        answer = asyncio.run(once())
    except grpc.aio.AioRpcError as error:
        fail(describe(error))
    print(json.dumps(answer if isinstance(answer, dict) else as_json(answer)))


def call(
    args: argparse.Namespace,
    stub: Callable[[grpc.aio.Channel], StubT],
    method: Callable[[StubT], grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT]],
    request: RequestT,
    *,
    admin: bool = False,
) -> None:
    """One call (``method`` of the stub ``stub`` builds) and its answer printed."""
    run(args, lambda office: office.call(method(stub(office.channel)), request), admin=admin)


def every_page(
    args: argparse.Namespace,
    stub: Callable[[grpc.aio.Channel], StubT],
    method: Callable[[StubT], grpc.aio.UnaryUnaryMultiCallable[PageRequestT, PageT]],
    request: PageRequestT,
    items: str,
    *,
    admin: bool = False,
) -> None:
    """A list, every page of it: prints ``{items: [...]}``."""
    run(args, lambda office: office.every_page(method(stub(office.channel)), request, items), admin=admin)


def as_json(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data: proto field names, enums by name, unset fields with their defaults."""
    found: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return found


def choices(enum: _EnumTypeWrapper[ValueT]) -> dict[str, ValueT]:
    """The values of a generated enum by the words the command line takes (``SIZING_MODE_FIXED_VOLUME``:
    ``fixed-volume``), UNSPECIFIED left out."""
    prefix = enum.Name(enum.values()[0]).removesuffix("UNSPECIFIED")  # proto3: the first value is 0
    return {
        name.removeprefix(prefix).lower().replace("_", "-"): value
        for name, value in enum.items()
        if value != enum.values()[0]
    }


def describe(error: grpc.aio.AioRpcError) -> str:
    """The code, the server's reason (when it says more than the code) and message, and each bad field,
    on one line."""
    details = status_details(error)
    code = error.code().name
    head = f"{code} {details.reason}" if details.reason and details.reason != code else code
    message = " ".join((error.details() or "").split())  # a transport's message may span lines
    return (f"{head}: {message}" if message else head) + bad_fields(details.violations)


def bad_fields(violations: Mapping[str, str]) -> str:
    """`` (field: what is wrong; ...)``, or nothing without any; a problem with the whole request is named
    ``<request>``."""
    if not violations:
        return ""
    return " (" + "; ".join(f"{field or '<request>'}: {problem}" for field, problem in violations.items()) + ")"


def fail(message: str) -> NoReturn:
    print(f"signalhub: {message}", file=sys.stderr)
    raise SystemExit(1)
