"""The console's one way to the back office: a call through the generated stubs with the signed-in
person's own API token, so the back office decides tenancy, roles and audit exactly as for any client. A
refusal becomes a ``Refused``: a one-line reason and the field violations by path, never a trace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import grpc
from grpc import aio

from backoffice.console.config import ConsoleConfig
from signalhub.protocol.secret import Secret
from signalhub.protocol.wire import status_details
from signalhub.v1 import backoffice_pb2_grpc as rpc

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

DOMAIN = "signalhub.v1"  # the contract's error domain: only its messages are shown as the server wrote them

# What a page answers for each refusal.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Failures that come from the transport, not from a servicer: told in the console's own words.
_TRANSPORT_TEXT = {
    grpc.StatusCode.UNAVAILABLE: "The back office cannot be reached; try again shortly.",
    grpc.StatusCode.DEADLINE_EXCEEDED: "The back office did not answer in time; try again.",
    grpc.StatusCode.CANCELLED: "The call was cancelled; try again.",
}


class Refused(Exception):
    """A call the back office refused or could not answer: its code, one line for people, and what is
    wrong with each field it names (by the request's field path, e.g. ``policy.limits[0].max_percent``)."""

    def __init__(self, code: grpc.StatusCode, text: str, violations: Mapping[str, str] | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.violations = dict(violations or {})

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 502)

    def renamed(self, paths: Mapping[str, str]) -> Refused:
        """The same refusal with its violations' paths renamed (``paths``: request path to form field)."""
        return Refused(self.code, self.text, {paths.get(k, k): v for k, v in self.violations.items()})


def refusal(error: grpc.aio.AioRpcError) -> Refused:
    """A failed call as a ``Refused``. The server's message and reason are shown only when the contract's
    ErrorInfo vouches for them; a transport failure is told in fixed words (its details name addresses)."""
    details = status_details(error)
    code = error.code()
    if details.domain != DOMAIN:
        return Refused(code, _TRANSPORT_TEXT.get(code, f"The back office failed ({code.name})."))
    message = (error.details() or code.name).strip()
    message = message[:1].upper() + message[1:]
    if details.reason and details.reason != code.name and details.reason not in message:
        message = f"{message} ({details.reason})"
    return Refused(code, " ".join(message.split()), details.violations)


class BackOffice:
    """One channel to the back office for the whole process (each call carries its caller's token), and a
    stub per service."""

    def __init__(self, config: ConsoleConfig) -> None:
        self.target = config.backoffice_target
        self.timeout = config.call_timeout_seconds
        if config.backoffice_tls:
            roots = config.backoffice_ca_file.read_bytes() if config.backoffice_ca_file else None
            self.channel = aio.secure_channel(self.target, grpc.ssl_channel_credentials(roots))
        else:
            self.channel = aio.insecure_channel(self.target)
        self.accounts = rpc.AccountServiceStub(self.channel)
        self.signals = rpc.SignalServiceStub(self.channel)
        self.approvals = rpc.ApprovalServiceStub(self.channel)
        self.devices = rpc.DeviceServiceStub(self.channel)
        self.executions = rpc.ExecutionServiceStub(self.channel)
        self.positions = rpc.PositionServiceStub(self.channel)
        self.risk = rpc.RiskServiceStub(self.channel)
        self.affiliates = rpc.AffiliateServiceStub(self.channel)
        self.audit = rpc.AuditServiceStub(self.channel)

    async def call(
        self, method: aio.UnaryUnaryMultiCallable[RequestT, ResponseT], request: RequestT, token: Secret
    ) -> ResponseT:
        """``method(request)`` as the holder of ``token``; a failure raises ``Refused``."""
        metadata = (("authorization", f"Bearer {token.reveal().decode()}"),)
        try:
            return await method(request, metadata=metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise refusal(error) from None

    async def close(self) -> None:
        await self.channel.close()
