"""DeviceGateway.Connect: the signed stream open. The stream protocol itself (push, acks, fills) is
issue 4's; until it lands, an authenticated stream is answered UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from backoffice.auth import KeyKind, SignatureVerifier
from backoffice.errors import NotImplementedYet
from backoffice.rpc_errors import as_domain_error
from backoffice.signing import SignatureError
from signalhub.v1 import gateway_pb2 as pb

CONNECT_METHOD = "/signalhub.v1.DeviceGateway/Connect"


class DeviceGatewayServicer:
    def __init__(self, verifier: SignatureVerifier) -> None:
        self._verifier = verifier

    async def Connect(self, requests: AsyncIterator[pb.DeviceFrame], context: Any) -> AsyncIterator[pb.GatewayFrame]:
        metadata = tuple((m[0], m[1]) for m in (context.invocation_metadata() or ()))
        try:
            # A stream open signs zero bytes: the frames that follow are covered by the session.
            await self._verifier.verify(KeyKind.DEVICE, CONNECT_METHOD, metadata, b"")
        except SignatureError as exc:
            raise as_domain_error(exc) from None
        raise NotImplementedYet("the device stream protocol is not implemented yet")
        yield  # pragma: no cover - makes this an async generator
