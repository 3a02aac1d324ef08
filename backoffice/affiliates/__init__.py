"""Affiliates: people who bring traders to signalhub earn a commission on those traders' fills and are
paid on request. One module per part of the lifecycle:

- ``program``: the terms (tiered per-lot rates, hold period, payout minimum, currency) and pricing.
- ``referrals``: becoming an affiliate, referral codes and links, attributing a new user once and for ever.
- ``accrual``: fills queued on the uplink's transaction, accrued by the worker (one commission per fill),
  and released from their hold.
- ``commissions``: reading commissions, and reversing a fill (void in the hold, clawback after).
- ``payouts``: request, approve, reject, mark paid.
- ``ledger``: every money movement as a row, the only source of balances, and the check that replays it.
- ``stats``: what an affiliate has earned, by state and by month.

Modules here are imported as modules (``from backoffice.affiliates import ledger``); this package
imports none of them, so ``accounts`` and the gateway's reports import only what they use.
"""
