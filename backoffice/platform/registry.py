"""Registers plain servicer objects against the service descriptors of the contract.

Every RPC of a service is served: a method the servicer has is called; one it has not yet is answered
UNIMPLEMENTED (with ErrorInfo) by the interceptor, so nothing pretends to work.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from signalhub.protocol.errors import NotImplementedYet


def service_handler(descriptor: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in descriptor.methods:
        request_cls = GetMessageClass(method.input_type)
        response_cls = GetMessageClass(method.output_type)
        behavior = getattr(servicer, method.name, None) or _unimplemented(descriptor.full_name, method.name)
        kwargs: dict[str, Any] = {
            "request_deserializer": request_cls.FromString,
            "response_serializer": response_cls.SerializeToString,
        }
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behavior, **kwargs)
        else:  # the contract has no half-streaming RPCs
            raise ValueError(f"unsupported streaming shape for {method.full_name}")
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


def _unimplemented(service: str, method: str) -> Any:
    async def behavior(request: object, context: object) -> None:
        raise NotImplementedYet(f"{service}.{method} is not implemented yet")

    return behavior
