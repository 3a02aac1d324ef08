"""`signalhub approvals pending|approve|reject` as a user runs it: a real process against this run's back
office; the signals come from a producer the user follows with a MANUAL subscription."""

from __future__ import annotations

from decimal import Decimal

import grpc

from backoffice.bootstrap import Resources
from backoffice.models import DeliveryState
from backoffice.platform.serving import Server
from tests.backoffice.api.test_approvals import GOLD_HELLO, deliveries, device_with
from tests.backoffice.api.test_signals import signal_request, submit
from tests.backoffice.cli.support import one_line, signalhub
from tests.conftest import KeyCredentials, UserCredentials, make_user


async def test_pending_approve_and_reject(
    res: Resources,
    backoffice_server: Server,
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    producer: KeyCredentials,
) -> None:
    target, token = backoffice_server.bound_address, user.token
    chosen = await device_with(res, user, symbol_map={"XAUUSD": "GOLD.m"}, hello=GOLD_HELLO)
    other = await device_with(res, user, symbol_map={"XAUUSD": "GOLD.m"}, hello=GOLD_HELLO)
    code, _, err = await signalhub(
        "subscriptions", "add", str(producer.id), "--mode", "manual", token=token, target=target
    )  # no sizing rule: every approval names its volume
    assert code == 0, err
    first = await submit(backoffice_channel, producer, signal_request())
    second = await submit(backoffice_channel, producer, signal_request())

    code, pending, _ = await signalhub("approvals", "pending", token=token, target=target)
    assert code == 0 and [a["signal_id"] for a in pending["approvals"]] == [first.id, second.id]
    assert {a["status"] for a in pending["approvals"]} == {"APPROVAL_STATUS_PENDING"}

    code, _, err = await signalhub("approvals", "approve", first.id, token=token, target=target)
    assert code == 1 and one_line(err, "FAILED_PRECONDITION") and "VOLUME_REQUIRED" in err, err
    code, _, err = await signalhub("approvals", "approve", first.id, "--volume", "lots", token=token, target=target)
    assert code == 1 and one_line(err, "INVALID_ARGUMENT") and "(volume: " in err, err
    assert await deliveries(res, first.id) == {}  # refusals changed nothing

    code, approved, err = await signalhub(
        "approvals", "approve", first.id, "--volume", "0.20", "--device", str(chosen), token=token, target=target
    )
    assert code == 0, err
    assert (approved["status"], approved["device_ids"]) == ("APPROVAL_STATUS_APPROVED", [str(chosen)])
    made = await deliveries(res, first.id)
    assert set(made) == {chosen} and other not in made
    assert (made[chosen].volume, made[chosen].instrument, made[chosen].state) == (
        Decimal("0.20"),
        "GOLD.m",
        DeliveryState.PENDING,
    )

    code, rejected, err = await signalhub(
        "approvals", "reject", second.id, "--reason", "not today", token=token, target=target
    )
    assert code == 0, err
    assert (rejected["status"], rejected["reason"]) == ("APPROVAL_STATUS_REJECTED", "not today")
    assert await deliveries(res, second.id) == {}
    code, pending, _ = await signalhub("approvals", "pending", token=token, target=target)
    assert code == 0 and pending == {"approvals": []}
    code, _, err = await signalhub("approvals", "approve", second.id, "--volume", "0.1", token=token, target=target)
    assert code == 1 and one_line(err, "FAILED_PRECONDITION"), err

    # Someone who does not follow the producer has nothing to decide on these signals.
    stranger = await make_user(res)
    await device_with(res, stranger, hello=GOLD_HELLO)
    code, _, err = await signalhub(
        "approvals", "approve", first.id, "--volume", "0.1", token=stranger.token, target=target
    )
    assert code == 1 and one_line(err, "NOT_FOUND") and stranger.token not in err, err
    code, _, err = await signalhub("approvals", "reject", second.id, token=stranger.token, target=target)
    assert code == 1 and one_line(err, "NOT_FOUND"), err
    assert set(await deliveries(res, first.id)) == {chosen}
