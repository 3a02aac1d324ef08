"""``signalhub devices list|register|rotate|revoke``: a user's EA bridges, through DeviceService.

``register`` and ``rotate`` get a device secret that the back office shows once. It goes into the file
``--out`` names, created owner-only, in the format ``signalhub bridge --credentials FILE`` reads
(``device_id``, ``device_secret``, ``gateway``), and never to the terminal: the answer printed is the
device and the file's path. The file is claimed before the call, so an existing one is refused (unless
``--force``) before any secret is issued, and a place that cannot be written costs no secret.

The token, the answer and a refusal's one line are as for every user command (``backoffice.cli.calls``);
``list`` prints every page.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backoffice.cli import calls
from gateway.bridge.cli import DEFAULT_GATEWAY
from signalhub.protocol.state import write_private
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc

STATUSES = calls.choices(pb.DeviceStatus)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``list``, ``register``, ``rotate`` and ``revoke`` under ``parser``; each sets ``run``."""
    common = calls.caller_arguments()
    commands = parser.add_subparsers(dest="devices_command", required=True, metavar="COMMAND", help="the call")

    listing = commands.add_parser("list", parents=[common], help="your devices (admins: everyone's)")
    listing.add_argument("--status", choices=sorted(STATUSES), help="only devices in this state")
    listing.set_defaults(run=run_list)

    register = commands.add_parser(
        "register", parents=[common], help="a new device; its credentials go to --out, never to the terminal"
    )
    register.add_argument("--name", required=True, help="a name to tell it by")
    register.add_argument("--mac-address", default="", metavar="MAC", help="the host's MAC address (optional)")
    register.add_argument(
        "--symbol-map",
        action="append",
        default=[],
        type=_symbol,
        metavar="INSTRUMENT=SYMBOL",
        help="the broker's symbol for a signal instrument (e.g. XAUUSD=GOLD.m); repeat for each",
    )
    _credentials_file_arguments(register)
    register.set_defaults(run=run_register)

    rotate = commands.add_parser(
        "rotate", parents=[common], help="a new secret for a device (the old one works for a grace period)"
    )
    rotate.add_argument("id", type=uuid.UUID, metavar="ID", help="the device")
    _credentials_file_arguments(rotate)
    rotate.set_defaults(run=run_rotate)

    revoke = commands.add_parser("revoke", parents=[common], help="revoke a device for good (its stream ends)")
    revoke.add_argument("id", type=uuid.UUID, metavar="ID", help="the device")
    revoke.set_defaults(run=run_revoke)


def _credentials_file_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="FILE",
        help="where the device's credentials go, created owner-only (what `signalhub bridge --credentials` reads)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument(
        "--gateway",
        metavar="HOST:PORT",
        help=f"the gateway the bridge connects to, written with the credentials (default: the credentials "
        f"file's gateway, else {DEFAULT_GATEWAY})",
    )
    calls.add_request_id(parser)


def run_list(args: argparse.Namespace) -> None:
    request = pb.ListDevicesRequest(status=STATUSES.get(args.status or "", pb.DEVICE_STATUS_UNSPECIFIED))
    calls.every_page(args, rpc.DeviceServiceStub, lambda stub: stub.ListDevices, request, "devices")


def run_register(args: argparse.Namespace) -> None:
    request = pb.RegisterDeviceRequest(
        request_id=calls.request_id(args),
        name=args.name,
        mac_address=args.mac_address,
        symbol_map=dict(args.symbol_map),
    )
    _with_credentials_file(
        args,
        request.request_id,
        lambda office: office.call(rpc.DeviceServiceStub(office.channel).RegisterDevice, request),
    )


def run_rotate(args: argparse.Namespace) -> None:
    request = pb.RotateDeviceSecretRequest(id=str(args.id), request_id=calls.request_id(args))
    _with_credentials_file(
        args,
        request.request_id,
        lambda office: office.call(rpc.DeviceServiceStub(office.channel).RotateDeviceSecret, request),
    )


def run_revoke(args: argparse.Namespace) -> None:
    request = pb.RevokeDeviceRequest(id=str(args.id))
    calls.call(args, rpc.DeviceServiceStub, lambda stub: stub.RevokeDevice, request)


class NotWritten(Exception):
    """A secret was issued but could not be written; the message says how to get it again, never the secret."""


@dataclass
class CredentialsFile:
    """The file a device's credentials go to: claimed (created empty, owner-only) before the call, unless
    ``force`` lets it be overwritten; given up again when no secret came to fill it."""

    path: Path
    force: bool
    claimed: bool = False
    written: bool = False

    def claim(self) -> None:
        if self.force:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            calls.fail(f"{self.path} exists: name another file with --out, or overwrite it with --force")
        except OSError as exc:
            calls.fail(f"cannot write {self.path}: {exc.strerror or type(exc).__name__}")
        self.claimed = True

    def write(self, device_id: str, secret: str, gateway: str) -> None:
        # The keys `signalhub bridge --credentials` reads (signalhub.protocol.state.load_credentials).
        text = json.dumps({"device_id": device_id, "device_secret": secret, "gateway": gateway}, indent=2)
        write_private(self.path, text + "\n")
        self.written = True

    def give_up(self) -> None:
        if self.claimed and not self.written:
            self.path.unlink(missing_ok=True)


def _with_credentials_file(
    args: argparse.Namespace,
    request_id: str,
    issue: Callable[[calls.BackOffice], Awaitable[pb.RegisterDeviceResponse | pb.RotateDeviceSecretResponse]],
) -> None:
    """Claim ``--out``, make the call that ``issue`` makes (it returns the device and its new secret), write
    the credentials and print the device and where they are. A secret that could not be written is not
    lost: the same ``request_id`` gets it again."""
    out = CredentialsFile(args.out, args.force)
    out.claim()

    async def body(office: calls.BackOffice) -> dict[str, Any]:
        answer = await issue(office)
        try:
            out.write(answer.device.id, answer.secret, args.gateway or office.gateway or DEFAULT_GATEWAY)
        except OSError as exc:
            raise NotWritten(
                f"device {answer.device.id} got a new secret, but {args.out} could not be written "
                f"({exc.strerror or type(exc).__name__}): repeat the command with --request-id {request_id} "
                "and another --out to get the same secret"
            ) from None
        return {"device": calls.as_json(answer.device), "credentials_file": str(args.out.resolve())}

    try:
        calls.run(args, body)
    except NotWritten as exc:
        calls.fail(str(exc))
    finally:
        out.give_up()


def _symbol(text: str) -> tuple[str, str]:
    instrument, equals, symbol = (part.strip() for part in text.partition("="))
    if not equals or not instrument or not symbol:
        raise argparse.ArgumentTypeError(f"expected INSTRUMENT=SYMBOL, got {text!r}")
    return instrument, symbol
