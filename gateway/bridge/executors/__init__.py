"""What a bridge trades through: one ``Executor`` interface (``base``), a simulated broker (``paper``) and
a MetaTrader 5 terminal (``mt5``, Windows only; its package is imported when one is made)."""

from gateway.bridge.executors.base import (
    AccountInfo,
    CloseFailed,
    CloseFill,
    CloseRequest,
    Executor,
    ExecutorError,
    HeldPosition,
    OrderFill,
    OrderRejected,
    OrderRequest,
    OrderSide,
    Price,
    SymbolInfo,
    order_comment,
)
from gateway.bridge.executors.mt5 import MT5_UNAVAILABLE, Mt5Config, Mt5Executor
from gateway.bridge.executors.paper import DEFAULT_SYMBOLS, REFERENCE_PRICES, PaperConfig, PaperExecutor

__all__ = [
    "DEFAULT_SYMBOLS",
    "MT5_UNAVAILABLE",
    "REFERENCE_PRICES",
    "AccountInfo",
    "CloseFailed",
    "CloseFill",
    "CloseRequest",
    "Executor",
    "ExecutorError",
    "HeldPosition",
    "Mt5Config",
    "Mt5Executor",
    "OrderFill",
    "OrderRejected",
    "OrderRequest",
    "OrderSide",
    "PaperConfig",
    "PaperExecutor",
    "Price",
    "SymbolInfo",
    "order_comment",
]
