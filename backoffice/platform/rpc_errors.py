"""The one place where domain exceptions become gRPC status: a ``google.rpc.Status`` with one
``ErrorInfo`` (and a ``BadRequest`` for validation errors) in ``grpc-status-details-bin``."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from signalhub.protocol import errors
from signalhub.protocol.signing import SignatureError

DOMAIN = "signalhub.v1"
DETAILS_KEY = "grpc-status-details-bin"

_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.NotImplementedYet: grpc.StatusCode.UNIMPLEMENTED,
}


def status_code_of(error: errors.DomainError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def as_domain_error(error: SignatureError) -> errors.Unauthenticated:
    return errors.Unauthenticated(error.detail, reason=error.reason.value)


# Error details travel in trailing metadata, which gRPC caps at 16 KiB: a client's own huge input (a
# field path naming a 200,000-character map key) must never be echoed whole, or the status itself is lost.
MAX_DETAIL_TEXT = 200
MAX_VIOLATIONS = 20


def build_status(error: errors.DomainError, request_id: str | None = None) -> tuple[grpc.StatusCode, status_pb2.Status]:
    code = status_code_of(error)
    metadata = {_cut(key): _cut(value) for key, value in error.metadata.items()}
    if request_id:
        metadata["request_id"] = request_id
    status = status_pb2.Status(code=_rpc_code(code), message=_cut(error.message, 4 * MAX_DETAIL_TEXT))
    _pack(status, error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata))
    if isinstance(error, errors.InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=_cut(field), description=_cut(description))
                for field, description in error.violations[:MAX_VIOLATIONS]
            ]
        )
        _pack(status, bad_request)
    return code, status


def _cut(text: str, limit: int = MAX_DETAIL_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def trailing_metadata(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return ((DETAILS_KEY, status.SerializeToString()),)


def _pack(status: status_pb2.Status, detail: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> None:
    holder = any_pb2.Any()
    holder.Pack(detail)
    status.details.append(holder)


def _rpc_code(code: grpc.StatusCode) -> int:
    value = code.value[0]
    assert isinstance(value, int)
    return value if value in code_pb2.Code.values() else code_pb2.UNKNOWN
