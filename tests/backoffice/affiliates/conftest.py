"""Every affiliate test ends with the ledger check: every balance of every affiliate recomputed from the
ledger agrees with what is stored and with the commissions and payouts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from backoffice.affiliates import ledger
from backoffice.bootstrap import Resources


@pytest.fixture(autouse=True)
async def ledger_checked(res: Resources) -> AsyncIterator[None]:
    yield
    async with res.sessions() as session:
        report = await ledger.check(session)
    assert report.problems == (), report.problems
