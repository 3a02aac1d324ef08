"""Positions: opened by a device's fill with its signal's hidden levels (stop-loss, take-profit, trailing
stop, breakeven), watched by the monitor (``backoffice.monitor``) against quotes, closed by close commands
the device answers with a CloseResult. The levels never reach the broker: the server enforces them.

- ``levels``: the one rule that reads a quote against a position's levels (pure).
- ``opening``: fills open positions, or add to them (partial fills), on the uplink's transaction.
- ``closing``: close commands (one outstanding per position), their results, their bounded re-sends.
- ``user_actions``: what people do to a position: ClosePosition and UpdateProtection.
- ``queries``: what a caller may see.
- ``events``: the record of what happened to each position.

States: OPEN (watched) -> CLOSING (a close command is out) -> CLOSED, or OPEN again after a partial
close, or CLOSED_ERROR (the device could not close it, or never answered: an alert is open).
"""

from backoffice.positions.closing import (
    CloseTarget,
    Closing,
    PositionState,
    Queued,
    accounts_of,
    apply_close,
    close_open,
    close_the_rest,
    expire_closes,
    lock_close_targets,
    queue_closes,
    realised_profit,
    write_closes,
)
from backoffice.positions.opening import Opening, open_positions
from backoffice.positions.queries import (
    PositionView,
    find_position,
    get_position,
    held_symbols,
    list_close_commands,
    list_positions,
)
from backoffice.positions.user_actions import ProtectionChange, close_position, update_protection

__all__ = [
    "CloseTarget",
    "Closing",
    "Opening",
    "PositionState",
    "PositionView",
    "ProtectionChange",
    "Queued",
    "accounts_of",
    "apply_close",
    "close_open",
    "close_position",
    "close_the_rest",
    "expire_closes",
    "find_position",
    "get_position",
    "held_symbols",
    "list_close_commands",
    "list_positions",
    "lock_close_targets",
    "open_positions",
    "queue_closes",
    "realised_profit",
    "update_protection",
    "write_closes",
]
