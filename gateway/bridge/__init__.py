"""The EA bridge SDK: what runs beside a trader's MetaTrader terminal (``pip install signalhub``, no server
dependencies). ``BridgeClient`` holds the signed gateway stream and executes sealed instructions at most
once through an ``Executor`` (``PaperExecutor``, ``Mt5Executor``), with a durable SQLite ledger and outbox.

    client = BridgeClient(BridgeConfig(device_id, ("gw.example:50052",), Path("bridge.db")), secret,
                          PaperExecutor())
    await client.run()  # until client.stop()

Modules: ``client`` (reconnect and failover), ``stream`` (one session), ``orders`` (executing
instructions), ``ledger`` and ``outbox`` (durability), ``frames``, ``config``, ``errors``, ``executors``,
and ``cli`` (`signalhub bridge`). It imports only ``signalhub.protocol``, ``signalhub.v1`` and itself.
"""

from gateway.bridge.client import BridgeClient, RpcErrorInfo
from gateway.bridge.config import BRIDGE_VERSION, BridgeConfig, BridgeStats, channel_options
from gateway.bridge.errors import BridgeError, DeviceRevoked, LedgerError
from gateway.bridge.executors import (
    AccountInfo,
    CloseFailed,
    CloseFill,
    CloseRequest,
    Executor,
    ExecutorError,
    HeldPosition,
    Mt5Config,
    Mt5Executor,
    OrderFill,
    OrderRejected,
    OrderRequest,
    OrderSide,
    PaperConfig,
    PaperExecutor,
    Price,
    SymbolInfo,
)
from gateway.bridge.ledger import Ledger, OutFrame

__all__ = [
    "BRIDGE_VERSION",
    "AccountInfo",
    "BridgeClient",
    "BridgeConfig",
    "BridgeError",
    "BridgeStats",
    "CloseFailed",
    "CloseFill",
    "CloseRequest",
    "DeviceRevoked",
    "Executor",
    "ExecutorError",
    "HeldPosition",
    "Ledger",
    "LedgerError",
    "Mt5Config",
    "Mt5Executor",
    "OrderFill",
    "OrderRejected",
    "OrderRequest",
    "OrderSide",
    "OutFrame",
    "PaperConfig",
    "PaperExecutor",
    "Price",
    "RpcErrorInfo",
    "SymbolInfo",
    "channel_options",
]
