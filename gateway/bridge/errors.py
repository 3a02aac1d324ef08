"""Why a bridge stops for good (anything else it rides out: it reconnects, or reports and carries on)."""

from __future__ import annotations


class BridgeError(Exception):
    """The bridge stopped for good."""


class DeviceRevoked(BridgeError):
    """The gateway said KEY_REVOKED: this device's key was revoked; reconnecting cannot help."""


class LedgerError(BridgeError):
    """The ledger file cannot be used (another device's ledger, or unreadable)."""


class DeviceTakenOver(BridgeError):
    """Another bridge kept taking this device's stream (SESSION_REPLACED) after growing waits: two bridges
    for one device would take turns for ever, so this one steps aside."""


class CredentialsRefused(BridgeError):
    """The gateway refused this device's credentials time after time (wrong secret, rotated key, a clock
    far off): retrying cannot help until someone changes them."""
