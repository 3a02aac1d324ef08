"""Every affiliate test that touches the database ends with the ledger check: every balance of every
affiliate recomputed from the ledger agrees with what is stored and with the commissions and payouts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from backoffice.affiliates import ledger


@pytest.fixture(autouse=True)
async def ledger_checked(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    if "res" not in request.fixturenames:
        return
    res = request.getfixturevalue("res")
    async with res.sessions() as session:
        report = await ledger.check(session)
    assert report.problems == (), report.problems
