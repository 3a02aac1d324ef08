"""Risk protection per trading account (one device is one broker account).

- ``policy``: a device's policy (limits, position caps, volume and deviation caps, delay, sides): the
  draft a request states, its validation, the typed record (``Policy``, ``Limit``) and its load.
- ``stopouts``: limits reached: listed, reset, and which devices are stopped out now.
- ``limits``: each limit measured on the account states a batch stores (by functions in Postgres, in the
  statement that stores them), and what a stopout recorded sets off (its alert, audit event and CLOSE_ALL
  close commands).
"""

from backoffice.risk.limits import (
    Reached,
    StatesRecorded,
    Stopped,
    act_on,
    record_states,
    record_states_alone,
)
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
    "Reached",
    "StatesRecorded",
    "Stopped",
    "act_on",
    "active_at",
    "get_policy",
    "is_active",
    "limit_key",
    "limit_of",
    "list_stopouts",
    "load_policies",
    "load_policy",
    "record_states",
    "record_states_alone",
    "require_device",
    "reset_stopout",
    "stored_policies",
    "update_policy",
    "validate_policy",
]
