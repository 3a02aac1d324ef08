"""Composition root of the gateway process."""

from __future__ import annotations

from backoffice.api.registry import service_handler
from backoffice.bootstrap import Resources
from backoffice.interceptors import Auth, RpcInterceptor
from backoffice.serving import Server
from gateway.service import DeviceGatewayServicer
from signalhub.v1 import gateway_pb2

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["DeviceGateway"]


def build_server(res: Resources, address: str | None = None) -> Server:
    interceptor = RpcInterceptor(
        policies={},
        default_policy=Auth.SELF,
        sessions=res.sessions,
        verifier=res.verifier,
        max_in_flight=res.settings.max_streams,
    )
    server = Server(res.settings, address or res.settings.gateway_address, [interceptor], [SERVICE.full_name])
    server.grpc.add_generic_rpc_handlers([service_handler(SERVICE, DeviceGatewayServicer(res.verifier))])
    return server
