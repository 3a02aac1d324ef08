"""`signalhub signals list|show` as a user runs it: a real process against this run's back office; the user
follows the producer with an AUTO subscription, so each signal is delivered to the user's devices at once."""

from __future__ import annotations

import grpc

from backoffice.bootstrap import Resources
from backoffice.platform.serving import Server
from signalhub.v1 import backoffice_pb2 as pb
from tests.backoffice.api.test_approvals import GOLD_HELLO, device_with
from tests.backoffice.api.test_signals import signal_request, submit
from tests.backoffice.cli.support import one_line, signalhub
from tests.conftest import KeyCredentials, UserCredentials, make_user, subscribe


async def test_list_and_show_with_the_execution_per_device(
    res: Resources,
    backoffice_server: Server,
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    producer: KeyCredentials,
) -> None:
    target, token = backoffice_server.bound_address, user.token
    mapped = await device_with(res, user, symbol_map={"XAUUSD": "GOLD.m"}, hello=GOLD_HELLO)
    plain = await device_with(res, user, hello=GOLD_HELLO)
    await subscribe(backoffice_channel, user, producer, pb.SUBSCRIPTION_MODE_AUTO)
    older = await submit(backoffice_channel, producer, signal_request())
    newer = await submit(backoffice_channel, producer, signal_request(entry_price="2035.5"))

    code, listed, err = await signalhub(
        "signals", "list", "--producer-id", str(producer.id), "--status", "open", token=token, target=target
    )
    assert code == 0, err
    assert [s["id"] for s in listed["signals"]] == [newer.id, older.id]

    code, shown, err = await signalhub("signals", "show", newer.id, token=token, target=target)
    assert code == 0, err
    assert (shown["signal"]["id"], shown["signal"]["entry_price"]) == (newer.id, "2035.5")
    per_device = {d["device_id"]: d for d in shown["devices"]}
    assert set(per_device) == {str(mapped), str(plain)}
    assert (per_device[str(mapped)]["instrument"], per_device[str(plain)]["instrument"]) == ("GOLD.m", "XAUUSD")
    for execution in per_device.values():
        assert (execution["signal_id"], execution["state"], execution["volume"]) == (
            newer.id,
            "DELIVERY_STATE_PENDING",
            "0.10",
        )

    # A user who does not follow the producer sees neither signal.
    stranger = await make_user(res)
    code, _, err = await signalhub("signals", "show", newer.id, token=stranger.token, target=target)
    assert code == 1 and one_line(err, "NOT_FOUND") and stranger.token not in err, err
    code, listed, _ = await signalhub("signals", "list", token=stranger.token, target=target)
    assert code == 0 and listed == {"signals": []}
    code, _, err = await signalhub("signals", "list", "--status", "opened", token=token, target=target)
    assert code == 2 and "invalid choice" in err  # refused before anything is sent
