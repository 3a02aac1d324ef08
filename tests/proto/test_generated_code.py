"""The wire contract's generated code and public surface.

Two kinds of check:

* The committed ``*_pb2*.py[i]`` files are exactly what ``scripts/gen-proto`` produces from
  the ``.proto`` files today, so the test run fails when someone edits a proto and forgets to
  regenerate (or edits generated code by hand).
* The names CONTRACT.md makes binding (services, RPCs, messages, fields, field numbers of the
  gateway frames, enum values) are pinned through the descriptors. Fields may be added; a
  rename, renumber or removal of anything listed here fails.

Plain pytest; no database.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from enum import StrEnum
from importlib import metadata
from pathlib import Path

import pytest
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

from backoffice.models import enums as stored
from signalhub.v1 import backoffice_pb2, common_pb2, gateway_pb2

ROOT = Path(__file__).resolve().parents[2]
GEN_SCRIPT = ROOT / "scripts" / "gen-proto"
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = PROTO_DIR / "signalhub" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
PACKAGE = "signalhub.v1"

FILES: dict[str, FileDescriptor] = {
    "common": common_pb2.DESCRIPTOR,
    "gateway": gateway_pb2.DESCRIPTOR,
    "backoffice": backoffice_pb2.DESCRIPTOR,
}
POOL = backoffice_pb2.DESCRIPTOR.pool


# --------------------------------------------------------------------------------------
# Generated code is current
# --------------------------------------------------------------------------------------


def _generated_files(directory: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def _generator_versions() -> str:
    versions = []
    for dist in ("grpcio-tools", "mypy-protobuf"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} not installed")
    return ", ".join(versions)


def test_gen_proto_is_an_executable_script() -> None:
    assert GEN_SCRIPT.is_file()
    assert os.access(GEN_SCRIPT, os.X_OK), "scripts/gen-proto must be executable"


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(GEN_SCRIPT), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"scripts/gen-proto failed:\n{result.stdout}\n{result.stderr}"

    fresh = _generated_files(tmp_path / "signalhub" / "v1")
    committed = _generated_files(PACKAGE_DIR)
    assert fresh, "scripts/gen-proto generated nothing"

    missing = sorted(set(fresh) - set(committed))
    extra = sorted(set(committed) - set(fresh))
    assert not missing, f"generated files not committed: {missing}; run scripts/gen-proto"
    assert not extra, f"committed files no proto generates: {extra}; run scripts/gen-proto"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, (
        f"generated code is out of date: {stale}; run scripts/gen-proto "
        f"(generators here: {_generator_versions()}; output differs between their versions)"
    )


def test_every_proto_has_its_generated_modules() -> None:
    protos = sorted(p.stem for p in PACKAGE_DIR.glob("*.proto"))
    assert protos == ["backoffice", "common", "gateway"]
    generated = set(_generated_files(PACKAGE_DIR))
    for stem in protos:
        for suffix in GENERATED_SUFFIXES:
            assert f"{stem}{suffix}" in generated


def test_no_python_is_generated_for_vendored_google_protos() -> None:
    # google.rpc's Python comes from googleapis-common-protos; a copy under proto/ would
    # shadow it. The vendored .proto files sit under third_party/, apart from our contract.
    assert not (PROTO_DIR / "google").exists()
    vendored = PROTO_DIR / "third_party" / "google"
    assert (vendored / "rpc" / "status.proto").is_file()
    assert (vendored / "rpc" / "error_details.proto").is_file()
    strays = [p for p in vendored.rglob("*") if p.suffix in {".py", ".pyi"}]
    assert not strays


# --------------------------------------------------------------------------------------
# Helpers over descriptors
# --------------------------------------------------------------------------------------

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_DOUBLE: "double",
}


def _short(full_name: str) -> str:
    prefix = PACKAGE + "."
    return full_name[len(prefix) :] if full_name.startswith(prefix) else full_name


def _map_entry(field: FieldDescriptor) -> Descriptor | None:
    entry = field.message_type
    if field.type == FieldDescriptor.TYPE_MESSAGE and entry is not None and entry.GetOptions().map_entry:
        return entry
    return None


def _base_type(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return _short(field.enum_type.full_name)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        return _short(field.message_type.full_name)
    return _SCALARS[field.type]


def type_of(field: FieldDescriptor) -> str:
    """The field's type as written in a .proto ("repeated string", "map<string, string>")."""
    entry = _map_entry(field)
    if entry is not None:
        key = entry.fields_by_name["key"]
        value = entry.fields_by_name["value"]
        return f"map<{_base_type(key)}, {_base_type(value)}>"
    base = _base_type(field)
    return f"repeated {base}" if field.is_repeated else base


def message(name: str) -> Descriptor:
    return POOL.FindMessageTypeByName(f"{PACKAGE}.{name}")


def enum(name: str) -> EnumDescriptor:
    return POOL.FindEnumTypeByName(f"{PACKAGE}.{name}")


def _nested_messages(desc: Descriptor) -> Iterator[Descriptor]:
    yield desc
    for nested in desc.nested_types:
        yield from _nested_messages(nested)


def all_messages() -> Iterator[Descriptor]:
    for file in FILES.values():
        for desc in file.message_types_by_name.values():
            yield from _nested_messages(desc)


