"""Idempotent mutations (docs/contract.md): the same caller repeating a request_id with the same request gets
the first response; with a different request, ALREADY_EXISTS.

The record is inserted first, in the same transaction as the change: a concurrent repeat blocks on its
unique key until the first commits, then reads the stored response. If the first rolls back, the repeat
simply does the work itself. Responses are sealed, because some carry a secret shown once.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice.models import Base, IdempotencyRecord
from backoffice.platform import db
from backoffice.platform.vault import Binding, Vault
from signalhub.protocol.errors import AlreadyExists
from signalhub.protocol.wire import parse_id

ResponseT = TypeVar("ResponseT", bound=Message)
_UNIQUE_VIOLATION = "23505"
# Built once: constructing a statement per call costs more Python than executing it (on every mutation).
_CLAIM_KEY = insert(IdempotencyRecord).on_conflict_do_nothing().returning(IdempotencyRecord.id)  # values: bound
_STORE_RESPONSE = (
    update(IdempotencyRecord)
    .where(IdempotencyRecord.id == bindparam("record_id"))
    .values(response_sealed=bindparam("sealed"))
)


@dataclass(frozen=True)
class Key:
    """What makes a request the same request: the caller's method, its request_id, and its bytes' hash."""

    method: str
    request_id: uuid.UUID
    request_hash: bytes


def key_of(request: Message) -> Key | None:
    """The request's key; None without a request_id (the call is then simply not idempotent)."""
    if not getattr(request, "request_id"):  # noqa: B009 - Message does not type the field
        return None
    return Key(
        request.DESCRIPTOR.name.removesuffix("Request"),  # ApproveSignalRequest -> ApproveSignal
        parse_id(getattr(request, "request_id"), "request_id"),  # noqa: B009 - Message does not type the field
        hashlib.sha256(request.SerializeToString(deterministic=True)).digest(),
    )


def seal_response(vault: Vault, record_id: uuid.UUID, response: Message) -> str:
    """A response as its idempotency record keeps it (sealed: some responses carry a secret shown once)."""
    return vault.seal(response.SerializeToString(), _binding(record_id))


async def run_once(
    session: AsyncSession,
    vault: Vault,
    caller_id: uuid.UUID,
    request: Message,
    response_type: type[ResponseT],
    action: Callable[[], Awaitable[ResponseT]],
) -> ResponseT:
    """Run ``action`` once per (caller, method, request.request_id) inside ``session``'s transaction and
    return its response; a repeat gets the first response back. The method is named by the request type
    (``ApproveSignalRequest`` -> ``ApproveSignal``). Without a request_id the call is simply not
    idempotent (AIP-155): ``action`` runs and nothing is recorded."""
    found = key_of(request)
    if found is None:
        return await action()
    method, key, request_hash = found.method, found.request_id, found.request_hash
    record_id = uuid.uuid4()
    inserted = await session.scalar(
        _CLAIM_KEY,
        {"id": record_id, "caller_id": caller_id, "method": method, "request_id": key, "request_hash": request_hash},
    )
    if inserted is None:
        record = (
            await session.execute(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.caller_id == caller_id,
                    IdempotencyRecord.method == method,
                    IdempotencyRecord.request_id == key,
                )
            )
        ).scalar_one()
        return answer(vault, found, record.id, record.request_hash, record.response_sealed, response_type)
    response = await action()
    sealed = seal_response(vault, record_id, response)
    await session.execute(_STORE_RESPONSE, {"record_id": record_id, "sealed": sealed})
    return response


def answer(
    vault: Vault,
    key: Key,
    record_id: uuid.UUID,
    request_hash: bytes,
    response_sealed: str | None,
    response_type: type[ResponseT],
) -> ResponseT:
    """The first response a stored record holds, for a repeat of its request; ALREADY_EXISTS when the
    request under this key was a different one."""
    if request_hash != key.request_hash or response_sealed is None:
        raise AlreadyExists("request_id was already used for a different request", reason="REQUEST_ID_REUSED")
    return response_type.FromString(vault.open(response_sealed, _binding(record_id)))


_FIND_RECORD = """
SELECT id, request_hash, response_sealed FROM idempotency_records
WHERE caller_id = $1 AND method = $2 AND request_id = $3
"""


async def replay(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    caller_id: uuid.UUID,
    key: Key,
    response_type: type[ResponseT],
) -> ResponseT | None:
    """The first response to this caller's request under ``key``, or None when none is stored (one
    statement on the driver: for a request that failed validation, which may still be a stored one's retry)."""
    async with db.driver(sessions) as connection:
        found = await connection.fetchrow(_FIND_RECORD, caller_id, key.method, key.request_id)
    if found is None:
        return None
    return answer(vault, key, found["id"], found["request_hash"], found["response_sealed"], response_type)


async def add_once(session: AsyncSession, row: Base) -> None:
    """Insert ``row``, which is unique per caller and request_id. A retry normally meets its idempotency
    record first; once the worker has purged that record, the unique constraint still refuses a second
    object (a producer's late retry must never trade twice), and the client hears ALREADY_EXISTS."""
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != _UNIQUE_VIOLATION:
            raise
        raise request_id_reused() from None


def request_id_reused() -> AlreadyExists:
    """A late retry whose idempotency record the worker purged: the object exists, the answer does not."""
    return AlreadyExists("the request_id was used before and its record has expired", reason="REQUEST_ID_REUSED")


def _binding(record_id: uuid.UUID) -> Binding:
    return Binding("idempotency_records", str(record_id), "response_sealed")
