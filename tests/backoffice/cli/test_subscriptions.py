"""`signalhub subscriptions list|add|remove` as a user runs it: a real process against this run's back office."""

from __future__ import annotations

from sqlalchemy import select

from backoffice.bootstrap import Resources
from backoffice.models import SizingMode, Subscription, SubscriptionMode, SubscriptionStatus
from backoffice.platform.serving import Server
from tests.backoffice.cli.support import one_line, signalhub
from tests.conftest import KeyCredentials, UserCredentials, make_user


async def test_add_list_and_remove(
    res: Resources, backoffice_server: Server, user: UserCredentials, producer: KeyCredentials
) -> None:
    target, token = backoffice_server.bound_address, user.token
    code, added, err = await signalhub(
        "subscriptions", "add", str(producer.id), "--mode", "manual", "--sizing", "risk-percent",
        "--sizing-value", "1.5", "--max-volume", "2", "--instrument", "XAUUSD", "--instrument", "EURUSD",
        token=token, target=target,
    )  # fmt: skip
    assert code == 0, err
    assert (added["producer_id"], added["mode"], added["sizing"]) == (
        str(producer.id),
        "SUBSCRIPTION_MODE_MANUAL",
        "SIZING_MODE_RISK_PERCENT",
    )
    async with res.sessions() as session:
        stored = await session.get(Subscription, added["id"])
    assert stored is not None and stored.user_id == user.id
    assert (stored.mode, stored.sizing_mode, str(stored.sizing_value)) == (
        SubscriptionMode.MANUAL,
        SizingMode.RISK_PERCENT,
        "1.5",
    )
    assert sorted(stored.instruments) == ["EURUSD", "XAUUSD"] and str(stored.max_volume) == "2"

    code, listed, _ = await signalhub("subscriptions", "list", "--status", "active", token=token, target=target)
    assert code == 0 and [s["id"] for s in listed["subscriptions"]] == [added["id"]]
    assert "next_page_token" not in listed  # every page, one list

    code, removed, _ = await signalhub("subscriptions", "remove", added["id"], token=token, target=target)
    assert code == 0 and removed["status"] == "SUBSCRIPTION_STATUS_UNSUBSCRIBED"
    code, listed, _ = await signalhub("subscriptions", "list", "--status", "active", token=token, target=target)
    assert code == 0 and listed == {"subscriptions": []}
    code, listed, _ = await signalhub(
        "subscriptions", "list", "--producer-id", str(producer.id), token=token, target=target
    )
    assert [s["status"] for s in listed["subscriptions"]] == ["SUBSCRIPTION_STATUS_UNSUBSCRIBED"]


async def test_refusals_name_the_field_and_the_code_once(
    res: Resources, backoffice_server: Server, user: UserCredentials, producer: KeyCredentials
) -> None:
    target = backoffice_server.bound_address
    code, out, err = await signalhub(
        "subscriptions", "add", str(producer.id), "--mode", "auto", "--sizing", "fixed-volume",
        "--sizing-value", "0", "--instrument", "bad one", token=user.token, target=target,
    )  # fmt: skip
    assert (code, out) == (1, None) and one_line(err, "INVALID_ARGUMENT"), err
    assert "sizing_value: " in err and "instruments[0]: " in err and user.token not in err
    async with res.sessions() as session:
        assert (await session.scalars(select(Subscription).where(Subscription.user_id == user.id))).all() == []

    code, added, _ = await signalhub(
        "subscriptions", "add", str(producer.id), "--mode", "auto", token=user.token, target=target
    )
    assert code == 0 and added["status"] == "SUBSCRIPTION_STATUS_ACTIVE"
    code, _, err = await signalhub(
        "subscriptions", "add", str(producer.id), "--mode", "auto", token=user.token, target=target
    )
    assert code == 1 and one_line(err, "ALREADY_EXISTS"), err

    stranger = await make_user(res)
    code, _, err = await signalhub("subscriptions", "remove", added["id"], token=stranger.token, target=target)
    assert code == 1 and one_line(err, "NOT_FOUND") and stranger.token not in err, err
    code, listed, _ = await signalhub("subscriptions", "list", token=stranger.token, target=target)
    assert code == 0 and listed == {"subscriptions": []}
    async with res.sessions() as session:
        stored = await session.get(Subscription, added["id"])
    assert stored is not None and stored.status is SubscriptionStatus.ACTIVE
