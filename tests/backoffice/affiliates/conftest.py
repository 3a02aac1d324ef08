"""Every affiliate test that touches the database ends with the ledger check, for each affiliate whose
money it moved: every balance recomputed from the ledger agrees with what is stored and with the
commissions and payouts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, union

from backoffice.affiliates import ledger
from backoffice.models import AffiliateLedgerEntry, Commission, Payout


@pytest.fixture(autouse=True)
async def ledger_checked(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    started = datetime.now(UTC)
    yield
    if "res" not in request.fixturenames:
        return
    res = request.getfixturevalue("res")
    async with res.sessions() as session:
        touched = union(
            *(
                select(model.affiliate_id).where(model.created_at >= started)
                for model in (AffiliateLedgerEntry, Commission, Payout)
            )
        )
        affiliates = set((await session.scalars(select(touched.subquery().c.affiliate_id))).all())
        report = await ledger.check(session, affiliates)
    assert report.problems == (), report.problems
