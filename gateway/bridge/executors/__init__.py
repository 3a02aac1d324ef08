"""What a bridge trades through: one ``Executor`` interface (``base``), a simulated broker (``paper``) and
a MetaTrader 5 terminal (``mt5``, Windows only; its package is imported when one is made).

The package re-exports ``base.__all__`` (the interface's vocabulary) and the two implementations."""

from gateway.bridge.executors import base
from gateway.bridge.executors.base import *  # noqa: F403  (the names of base.__all__)
from gateway.bridge.executors.mt5 import MT5_UNAVAILABLE, Mt5Config, Mt5Executor
from gateway.bridge.executors.paper import DEFAULT_SYMBOLS, REFERENCE_PRICES, PaperConfig, PaperExecutor

__all__ = [
    "DEFAULT_SYMBOLS",
    "MT5_UNAVAILABLE",
    "REFERENCE_PRICES",
    "Mt5Config",
    "Mt5Executor",
    "PaperConfig",
    "PaperExecutor",
]
__all__ += base.__all__
