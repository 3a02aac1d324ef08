"""The Affiliate area in a real browser against the real back office: a user becomes an affiliate, shares
its code, and sees the commission a referred user's fill earned once the worker accrued it; a payout is
requested, each refusal shown beside the field it is about and nothing reserved by it."""

from __future__ import annotations

import uuid

import grpc
from playwright.async_api import Browser, expect

from backoffice.bootstrap import Resources
from signalhub.v1 import backoffice_pb2 as bpb
from tests.backoffice.affiliates import support as affiliates
from tests.backoffice.console.conftest import RunningConsole, earning_affiliate, signed_in
from tests.conftest import UserCredentials


async def test_a_user_becomes_an_affiliate_and_sees_a_referred_users_commission(
    browser: Browser,
    console: RunningConsole,
    user: UserCredentials,
    admin: UserCredentials,
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
) -> None:
    async with signed_in(browser, console, user) as (_, page):
        await page.get_by_role("link", name="Overview").click()
        await expect(page.get_by_role("heading", name="Become an affiliate", exact=True)).to_be_visible()
        await page.goto(f"{console.url}/affiliate/commissions")  # every Affiliate page offers to join first
        await page.get_by_role("button", name="Become an affiliate").click()
        await expect(page.locator(".notice")).to_have_text("You are an affiliate: share your referral link.")
        code = await page.locator("#referral-code").inner_text()
        link = page.get_by_label("Share this link", exact=False)
        assert (await link.input_value()).endswith(f"?ref={code}")
        await expect(link).to_have_attribute("readonly", "")
        await expect(page.locator("#referral-count")).to_have_text("0")

        # A trader signs up with the code and fills 0.10 lots; the worker's accrual earns the commission.
        stats = await affiliates.stats(backoffice_channel, user)
        affiliate = affiliates.Affiliate(user, stats.affiliate_id, code)
        trader = await affiliates.make_trader(backoffice_channel, res, admin, affiliate)
        await affiliates.record_fills(res, trader, ["0.10"])
        assert await affiliates.accrue(res) >= 1

        await page.reload()
        await expect(page.locator("#referral-count")).to_have_text("1")
        referral = page.locator(f"#referral-{trader.user.id}")
        await expect(referral).to_contain_text("0.50 USD")
        await expect(page.locator("#commission-pending")).to_have_text("0.50 USD")

        await page.get_by_role("link", name="Commissions").click()
        (commission,) = await affiliates.commissions(backoffice_channel, user)
        row = page.locator(f"#commission-{commission.id}")
        await expect(row.locator(".amount")).to_have_text("0.50 USD")
        await expect(row).to_contain_text("Pending")
        await expect(row).to_contain_text("0.10")  # the lots
        await page.get_by_label("State").select_option("COMMISSION_STATUS_AVAILABLE")
        await page.get_by_role("button", name="Show").click()
        await expect(page.locator(".empty")).to_have_text("No commission in this state.")


async def test_a_payout_is_requested_and_each_refusal_shown_beside_its_field(
    browser: Browser,
    console: RunningConsole,
    admin: UserCredentials,
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
) -> None:
    affiliate = await earning_affiliate(backoffice_channel, res, admin)  # 92.00 USD available
    async with signed_in(browser, console, affiliate.user) as (_, page):
        await page.goto(f"{console.url}/affiliate/payouts")
        await expect(page.locator("#commission-available")).to_have_text("92.00 USD")
        amount = page.get_by_label("Amount (USD)")

        async def request(expected_status: int) -> None:
            async with page.expect_response(lambda r: r.request.method == "POST") as answer:
                await page.get_by_role("button", name="Request payout").click()
            assert (await answer.value).status == expected_status

        # More than is available: the back office's reason has no field of its own; it is the amount's.
        await amount.fill("100.00")
        await page.get_by_label("Method").fill("bank")
        await page.get_by_label("Payment details").fill(f"iban={affiliates.IBAN}\nholder=Jane Doe, Berlin")
        await request(409)
        await expect(page.locator("#amount-error")).to_contain_text("Only 92.00 USD is available")
        await expect(amount).to_have_attribute("aria-invalid", "true")
        await expect(amount).to_have_value("100.00")  # the form comes back as sent
        await expect(page.get_by_label("Payment details")).to_have_value(
            f"iban={affiliates.IBAN}\nholder=Jane Doe, Berlin"
        )

        # Below the programme's minimum: the back office's violation, beside the amount.
        await amount.fill("49.99")
        await request(400)
        await expect(page.locator("#amount-error")).to_be_visible()
        await expect(page.locator("#method_details-error")).to_have_count(0)

        # No way to pay: the back office names method_details; a line that is not NAME=VALUE the console.
        await amount.fill("60.00")
        await page.get_by_label("Method").fill("")
        await page.get_by_label("Payment details").fill("")
        await request(400)
        await expect(page.locator("#method_details-error")).to_be_visible()
        await expect(page.locator("#amount-error")).to_have_count(0)
        await page.get_by_label("Payment details").fill("just my iban")
        await request(400)
        await expect(page.locator("#method_details-error")).to_have_text("'just my iban' is not NAME=VALUE")
        assert await affiliates.money(backoffice_channel, affiliate.user, "available", "reserved") == ("92.00", "0.00")

        await page.get_by_label("Method").fill("bank")
        await page.get_by_label("Payment details").fill(f"iban={affiliates.IBAN}\nholder=Jane Doe, Berlin")
        await page.get_by_role("button", name="Request payout").click()
        await expect(page.locator(".notice")).to_have_text(
            "Payout of 60.00 USD requested: an administrator reviews it."
        )
        (payout,) = (
            await affiliates.stub(backoffice_channel).ListPayouts(
                bpb.ListPayoutsRequest(), metadata=affiliate.user.metadata, timeout=10
            )
        ).payouts
        assert dict(payout.method_details) == {"method": "bank", "iban": affiliates.IBAN, "holder": "Jane Doe, Berlin"}
        row = page.locator(f"#payout-{payout.id}")
        await expect(row).to_contain_text("Requested")
        await expect(row).to_contain_text(affiliates.IBAN)
        await expect(page.locator("#commission-available")).to_have_text("32.00 USD")
        await expect(page.locator("#commission-reserved")).to_have_text("60.00 USD")
    assert uuid.UUID(payout.affiliate_id) == uuid.UUID(affiliate.id)


async def test_an_admin_who_is_an_affiliate_sees_only_its_own_payouts_there(
    browser: Browser,
    console: RunningConsole,
    admin: UserCredentials,
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
) -> None:
    """ListPayouts gives an admin everyone's; the Affiliate pages name the caller's own affiliate."""
    other = await earning_affiliate(backoffice_channel, res, admin)
    await affiliates.stub(backoffice_channel).RequestPayout(
        affiliates.payout_request("50.00"), metadata=other.user.metadata, timeout=10
    )
    async with signed_in(browser, console, admin) as (_, page):
        await page.goto(f"{console.url}/affiliate/payouts")
        await page.get_by_role("button", name="Become an affiliate").click()
        await page.goto(f"{console.url}/affiliate/payouts")
        await expect(page.locator(".empty")).to_have_text("No payout yet.")
        await expect(page.locator("#commission-available")).to_have_text("0.00 USD")
