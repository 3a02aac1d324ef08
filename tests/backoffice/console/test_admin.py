"""The Admin area in a real browser against the real back office: a payout approved and marked paid, a
producer created with its secret shown once (a bridge of a producer then signs with the downloaded file),
a user created with a referral code, the audit trail filtered, an alert appearing live, every field error
beside its field; and none of it for anyone but an admin."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
from playwright.async_api import Browser, expect

from backoffice.bootstrap import Resources
from backoffice.producer import ProducerClient
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc
from tests.backoffice.affiliates import support as affiliates
from tests.backoffice.console.conftest import (
    RunningConsole,
    browsing,
    earning_affiliate,
    raise_alert,
    sign_in,
    signed_in,
)
from tests.conftest import KNOWN_SECRETS, KeyCredentials, UserCredentials, make_device

ADMIN_PAGES = ("/admin", "/admin/alerts", "/admin/payouts", "/admin/audit", "/admin/producers", "/admin/users")


async def _producers(channel: grpc.aio.Channel, admin: UserCredentials) -> list[bpb.Producer]:
    found: list[bpb.Producer] = []
    token = ""
    while True:
        listing = await brpc.AccountServiceStub(channel).ListProducers(
            bpb.ListProducersRequest(page_size=500, page_token=token), metadata=admin.metadata, timeout=10
        )
        found.extend(listing.producers)
        token = listing.next_page_token
        if not token:
            return found


async def _users_with_email(channel: grpc.aio.Channel, admin: UserCredentials, email: str) -> list[bpb.User]:
    listing = await brpc.AccountServiceStub(channel).ListUsers(
        bpb.ListUsersRequest(email=email), metadata=admin.metadata, timeout=10
    )
    return list(listing.users)


async def test_a_non_admin_is_refused_the_admin_pages_and_shown_no_admin_link(
    browser: Browser,
    console: RunningConsole,
    user: UserCredentials,
    admin: UserCredentials,
    backoffice_channel: grpc.aio.Channel,
) -> None:
    async with signed_in(browser, console, admin) as (_, page):
        await expect(page.locator(".nav-title", has_text="Admin")).to_be_visible()
    name = f"not-allowed-{uuid.uuid4().hex[:8]}"
    async with signed_in(browser, console, user) as (_, page):
        await expect(page.locator(".nav-title", has_text="Trading")).to_be_visible()
        await expect(page.locator(".nav-title", has_text="Affiliate")).to_be_visible()
        await expect(page.locator(".nav-title", has_text="Admin")).to_have_count(0)
        await expect(page.locator('a[href^="/admin"]')).to_have_count(0)
        for path in ADMIN_PAGES:
            answer = await page.goto(f"{console.url}{path}")
            assert answer is not None and answer.status == 403, path
            await expect(page.locator(".form-error")).to_have_text("Only administrators may open this page.")
        # Nor can a form act: a producer is not created, whatever the form says.
        csrf = await page.locator('input[name="csrf_token"]').first.get_attribute("value")
        answer = await page.request.post(
            f"{console.url}/admin/producers", form={"csrf_token": csrf or "", "name": name}, max_redirects=0
        )
        assert answer.status == 403
    assert name not in {p.name for p in await _producers(backoffice_channel, admin)}


async def test_an_admin_approves_a_payout_then_marks_it_paid(
    browser: Browser,
    console: RunningConsole,
    admin: UserCredentials,
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
) -> None:
    affiliate = await earning_affiliate(backoffice_channel, res, admin)
    api = affiliates.stub(backoffice_channel)
    payout = await api.RequestPayout(affiliates.payout_request("60.00"), metadata=affiliate.user.metadata, timeout=10)

    async def state() -> bpb.Payout:
        listing = await api.ListPayouts(bpb.ListPayoutsRequest(), metadata=affiliate.user.metadata, timeout=10)
        (found,) = listing.payouts
        return found

    async with signed_in(browser, console, admin) as (_, page):
        await page.get_by_role("link", name="Payouts").last.click()
        await page.get_by_label("State").select_option("PAYOUT_STATUS_REQUESTED")
        await page.get_by_role("button", name="Show").click()
        card = page.locator(f"#payout-{payout.id}")
        await expect(card.locator("h2")).to_contain_text("60.00 USD")
        await expect(card).to_contain_text(affiliates.IBAN)  # how to pay, opened for admins

        # Rejecting needs a reason: the back office's violation, beside the reason of this payout.
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await card.get_by_role("button", name="Reject").click()
        assert (await answer.value).status == 400
        reason = card.get_by_label("Reason for rejecting")
        await expect(card.locator(f'[id="{payout.id}-reason-error"]')).to_be_visible()
        await expect(reason).to_have_attribute("aria-invalid", "true")
        assert (await state()).status == bpb.PAYOUT_STATUS_REQUESTED

        await card.get_by_role("button", name="Approve").click()
        await expect(page.locator(".notice")).to_have_text("Payout of 60.00 USD approved: pay it, then mark it paid.")
        assert (await state()).status == bpb.PAYOUT_STATUS_APPROVED
        # Back to the list it was decided on: requested ones only, where it no longer is.
        await expect(page.get_by_label("State")).to_have_value("PAYOUT_STATUS_REQUESTED")
        await expect(card).to_have_count(0)

        await page.get_by_label("State").select_option("PAYOUT_STATUS_APPROVED")
        await page.get_by_role("button", name="Show").click()
        await card.get_by_label("Payment reference").fill("SEPA-2024-0042")
        await card.get_by_role("button", name="Mark paid").click()
        await expect(page.locator(".notice")).to_have_text("Payout of 60.00 USD marked paid.")
    paid = await state()
    assert (paid.status, paid.payment_reference) == (bpb.PAYOUT_STATUS_PAID, "SEPA-2024-0042")
    assert await affiliates.money(backoffice_channel, affiliate.user, "paid", "available") == ("60.00", "32.00")


async def test_a_producer_is_created_with_its_secret_shown_once(
    browser: Browser,
    console: RunningConsole,
    admin: UserCredentials,
    backoffice_channel: grpc.aio.Channel,
    tmp_path: Path,
) -> None:
    name = f"trend engine {uuid.uuid4().hex[:6]}"
    async with signed_in(browser, console, admin) as (_, page):
        await page.goto(f"{console.url}/admin/producers")
        await page.get_by_label("Name").fill(name)
        await page.get_by_role("button", name="Create producer").click()
        secret = await page.locator("#producer-secret").inner_text()
        KNOWN_SECRETS.add(secret)  # the log scan looks for it from here on
        producer_id = await page.locator("#producer-id").inner_text()
        assert secret.startswith("shs_")
        assert page.url == f"{console.url}/admin/producers"  # the address is the list's, not the form's

        link = page.get_by_role("link", name="Download the credentials file")
        download_url = f"{console.url}{await link.get_attribute('href')}"
        async with page.expect_download() as downloading:
            await link.click()
        path = tmp_path / "producer.json"
        await (await downloading.value).save_as(path)
        assert json.loads(path.read_text()) == {
            "producer_id": producer_id,
            "producer_secret": secret,
            "backoffice": console.config.backoffice_target,
        }
        assert (await page.request.get(download_url, max_redirects=0)).status == 404  # once

        await page.reload()  # loads the list: the secret is not shown again
        row = page.locator(f'[id="producer-{producer_id}"]')
        await expect(row).to_contain_text(name)
        await expect(row).to_contain_text("Active")
        await expect(page.locator("#producer-secret")).to_have_count(0)
        assert secret not in await page.content()

        # Rotating shows a new secret the same way, once.
        await row.get_by_role("button", name="Rotate secret").click()
        rotated = await page.locator("#producer-secret").inner_text()
        KNOWN_SECRETS.add(rotated)
        assert rotated.startswith("shs_") and rotated != secret
        await page.reload()
        await expect(page.locator("#producer-secret")).to_have_count(0)

        # The downloaded file signs (the first secret stays valid for the grace period).
        credentials = json.loads(path.read_text())
        async with ProducerClient(
            credentials["backoffice"], uuid.UUID(credentials["producer_id"]), credentials["producer_secret"]
        ) as producer:
            signal = await producer.submit_signal("XAUUSD", "buy", entry_price="2034.15")
        assert signal.producer_id == producer_id

        # Revoking asks to confirm, then refuses its signatures.
        await row.get_by_text("Revoke", exact=True).click()
        await row.get_by_role("button", name="Revoke producer").click()
        await expect(page.locator(f'[id="{producer_id}-confirm-error"]')).to_be_visible()
        await row.get_by_label(f"Revoke {name} for good", exact=False).check()
        await row.get_by_role("button", name="Revoke producer").click()
        await expect(page.locator(".notice")).to_have_text(
            f"Producer {name} revoked: its signatures are refused from now on."
        )
        await expect(row).to_contain_text("Revoked")
    (found,) = [p for p in await _producers(backoffice_channel, admin) if p.id == producer_id]
    assert found.status == bpb.PRODUCER_STATUS_REVOKED


async def test_a_user_is_created_with_a_referral_code(
    browser: Browser,
    console: RunningConsole,
    admin: UserCredentials,
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
) -> None:
    affiliate = await affiliates.make_affiliate(backoffice_channel, res)
    email = f"{uuid.uuid4().hex[:12]}@referred.test"
    async with signed_in(browser, console, admin) as (_, page):
        await page.get_by_role("link", name="Users").click()
        await page.get_by_label("Email", exact=True).fill(email)
        await page.get_by_label("Referral code (optional)").fill("not-a-known-code")
        # An unknown code: the back office's violation beside the field, and no user made.
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Create user").click()
        assert (await answer.value).status == 400
        await expect(page.locator("#referral_code-error")).to_have_text("unknown referral code")
        await expect(page.get_by_label("Referral code (optional)")).to_have_attribute("aria-invalid", "true")
        await expect(page.get_by_label("Email", exact=True)).to_have_value(email)
        assert await _users_with_email(backoffice_channel, admin, email) == []

        await page.get_by_label("Referral code (optional)").fill(affiliate.code)
        await page.get_by_role("button", name="Create user").click()
        token = await page.locator("#api-token").inner_text()
        KNOWN_SECRETS.add(token)
        assert token.startswith("sht_")
        await expect(page.locator("#user-referrer")).to_contain_text(affiliate.id)
        await page.reload()  # the list: the token is not shown again
        await expect(page.locator("#api-token")).to_have_count(0)
        assert token not in await page.content()

        await page.get_by_label("Find by email").fill(email)
        await page.get_by_role("button", name="Find").click()
        (created,) = await _users_with_email(backoffice_channel, admin, email)
        row = page.locator(f"#user-{created.id}")
        await expect(row).to_contain_text(email)
        await expect(row).to_contain_text("User")
        await expect(page.locator("table.list tbody tr")).to_have_count(1)
    assert created.referrer_affiliate_id == affiliate.id
    referrals = await affiliates.stub(backoffice_channel).ListReferrals(
        bpb.ListReferralsRequest(), metadata=affiliate.user.metadata, timeout=10
    )
    assert [r.referred_user_id for r in referrals.referrals] == [created.id]
    async with browsing(browser) as (_, page):  # the token shown is the new user's
        await sign_in(page, console, token)
        await expect(page.locator(".who")).to_contain_text(email)


async def test_the_audit_trail_is_filtered(
    browser: Browser, console: RunningConsole, admin: UserCredentials, user: UserCredentials, res: Resources
) -> None:
    device = await make_device(res, user)
    other = await make_device(res, user)
    async with signed_in(browser, console, admin) as (_, page):
        await page.get_by_role("link", name="Audit").click()
        await page.get_by_label("Actor id").fill(str(user.id))
        await page.get_by_label("Action").fill("RegisterDevice")
        await page.get_by_role("button", name="Filter").click()
        rows = page.locator("table.list tbody tr")
        await expect(rows).to_have_count(2)
        await expect(rows.first.locator(".action")).to_have_text("RegisterDevice")
        assert f"actor_id={user.id}" in page.url and "action=RegisterDevice" in page.url

        await page.get_by_label("Object id").fill(str(device.id))
        await page.get_by_role("button", name="Filter").click()
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text(str(device.id)[:8])
        await expect(page.locator(f'a[title="{other.id}"]')).to_have_count(0)

        # An actor id that is not one: the back office's violation beside the field.
        await page.get_by_label("Actor id").fill("not-an-id")
        async with page.expect_response(lambda r: "/admin/audit" in r.url) as answer:
            await page.get_by_role("button", name="Filter").click()
        assert (await answer.value).status == 400
        await expect(page.locator("#actor_id-error")).to_be_visible()
        await expect(page.get_by_label("Actor id")).to_have_value("not-an-id")
        await expect(page.locator("#object_id-error")).to_have_count(0)


async def test_an_alert_appears_live_without_a_reload(
    browser: Browser, console: RunningConsole, admin: UserCredentials, device: KeyCredentials, res: Resources
) -> None:
    async with signed_in(browser, console, admin) as (_, page):
        await page.goto(f"{console.url}/admin/alerts?device_id={device.id}")
        await expect(page.locator("#alert-list .empty")).to_be_visible()
        await page.evaluate("window.loadedOnce = true")  # gone if the page were loaded again
        async with page.expect_response(lambda r: "/admin/alerts/live" in r.url) as poll:
            pass
        assert (await poll.value).status == 204  # nothing changed: nothing is sent, nothing swapped
        alert_id = await raise_alert(res, device, "disconnected for 10 minutes with 1 open position")
        row = page.locator(f"#alert-{alert_id}")
        await expect(row).to_be_visible()  # by the page's own polling
        assert await page.evaluate("window.loadedOnce") is True
        await expect(row.locator(".message")).to_have_text("disconnected for 10 minutes with 1 open position")
        await expect(row).to_contain_text("Device disconnected")
        await expect(row).to_contain_text("Open")
        await expect(page.locator("#alert-count")).to_have_text("1 alert")