def all_enums() -> Iterator[EnumDescriptor]:
    for file in FILES.values():
        yield from file.enum_types_by_name.values()
    for desc in all_messages():
        yield from desc.enum_types


def all_services() -> Iterator[ServiceDescriptor]:
    for file in FILES.values():
        yield from file.services_by_name.values()


def all_methods() -> Iterator[MethodDescriptor]:
    for service in all_services():
        yield from service.methods


# --------------------------------------------------------------------------------------
# Files and packages
# --------------------------------------------------------------------------------------


def test_files_and_package() -> None:
    for stem, file in FILES.items():
        assert file.name == f"signalhub/v1/{stem}.proto"
        assert file.package == PACKAGE


OWNERS = {
    "common": {"messages": ["Quote"], "enums": ["Side", "CloseReason"]},
    "gateway": {
        "messages": [
            "DeviceFrame",
            "GatewayFrame",
            "SealedInstruction",
            "Instruction",
            "Hello",
            "SymbolSpec",
            "Welcome",
            "Heartbeat",
            "Delivery",
            "Ack",
            "Fill",
            "CloseOrder",
            "CloseResult",
            "Receipt",
        ],
        "enums": ["AckStage", "ReceiptStatus"],
    },
}


@pytest.mark.parametrize("stem", sorted(OWNERS))
def test_types_live_in_their_file(stem: str) -> None:
    file = FILES[stem]
    for name in OWNERS[stem]["messages"]:
        assert name in file.message_types_by_name, f"{name} must be defined in {stem}.proto"
    for name in OWNERS[stem]["enums"]:
        assert name in file.enum_types_by_name, f"{name} must be defined in {stem}.proto"


def test_back_office_does_not_reuse_gateway_names() -> None:
    gateway_names = set(FILES["gateway"].message_types_by_name)
    backoffice_names = set(FILES["backoffice"].message_types_by_name)
    assert not gateway_names & backoffice_names
    assert "Delivery" not in backoffice_names
    assert "CloseOrder" not in backoffice_names


# --------------------------------------------------------------------------------------
# Services and RPCs: name -> (request, response, client streaming, server streaming)
# --------------------------------------------------------------------------------------

Rpc = tuple[str, str, bool, bool]


def _unary(request: str, response: str) -> Rpc:
    return (request, response, False, False)


SERVICES: dict[str, dict[str, Rpc]] = {
    "DeviceGateway": {
        "Connect": ("DeviceFrame", "GatewayFrame", True, True),
    },
    "AccountService": {
        "CreateUser": _unary("CreateUserRequest", "CreateUserResponse"),
        "GetCurrentUser": _unary("GetCurrentUserRequest", "User"),
        "CreateApiToken": _unary("CreateApiTokenRequest", "CreateApiTokenResponse"),
        "RevokeApiToken": _unary("RevokeApiTokenRequest", "ApiToken"),
        "CreateProducer": _unary("CreateProducerRequest", "CreateProducerResponse"),
        "RotateProducerSecret": _unary("RotateProducerSecretRequest", "RotateProducerSecretResponse"),
        "RevokeProducer": _unary("RevokeProducerRequest", "Producer"),
        "ListProducers": _unary("ListProducersRequest", "ListProducersResponse"),
        "ListUsers": _unary("ListUsersRequest", "ListUsersResponse"),
    },
    "RiskService": {
        "GetRiskPolicy": _unary("GetRiskPolicyRequest", "RiskPolicy"),
        "UpdateRiskPolicy": _unary("UpdateRiskPolicyRequest", "RiskPolicy"),
        "ListStopouts": _unary("ListStopoutsRequest", "ListStopoutsResponse"),
        "ResetStopout": _unary("ResetStopoutRequest", "Stopout"),
    },
    "SignalService": {
        "SubmitSignal": _unary("SubmitSignalRequest", "Signal"),
        "CancelSignal": _unary("CancelSignalRequest", "Signal"),
        "SubmitQuotes": _unary("SubmitQuotesRequest", "SubmitQuotesResponse"),
        "GetSignal": _unary("GetSignalRequest", "Signal"),
        "ListSignals": _unary("ListSignalsRequest", "ListSignalsResponse"),
    },
    "ApprovalService": {
        "Subscribe": _unary("SubscribeRequest", "Subscription"),
        "Unsubscribe": _unary("UnsubscribeRequest", "Subscription"),
        "ListSubscriptions": _unary("ListSubscriptionsRequest", "ListSubscriptionsResponse"),
        "ListPendingApprovals": _unary("ListPendingApprovalsRequest", "ListPendingApprovalsResponse"),
        "ApproveSignal": _unary("ApproveSignalRequest", "Approval"),
        "RejectSignal": _unary("RejectSignalRequest", "Approval"),
        "ListApprovals": _unary("ListApprovalsRequest", "ListApprovalsResponse"),
    },
    "DeviceService": {
        "RegisterDevice": _unary("RegisterDeviceRequest", "RegisterDeviceResponse"),
        "GetDevice": _unary("GetDeviceRequest", "Device"),
        "ListDevices": _unary("ListDevicesRequest", "ListDevicesResponse"),
        "UpdateDevice": _unary("UpdateDeviceRequest", "Device"),
        "RotateDeviceSecret": _unary("RotateDeviceSecretRequest", "RotateDeviceSecretResponse"),
        "RevokeDevice": _unary("RevokeDeviceRequest", "Device"),
    },
    "ExecutionService": {
        "GetSignalExecution": _unary("GetSignalExecutionRequest", "SignalExecution"),
        "ListExecutions": _unary("ListExecutionsRequest", "ListExecutionsResponse"),
    },
    "PositionService": {
        "ListPositions": _unary("ListPositionsRequest", "ListPositionsResponse"),
        "GetPosition": _unary("GetPositionRequest", "Position"),
        "ClosePosition": _unary("ClosePositionRequest", "CloseCommand"),
        "UpdateProtection": _unary("UpdateProtectionRequest", "Position"),
        "ListCloseCommands": _unary("ListCloseCommandsRequest", "ListCloseCommandsResponse"),
    },
    "AffiliateService": {
        "RegisterAffiliate": _unary("RegisterAffiliateRequest", "Affiliate"),
        "GetReferralLink": _unary("GetReferralLinkRequest", "GetReferralLinkResponse"),
        "GetAffiliateStats": _unary("GetAffiliateStatsRequest", "GetAffiliateStatsResponse"),
        "ListReferrals": _unary("ListReferralsRequest", "ListReferralsResponse"),
        "ListCommissions": _unary("ListCommissionsRequest", "ListCommissionsResponse"),
        "RequestPayout": _unary("RequestPayoutRequest", "Payout"),
        "ListPayouts": _unary("ListPayoutsRequest", "ListPayoutsResponse"),
        "ApprovePayout": _unary("ApprovePayoutRequest", "Payout"),
        "RejectPayout": _unary("RejectPayoutRequest", "Payout"),
        "MarkPayoutPaid": _unary("MarkPayoutPaidRequest", "Payout"),
        "ReverseFill": _unary("ReverseFillRequest", "Commission"),
    },
    "AuditService": {
        "ListAuditEvents": _unary("ListAuditEventsRequest", "ListAuditEventsResponse"),
        "ListAlerts": _unary("ListAlertsRequest", "ListAlertsResponse"),
    },
}

