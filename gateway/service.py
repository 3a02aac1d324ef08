"""DeviceGateway.Connect: admission, the signed stream open, then the device's session does the rest
(gateway.sessions). Errors that end a stream are domain exceptions raised from here; the interceptor maps
them to status and ErrorInfo."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from backoffice.platform.auth import KeyKind, SignatureVerifier
from backoffice.platform.rpc_errors import as_domain_error
from gateway.sessions import SessionRegistry
from signalhub.protocol.logs import device_id_var
from signalhub.protocol.signing import CONNECT_METHOD, SignatureError
from signalhub.v1 import gateway_pb2 as pb


class DeviceGatewayServicer:
    def __init__(self, verifier: SignatureVerifier, registry: SessionRegistry) -> None:
        self._verifier = verifier
        self._registry = registry

    async def Connect(self, requests: AsyncIterator[pb.DeviceFrame], context: Any) -> AsyncIterator[pb.GatewayFrame]:
        with self._registry.admit():
            metadata = tuple((m[0], m[1]) for m in (context.invocation_metadata() or ()))
            try:
                # A stream open signs zero bytes: the frames that follow are covered by the session.
                key = await self._verifier.verify(KeyKind.DEVICE, CONNECT_METHOD, metadata, b"")
            except SignatureError as exc:
                raise as_domain_error(exc) from None
            device_id_var.set(str(key.id))  # on every line of this stream, its frames and its close
            # Accepted: said at once, so a client can wait for it before writing its Hello (a refused open
            # ends with its status instead, and a frame written into that end could fail on the client first).
            await context.send_initial_metadata(())
            session = self._registry.open(key)
            await self._registry.attach(session)
            try:
                async for frame in session.frames(requests):
                    yield frame
            finally:
                self._registry.detach(session)
