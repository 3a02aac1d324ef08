"""Domain exceptions. Domain code raises these; ``backoffice.rpc_errors`` maps them to gRPC status in one place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class DomainError(Exception):
    """Base of every error a client is told about. ``reason`` becomes ``google.rpc.ErrorInfo.reason``."""

    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[tuple[str, str]], *, reason: str | None = None) -> None:
        """``violations``: one (field path, what is wrong) per bad field."""
        self.violations = list(violations)
        fields = ", ".join(f for f, _ in self.violations)
        super().__init__(f"invalid request: {fields}", reason=reason)


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class NotFound(DomainError):
    """Absent, or not the caller's: the two are never told apart."""

    reason = "NOT_FOUND"

    def __init__(self, kind: str, object_id: object = None) -> None:
        super().__init__(f"{kind} not found", metadata={"kind": kind})


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class ResourceExhausted(DomainError):
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    reason = "UNAVAILABLE"


class Aborted(DomainError):
    reason = "ABORTED"


class NotImplementedYet(DomainError):
    reason = "NOT_IMPLEMENTED"