SERVICE_FILES = {name: "backoffice" for name in SERVICES} | {"DeviceGateway": "gateway"}


def test_exactly_the_contract_services() -> None:
    assert sorted(s.full_name for s in all_services()) == sorted(f"{PACKAGE}.{name}" for name in SERVICES)


@pytest.mark.parametrize("service_name", sorted(SERVICES))
def test_service_rpcs(service_name: str) -> None:
    service = FILES[SERVICE_FILES[service_name]].services_by_name[service_name]
    expected = SERVICES[service_name]
    # Exactly the contract's RPCs: each one must be implemented or answer UNIMPLEMENTED.
    assert sorted(service.methods_by_name) == sorted(expected)
    for rpc_name, (request, response, client_streaming, server_streaming) in expected.items():
        method = service.methods_by_name[rpc_name]
        assert _short(method.input_type.full_name) == request, rpc_name
        assert _short(method.output_type.full_name) == response, rpc_name
        assert method.client_streaming is client_streaming, rpc_name
        assert method.server_streaming is server_streaming, rpc_name


def test_full_method_names_used_in_signatures() -> None:
    # The SH1 signature covers the full method name, so these strings are part of the
    # contract too.
    submit = backoffice_pb2.DESCRIPTOR.services_by_name["SignalService"].methods_by_name["SubmitSignal"]
    assert f"/{submit.containing_service.full_name}/{submit.name}" == ("/signalhub.v1.SignalService/SubmitSignal")
    connect = gateway_pb2.DESCRIPTOR.services_by_name["DeviceGateway"].methods_by_name["Connect"]
    assert f"/{connect.containing_service.full_name}/{connect.name}" == ("/signalhub.v1.DeviceGateway/Connect")


# --------------------------------------------------------------------------------------
# Gateway frames: names, types and numbers are all binding
# --------------------------------------------------------------------------------------

