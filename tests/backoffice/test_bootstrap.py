"""Every RPC of the contract is served by a method of its servicer: the registry's UNIMPLEMENTED fallback
(which the hostile-input hunt accepts as an answer) is for nothing the contract names."""

from __future__ import annotations

import inspect

import pytest
from google.protobuf.descriptor import ServiceDescriptor

from backoffice import bootstrap
from backoffice.platform.registry import service_handler
from gateway import bootstrap as gateway_bootstrap
from gateway.service import DeviceGatewayServicer
from signalhub.v1 import backoffice_pb2, gateway_pb2

SERVICES = [*backoffice_pb2.DESCRIPTOR.services_by_name.values(), *gateway_pb2.DESCRIPTOR.services_by_name.values()]


def _unserved(service: ServiceDescriptor, servicer: object) -> list[str]:
    """The RPCs of ``service`` that ``servicer`` has no async method for (unary: a coroutine function;
    streaming: an async generator function)."""
    served = (inspect.iscoroutinefunction, inspect.isasyncgenfunction)
    return [m.name for m in service.methods if not any(is_(getattr(type(servicer), m.name, None)) for is_ in served)]


async def test_every_back_office_rpc_has_its_servicer_method(res: bootstrap.Resources) -> None:
    servicers = bootstrap.servicers(res)
    assert set(servicers) == {s.name for s in bootstrap.SERVICES}, "a service of the contract has no servicer"
    unserved = {s.name: _unserved(s, servicers[s.name]) for s in bootstrap.SERVICES}
    assert not any(unserved.values()), f"RPCs answered UNIMPLEMENTED: {unserved}"


def test_every_gateway_rpc_has_its_servicer_method() -> None:
    assert not _unserved(gateway_bootstrap.SERVICE, DeviceGatewayServicer.__new__(DeviceGatewayServicer))
    assert list(gateway_pb2.DESCRIPTOR.services_by_name) == [gateway_bootstrap.SERVICE.name]


def test_the_check_sees_a_missing_method() -> None:
    """The fallback exists (a service without a servicer still answers), and the check above tells it apart."""
    (service,) = [s for s in SERVICES if s.name == "AuditService"]
    assert _unserved(service, object()) == [m.name for m in service.methods]
    assert service_handler(service, object()) is not None


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_the_servers_register_every_service(service: ServiceDescriptor) -> None:
    assert service in (*bootstrap.SERVICES, gateway_bootstrap.SERVICE)
