"""signalhub gateway: the device edge (stream server, device sessions, hint listener, bridge SDK)."""