# message -> {field: (number, type, oneof or None)}
GATEWAY_FIELDS: dict[str, dict[str, tuple[int, str, str | None]]] = {
    "DeviceFrame": {
        "frame_id": (1, "string", None),
        "hello": (2, "Hello", "body"),
        "ack": (3, "Ack", "body"),
        "fill": (4, "Fill", "body"),
        "close_result": (5, "CloseResult", "body"),
        "quote": (6, "Quote", "body"),
        "heartbeat": (7, "Heartbeat", "body"),
        "account_state": (8, "AccountState", "body"),
    },
    "AccountState": {
        "balance": (1, "string", None),
        "equity": (2, "string", None),
        "margin": (3, "string", None),
        "free_margin": (4, "string", None),
        "state_time": (5, "google.protobuf.Timestamp", None),
    },
    "GatewayFrame": {
        "welcome": (1, "Welcome", "body"),
        "instruction": (2, "SealedInstruction", "body"),
        "receipt": (4, "Receipt", "body"),
        "heartbeat": (5, "Heartbeat", "body"),
    },
    "SealedInstruction": {
        "nonce": (1, "bytes", None),
        "ciphertext": (2, "bytes", None),
    },
    "Instruction": {
        "delivery": (1, "Delivery", "body"),
        "close": (2, "CloseOrder", "body"),
    },
    "Hello": {
        "bridge_version": (1, "string", None),
        "account_currency": (2, "string", None),
        "balance": (3, "string", None),
        "equity": (4, "string", None),
        "symbols": (5, "repeated SymbolSpec", None),
    },
    "SymbolSpec": {
        "name": (1, "string", None),
        "contract_size": (2, "string", None),
        "tick_size": (3, "string", None),
        "tick_value": (4, "string", None),
        "volume_min": (5, "string", None),
        "volume_step": (6, "string", None),
        "volume_max": (7, "string", None),
    },
    "Welcome": {
        "device_id": (1, "string", None),
        "session_id": (2, "string", None),
        "server_time": (3, "google.protobuf.Timestamp", None),
        "heartbeat_seconds": (4, "int32", None),
    },
    "Delivery": {
        "delivery_id": (1, "string", None),
        "signal_id": (2, "string", None),
        "instrument": (3, "string", None),
        "side": (4, "Side", None),
        "volume": (5, "string", None),
        "entry_price": (6, "string", None),
        "max_deviation": (7, "string", None),
        "expire_time": (8, "google.protobuf.Timestamp", None),
        "attempt": (9, "int32", None),
    },
    "Ack": {
        "delivery_id": (1, "string", None),
        "stage": (2, "AckStage", None),
        "reason": (3, "string", None),
    },
    "Fill": {
        "delivery_id": (1, "string", None),
        "broker_ticket": (2, "string", None),
        "price": (3, "string", None),
        "volume": (4, "string", None),
        "fill_time": (5, "google.protobuf.Timestamp", None),
    },
    "CloseOrder": {
        "command_id": (1, "string", None),
        "position_id": (2, "string", None),
        "broker_ticket": (3, "string", None),
        "volume": (4, "string", None),
        "reason": (5, "CloseReason", None),
    },
    "CloseResult": {
        "command_id": (1, "string", None),
        "success": (2, "bool", None),
        "close_price": (3, "string", None),
        "closed_volume": (4, "string", None),
        "error": (5, "string", None),
    },
    "Receipt": {
        "frame_id": (1, "string", None),
        "status": (2, "ReceiptStatus", None),
        "error": (3, "google.rpc.Status", None),
    },
    "Quote": {
        "instrument": (1, "string", None),
        "bid": (2, "string", None),
        "ask": (3, "string", None),
        "quote_time": (4, "google.protobuf.Timestamp", None),
    },
}


@pytest.mark.parametrize("message_name", sorted(GATEWAY_FIELDS))
def test_gateway_fields(message_name: str) -> None:
    desc = message(message_name)
    for field_name, (number, type_name, oneof) in GATEWAY_FIELDS[message_name].items():
        assert field_name in desc.fields_by_name, f"{message_name}.{field_name} missing"
        field = desc.fields_by_name[field_name]
        assert field.number == number, f"{message_name}.{field_name} renumbered"
        assert type_of(field) == type_name, f"{message_name}.{field_name} retyped"
        actual_oneof = field.containing_oneof.name if field.containing_oneof else None
        assert actual_oneof == oneof, f"{message_name}.{field_name} oneof changed"


def test_gateway_frame_keeps_number_3_reserved() -> None:
    desc = message("GatewayFrame")
    assert 3 not in desc.fields_by_number
    reserved = gateway_pb2.GatewayFrame.DESCRIPTOR
    # The descriptor does not expose reserved ranges directly; go through its proto form.
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.DescriptorProto()
    reserved.CopyToProto(proto)
    assert any(r.start <= 3 < r.end for r in proto.reserved_range)


def test_no_hidden_levels_or_payload_in_gateway_messages() -> None:
    forbidden = {"stop_loss", "take_profit", "payload", "trailing_distance", "breakeven_trigger", "breakeven_offset"}
    for desc in FILES["gateway"].message_types_by_name.values():
        for nested in _nested_messages(desc):
            assert not forbidden & set(nested.fields_by_name), nested.full_name
    assert not forbidden & set(message("Quote").fields_by_name)


# Known-answer bytes from the shared test vectors: the SH1 signature's body is a
# SubmitSignalRequest with request_id "ABCD"; the sealed instruction's plaintext is an
# Instruction carrying a Delivery with delivery_id "delivery-001".
def test_wire_bytes_match_the_shared_vectors() -> None:
    body = backoffice_pb2.SubmitSignalRequest(request_id="ABCD").SerializeToString()
    assert body.hex() == "0a0441424344"
    instruction = gateway_pb2.Instruction(delivery=gateway_pb2.Delivery(delivery_id="delivery-001")).SerializeToString()
    assert instruction.hex() == "0a0e0a0c64656c69766572792d303031"


# --------------------------------------------------------------------------------------
# Back-office messages: field names and types (numbers are free until published)
# --------------------------------------------------------------------------------------

TS = "google.protobuf.Timestamp"
STRUCT = "google.protobuf.Struct"

