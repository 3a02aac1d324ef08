"""The EA bridge SDK: what runs beside a trader's MetaTrader terminal (``pip install signalhub``, no server
dependencies). ``BridgeClient`` holds the signed gateway stream and executes sealed instructions at most
once through an ``Executor`` (``PaperExecutor``, ``Mt5Executor``), with a durable SQLite ledger and outbox.

    client = BridgeClient(BridgeConfig(device_id, ("gw.example:50052",), Path("bridge.db"), tls=True), secret,
                          PaperExecutor())
    await client.run()  # until client.stop()

Modules: ``client`` (reconnect and failover), ``stream`` (one session), ``orders`` (executing
instructions), ``account`` (the account's state for the gateway's risk limits), ``ledger`` and ``outbox``
(durability), ``frames``, ``config``, ``errors``, ``executors``, and ``cli`` (`signalhub bridge`). It
imports only ``signalhub.protocol``, ``signalhub.v1`` and itself.
"""

from gateway.bridge import executors
from gateway.bridge.client import BridgeClient, RpcErrorInfo
from gateway.bridge.config import BRIDGE_VERSION, BridgeConfig, BridgeStats, channel_options
from gateway.bridge.errors import BridgeError, CredentialsRefused, DeviceRevoked, DeviceTakenOver, LedgerError
from gateway.bridge.executors import *  # noqa: F403  (the names of executors.__all__)
from gateway.bridge.ledger import Ledger, OutFrame

__all__ = [
    "BRIDGE_VERSION",
    "BridgeClient",
    "BridgeConfig",
    "BridgeError",
    "BridgeStats",
    "CredentialsRefused",
    "DeviceRevoked",
    "DeviceTakenOver",
    "Ledger",
    "LedgerError",
    "OutFrame",
    "RpcErrorInfo",
    "channel_options",
]
# Every executor name too (the interface, PaperExecutor, Mt5Executor), listed once in gateway.bridge.executors.
__all__ += executors.__all__
