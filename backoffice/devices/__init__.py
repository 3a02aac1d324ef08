"""Devices: the EA bridges of a user's account. ``registration`` owns a device's credentials and settings
(register, update, rotate, revoke); ``presence`` what the gateway records about a connected one (its
Hello, last seen, reactivation, idling, revocations to enforce); ``hello`` the typed Hello record that
sizing and profit read. The registration API is re-exported here."""

from backoffice.devices.registration import (
    SYMBOL_MAP_MAX,
    UPDATABLE_FIELDS,
    get_device,
    list_devices,
    register_device,
    revoke_device,
    rotate_device_secret,
    update_device,
    validate_mac_address,
    validate_symbol_map,
    visible_to,
)

__all__ = [
    "SYMBOL_MAP_MAX",
    "UPDATABLE_FIELDS",
    "get_device",
    "list_devices",
    "register_device",
    "revoke_device",
    "rotate_device_secret",
    "update_device",
    "validate_mac_address",
    "validate_symbol_map",
    "visible_to",
]