FIELDS: dict[str, dict[str, str]] = {
    # Accounts
    "User": {"id": "string", "email": "string", "role": "Role", "create_time": TS},
    "ApiToken": {
        "id": "string",
        "user_id": "string",
        "name": "string",
        "create_time": TS,
        "revoke_time": TS,
        "last_used_time": TS,
    },
    "Producer": {
        "id": "string",
        "name": "string",
        "status": "ProducerStatus",
        "create_time": TS,
        "secret_rotate_time": TS,
    },
    "CreateUserRequest": {
        "request_id": "string",
        "email": "string",
        "role": "Role",
        "referral_code": "string",
    },
    "CreateUserResponse": {"user": "User", "api_token": "string"},
    "GetCurrentUserRequest": {},
    "CreateApiTokenRequest": {"request_id": "string", "name": "string"},
    "CreateApiTokenResponse": {"token": "ApiToken", "api_token": "string"},
    "RevokeApiTokenRequest": {"id": "string"},
    "CreateProducerRequest": {"request_id": "string", "name": "string"},
    "CreateProducerResponse": {"producer": "Producer", "secret": "string"},
    "RotateProducerSecretRequest": {"id": "string"},
    "RotateProducerSecretResponse": {"producer": "Producer", "secret": "string"},
    "RevokeProducerRequest": {"id": "string"},
    # Signals
    "Signal": {
        "id": "string",
        "producer_id": "string",
        "request_id": "string",
        "instrument": "string",
        "side": "Side",
        "entry_price": "string",
        "stop_loss": "string",
        "take_profit": "string",
        "signal_time": TS,
        "expire_time": TS,
        "payload": STRUCT,
        "status": "SignalStatus",
        "create_time": TS,
        "cancel_time": TS,
    },
    "SubmitSignalRequest": {
        "request_id": "string",
        "instrument": "string",
        "side": "Side",
        "entry_price": "string",
        "stop_loss": "string",
        "take_profit": "string",
        "signal_time": TS,
        "expire_time": TS,
        "payload": STRUCT,
    },
    "CancelSignalRequest": {"id": "string", "request_id": "string", "reason": "string", "close_positions": "bool"},
    "SubmitQuotesRequest": {"quotes": "repeated Quote"},
    "SubmitQuotesResponse": {"accepted_count": "int32"},
    "GetSignalRequest": {"id": "string"},
    "ListSignalsRequest": {"producer_id": "string", "status": "SignalStatus"},
    "ListSignalsResponse": {"signals": "repeated Signal"},
    # Subscriptions and approvals
    "Subscription": {
        "id": "string",
        "user_id": "string",
        "producer_id": "string",
        "mode": "SubscriptionMode",
        "sizing": "SizingMode",
        "sizing_value": "string",
        "max_volume": "string",
        "instruments": "repeated string",
        "status": "SubscriptionStatus",
        "create_time": TS,
    },
    "SubscribeRequest": {
        "request_id": "string",
        "producer_id": "string",
        "mode": "SubscriptionMode",
        "sizing": "SizingMode",
        "sizing_value": "string",
        "max_volume": "string",
        "instruments": "repeated string",
    },
    "UnsubscribeRequest": {"id": "string"},
    "ListSubscriptionsResponse": {"subscriptions": "repeated Subscription"},
    "Approval": {
        "id": "string",
        "signal_id": "string",
        "subscription_id": "string",
        "user_id": "string",
        "status": "ApprovalStatus",
        "volume": "string",
        "device_ids": "repeated string",
        "auto_approved": "bool",
        "reason": "string",
        "create_time": TS,
        "decide_time": TS,
        "signal": "Signal",
    },
    "ApproveSignalRequest": {
        "signal_id": "string",
        "request_id": "string",
        "volume": "string",
        "device_ids": "repeated string",
    },
    "RejectSignalRequest": {"signal_id": "string", "request_id": "string", "reason": "string"},
    "ListPendingApprovalsResponse": {"approvals": "repeated Approval"},
    "ListApprovalsResponse": {"approvals": "repeated Approval"},
    # Devices
    "Device": {
        "id": "string",
        "user_id": "string",
        "name": "string",
        "mac_address": "string",
        "symbol_map": "map<string, string>",
        "status": "DeviceStatus",
        "create_time": TS,
        "last_seen_time": TS,
        "secret_rotate_time": TS,
        "bridge_version": "string",
        "account_currency": "string",
        "balance": "string",
        "equity": "string",
        "account_state": "DeviceAccountState",
    },
    "DeviceAccountState": {
        "balance": "string",
        "equity": "string",
        "margin": "string",
        "free_margin": "string",
        "state_time": TS,
    },
    "ListProducersResponse": {"producers": "repeated Producer", "next_page_token": "string"},
    "ListUsersRequest": {"page_size": "int32", "page_token": "string", "email": "string"},
    "ListUsersResponse": {"users": "repeated User", "next_page_token": "string"},
    "RegisterDeviceRequest": {
        "request_id": "string",
        "name": "string",
        "mac_address": "string",
        "symbol_map": "map<string, string>",
    },
    "RegisterDeviceResponse": {"device": "Device", "secret": "string"},
    "GetDeviceRequest": {"id": "string"},
    "ListDevicesResponse": {"devices": "repeated Device"},
    "UpdateDeviceRequest": {
        "id": "string",
        "name": "string",
        "symbol_map": "map<string, string>",
        "update_mask": "google.protobuf.FieldMask",
    },
    "RotateDeviceSecretRequest": {"id": "string"},
    "RotateDeviceSecretResponse": {"device": "Device", "secret": "string"},
    "RevokeDeviceRequest": {"id": "string"},
    # Executions
    "GetSignalExecutionRequest": {"signal_id": "string"},
    "SignalExecution": {"signal_id": "string", "devices": "repeated DeviceExecution"},
    "DeviceExecution": {
        "delivery_id": "string",
        "device_id": "string",
        "state": "DeliveryState",
        "attempt": "int32",
        "instrument": "string",
        "volume": "string",
        "entry_price": "string",
        "fill_price": "string",
        "slippage": "string",
        "latencies": "repeated StageLatency",
        "events": "repeated ExecutionEvent",
    },
    "StageLatency": {"stage": "DeliveryState", "latency": "google.protobuf.Duration"},
    "ExecutionEvent": {
        "id": "string",
        "type": "ExecutionEventType",
        "stage": "DeliveryState",
        "delivery_id": "string",
        "error": "string",
        "create_time": TS,
    },
    "ListExecutionsResponse": {"executions": "repeated DeviceExecution"},
    # Positions
    "Position": {
        "id": "string",
        "device_id": "string",
        "signal_id": "string",
        "instrument": "string",
        "side": "Side",
        "volume": "string",
        "entry_price": "string",
        "stop_loss": "string",
        "take_profit": "string",
        "broker_ticket": "string",
        "status": "PositionStatus",
        "close_price": "string",
        "profit": "string",
        "signal_instrument": "string",
        "trailing_distance": "string",
        "breakeven_trigger": "string",
        "breakeven_offset": "string",
        "price_profit": "string",
        "events": "repeated PositionEvent",
    },
    "PositionEvent": {
        "id": "string",
        "type": "PositionEventType",
        "stop_loss": "string",
        "take_profit": "string",
        "price": "string",
        "close_command_id": "string",
        "reason": "CloseReason",
    },
    "GetPositionRequest": {"id": "string"},
    "ListPositionsResponse": {"positions": "repeated Position"},
    "ClosePositionRequest": {"id": "string", "request_id": "string", "volume": "string"},
    "UpdateProtectionRequest": {
        "id": "string",
        "request_id": "string",
        "stop_loss": "string",
        "take_profit": "string",
        "trailing_distance": "string",
        "breakeven_trigger": "string",
        "breakeven_offset": "string",
    },
    "CloseCommand": {
        "id": "string",
        "position_id": "string",
        "device_id": "string",
        "volume": "string",
        "reason": "CloseReason",
        "status": "CloseCommandStatus",
        "close_price": "string",
        "closed_volume": "string",
        "error": "string",
        "create_time": TS,
        "complete_time": TS,
    },
    "ListCloseCommandsResponse": {"close_commands": "repeated CloseCommand"},
    # Affiliates
    "Affiliate": {"id": "string", "user_id": "string", "referral_code": "string"},
    "Commission": {
        "id": "string",
        "affiliate_id": "string",
        "referred_user_id": "string",
        "amount": "string",
        "status": "CommissionStatus",
        "execution_event_id": "string",
        "lots": "string",
        "available_time": TS,
        "reverse_time": TS,
        "reverse_reason": "string",
        "clawed_back": "bool",
    },
    "RequestPayoutRequest": {
        "request_id": "string",
        "amount": "string",
        "method_details": STRUCT,
    },
    "Payout": {"id": "string", "amount": "string", "status": "PayoutStatus"},
    "GetReferralLinkResponse": {"url": "string", "referral_code": "string"},
    "ListReferralsResponse": {"referrals": "repeated Referral"},
    "ListCommissionsResponse": {"commissions": "repeated Commission"},
    "ListPayoutsResponse": {"payouts": "repeated Payout"},
    "ApprovePayoutRequest": {"id": "string"},
    "RejectPayoutRequest": {"id": "string"},
    "MarkPayoutPaidRequest": {"id": "string"},
    "ReverseFillRequest": {"request_id": "string", "execution_event_id": "string", "reason": "string"},
    "GetAffiliateStatsRequest": {"affiliate_id": "string"},
    "GetAffiliateStatsResponse": {
        "affiliate_id": "string",
        "lots": "string",
        "commission_clawback_due": "string",
        "months": "repeated AffiliateMonthStats",
    },
    "AffiliateMonthStats": {"month": "string", "lots": "string", "commission_total": "string", "fill_count": "int64"},
    # Audit
    "AuditEvent": {
        "id": "string",
        "actor_type": "ActorType",
        "actor_id": "string",
        "action": "string",
        "object_type": "string",
        "object_id": "string",
        "details": STRUCT,
        "create_time": TS,
        "request_id": "string",
    },
    "ListAuditEventsResponse": {"audit_events": "repeated AuditEvent"},
    "Alert": {
        "id": "string",
        "kind": "AlertKind",
        "status": "AlertStatus",
        "device_id": "string",
        "position_id": "string",
        "message": "string",
    },
    "ListAlertsRequest": {"status": "AlertStatus", "kind": "AlertKind", "device_id": "string"},
    "ListAlertsResponse": {"alerts": "repeated Alert"},
}


