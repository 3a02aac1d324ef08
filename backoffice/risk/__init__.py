"""Risk protection per trading account (one device is one broker account).

- ``policy``: a device's policy (limits, position caps, volume and deviation caps, delay, sides): the
  draft a request states, its validation, the typed record (``Policy``, ``Limit``) and its load.
- ``stopouts``: limits reached: listed, reset, and which devices are stopped out now.
- ``limits``: each limit measured on the account states a batch stores, and the stopouts (with their
  alerts and CLOSE_ALL close commands) recorded when one is reached.
"""

from backoffice.risk.limits import State, Stopped, evaluate, period_bounds
from backoffice.risk.policy import (
    MAX_LIMITS,
    Limit,
    LimitDraft,
    Policy,
    PolicyDraft,
    get_policy,
    limit_key,
    load_policies,
    load_policy,
    require_device,
    stored_policies,
    update_policy,
    validate_policy,
)
from backoffice.risk.stopouts import (
    active_at,
    active_stopouts,
    is_active,
    limit_of,
    list_stopouts,
    reset_stopout,
)

__all__ = [
    "MAX_LIMITS",
    "Limit",
    "LimitDraft",
    "Policy",
    "PolicyDraft",
    "State",
    "Stopped",
    "active_at",
    "active_stopouts",
    "evaluate",
    "get_policy",
    "is_active",
    "limit_key",
    "limit_of",
    "list_stopouts",
    "load_policies",
    "load_policy",
    "period_bounds",
    "require_device",
    "reset_stopout",
    "stored_policies",
    "update_policy",
    "validate_policy",
]