# The risk messages, with their numbers (binding, like the gateway's).
RISK_FIELDS: dict[str, dict[str, tuple[int, str]]] = {
    "RiskLimit": {
        "period": (1, "RiskPeriod"),
        "metric": (2, "RiskMetric"),
        "max_amount": (3, "string"),
        "max_percent": (4, "string"),
        "action": (5, "RiskAction"),
    },
    "RiskPolicy": {
        "device_id": (1, "string"),
        "limits": (2, "repeated RiskLimit"),
        "max_open_positions": (3, "int32"),
        "max_open_positions_per_instrument": (4, "int32"),
        "max_volume": (5, "string"),
        "max_deviation": (6, "string"),
        "max_delay_seconds": (7, "int32"),
        "allowed_sides": (8, "repeated Side"),
    },
    "Stopout": {
        "id": (1, "string"),
        "device_id": (2, "string"),
        "limit": (3, "RiskLimit"),
        "reference": (4, "string"),
        "value": (5, "string"),
        "equity": (6, "string"),
        "trigger_time": (7, TS),
        "end_time": (8, TS),
        "reset_time": (9, TS),
        "active": (10, "bool"),
    },
    "GetRiskPolicyRequest": {"device_id": (1, "string")},
    "UpdateRiskPolicyRequest": {"request_id": (1, "string"), "policy": (2, "RiskPolicy")},
    "ListStopoutsRequest": {
        "device_id": (1, "string"),
        "active_only": (2, "bool"),
        "page_size": (3, "int32"),
        "page_token": (4, "string"),
    },
    "ListStopoutsResponse": {"stopouts": (1, "repeated Stopout"), "next_page_token": (2, "string")},
    "ResetStopoutRequest": {"request_id": (1, "string"), "id": (2, "string")},
}


@pytest.mark.parametrize("message_name", sorted(RISK_FIELDS))
def test_risk_fields(message_name: str) -> None:
    desc = message(message_name)
    for field_name, (number, type_name) in RISK_FIELDS[message_name].items():
        field = desc.fields_by_name[field_name]
        assert (field.number, type_of(field)) == (number, type_name), f"{message_name}.{field_name}"


@pytest.mark.parametrize("message_name", sorted(FIELDS))
def test_message_fields(message_name: str) -> None:
    desc = message(message_name)
    assert desc.file.name == "signalhub/v1/backoffice.proto"
    for field_name, type_name in FIELDS[message_name].items():
        assert field_name in desc.fields_by_name, f"{message_name}.{field_name} missing"
        assert type_of(desc.fields_by_name[field_name]) == type_name, (
            f"{message_name}.{field_name} is {type_of(desc.fields_by_name[field_name])}"
        )


# --------------------------------------------------------------------------------------
# Enums: values are binding names and numbers
# --------------------------------------------------------------------------------------

# The servicers put a stored enum on the wire by name (wire.enum_to_wire: ``Side.BUY`` is ``SIDE_BUY``), so
# a wire enum that carries a stored one has the model's values, in the model's order; only the enums with
# no stored twin, or a different set, are written out here.
STORED_ENUMS: dict[str, type[StrEnum]] = {
    "Side": stored.Side,
    "CloseReason": stored.CloseReason,
    "Role": stored.Role,
    "ProducerStatus": stored.ProducerStatus,
    "SignalStatus": stored.SignalStatus,
    "SubscriptionMode": stored.SubscriptionMode,
    "SizingMode": stored.SizingMode,
    "SubscriptionStatus": stored.SubscriptionStatus,
    "ApprovalStatus": stored.ApprovalStatus,
    "DeviceStatus": stored.DeviceStatus,
    "DeliveryState": stored.DeliveryState,
    "PositionStatus": stored.PositionStatus,
    "CloseCommandStatus": stored.CloseCommandStatus,
    "PositionEventType": stored.PositionEventKind,
    "AlertKind": stored.AlertKind,
    "PayoutStatus": stored.PayoutStatus,
    "ActorType": stored.ActorType,
    "RiskPeriod": stored.RiskPeriod,
    "RiskMetric": stored.RiskMetric,
    "RiskAction": stored.RiskAction,
}

ENUMS: dict[str, list[str]] = {name: [member.value for member in kind] for name, kind in STORED_ENUMS.items()} | {
    "AckStage": ["RECEIVED", "PLACED", "REJECTED"],
    "ReceiptStatus": ["ACCEPTED", "DUPLICATE", "REJECTED"],
    # The stored kinds add QUOTE, HEARTBEAT and HELLO, which are never shown as execution events.
    "ExecutionEventType": ["SENT", "ACK", "FILL", "CLOSE_RESULT", "EXPIRED", "ERROR"],
    "AlertStatus": ["OPEN", "RESOLVED"],
    # RESERVED and PAID are wire values the stored commission does not use.
    "CommissionStatus": ["PENDING", "AVAILABLE", "RESERVED", "PAID", "VOIDED"],
}


def _enum_prefix(name: str) -> str:
    out = ""
    for i, ch in enumerate(name):
        if ch.isupper() and i > 0:
            out += "_"
        out += ch.upper()
    return out + "_"


def test_enum_prefix_helper() -> None:
    assert _enum_prefix("CloseCommandStatus") == "CLOSE_COMMAND_STATUS_"
    assert _enum_prefix("Side") == "SIDE_"


@pytest.mark.parametrize("enum_name", sorted(ENUMS))
def test_enum_values(enum_name: str) -> None:
    desc = enum(enum_name)
    prefix = _enum_prefix(enum_name)
    expected = [f"{prefix}UNSPECIFIED"] + [prefix + value for value in ENUMS[enum_name]]
    actual = [value.name for value in sorted(desc.values, key=lambda v: v.number)]
    # Values may be added at the end; none listed may move or disappear.
    assert actual[: len(expected)] == expected
    for number, name in enumerate(expected):
        assert desc.values_by_name[name].number == number


def test_every_enum_is_pinned() -> None:
    assert sorted(e.full_name for e in all_enums()) == sorted(f"{PACKAGE}.{n}" for n in ENUMS)


def test_every_enum_starts_with_unspecified_zero() -> None:
    for desc in all_enums():
        zero = desc.values_by_number[0]
        assert zero.name.endswith("_UNSPECIFIED"), desc.full_name
        assert zero.name == _enum_prefix(desc.name) + "UNSPECIFIED", desc.full_name


# --------------------------------------------------------------------------------------
# Conventions that hold across the contract
# --------------------------------------------------------------------------------------


def test_every_list_rpc_pages() -> None:
    list_methods = [m for m in all_methods() if m.name.startswith("List")]
    assert len(list_methods) == 16
    for method in list_methods:
        request = method.input_type
        response = method.output_type
        assert request.name == f"{method.name}Request"
        assert response.name == f"{method.name}Response"
        assert type_of(request.fields_by_name["page_size"]) == "int32", method.name
        assert type_of(request.fields_by_name["page_token"]) == "string", method.name
        assert type_of(response.fields_by_name["next_page_token"]) == "string", method.name
        repeated = [f for f in response.fields if f.is_repeated and f.type == FieldDescriptor.TYPE_MESSAGE]
        assert len(repeated) == 1, f"{response.name} must hold one repeated resource field"


RESOURCE_RPCS_TAKING_ID = [
    "GetDevice",
    "UpdateDevice",
    "RotateDeviceSecret",
    "RevokeDevice",
    "GetPosition",
    "ClosePosition",
    "UpdateProtection",
    "GetSignal",
    "CancelSignal",
    "Unsubscribe",
    "RevokeApiToken",
    "RotateProducerSecret",
    "RevokeProducer",
    "ApprovePayout",
    "RejectPayout",
    "MarkPayoutPaid",
]


def test_rpcs_named_after_their_resource_take_id() -> None:
    methods = {m.name: m for m in all_methods()}
    for name in RESOURCE_RPCS_TAKING_ID:
        field = methods[name].input_type.fields_by_name.get("id")
        assert field is not None, name
        assert type_of(field) == "string", name


RETRYABLE_MUTATIONS = [
    "CreateUser",
    "CreateApiToken",
    "CreateProducer",
    "RotateProducerSecret",
    "SubmitSignal",
    "CancelSignal",
    "Subscribe",
    "ApproveSignal",
    "RejectSignal",
    "RegisterDevice",
    "RotateDeviceSecret",
    "ClosePosition",
    "UpdateProtection",
    "RegisterAffiliate",
    "RequestPayout",
    "ApprovePayout",
    "RejectPayout",
    "MarkPayoutPaid",
    "ReverseFill",
]


def test_retryable_mutations_take_request_id() -> None:
    methods = {m.name: m for m in all_methods()}
    for name in RETRYABLE_MUTATIONS:
        field = methods[name].input_type.fields_by_name.get("request_id")
        assert field is not None, name
        assert type_of(field) == "string", name


def test_resources_carry_their_id_in_id() -> None:
    for name in [
        "User",
        "ApiToken",
        "Producer",
        "Signal",
        "Subscription",
        "Approval",
        "Device",
        "Position",
        "CloseCommand",
        "Affiliate",
        "Referral",
        "Commission",
        "Payout",
        "AuditEvent",
        "ExecutionEvent",
        "PositionEvent",
        "Alert",
    ]:
        desc = message(name)
        assert type_of(desc.fields_by_name["id"]) == "string", name
        assert desc.fields_by_name["id"].number == 1, name


CREDENTIAL_RESPONSES = {
    "CreateUserResponse": "api_token",
    "CreateApiTokenResponse": "api_token",
    "CreateProducerResponse": "secret",
    "RotateProducerSecretResponse": "secret",
    "RegisterDeviceResponse": "secret",
    "RotateDeviceSecretResponse": "secret",
}


def test_secrets_appear_only_in_credential_responses() -> None:
    for desc in all_messages():
        for field in desc.fields:
            name = field.name
            looks_secret = name in {"secret", "api_token", "token_hash", "secret_hash", "password"} or name.endswith(
                ("_secret", "_hash")
            )
            if looks_secret:
                assert CREDENTIAL_RESPONSES.get(desc.name) == name, field.full_name


def test_no_floating_point_anywhere() -> None:
    for desc in all_messages():
        for field in desc.fields:
            assert field.type not in (
                FieldDescriptor.TYPE_FLOAT,
                FieldDescriptor.TYPE_DOUBLE,
            ), f"{field.full_name}: prices, volumes and money are decimal strings"


def test_times_are_timestamps() -> None:
    for desc in all_messages():
        for field in desc.fields:
            if field.name.endswith("_time"):
                assert type_of(field) == TS, field.full_name


def test_references_are_kind_ids() -> None:
    # A field ending in "_id" or "_ids" is a string reference (repeated for "_ids").
    for desc in all_messages():
        for field in desc.fields:
            if field.name.endswith("_id"):
                assert type_of(field) == "string", field.full_name
            if field.name.endswith("_ids"):
                assert type_of(field) == "repeated string", field.full_name
