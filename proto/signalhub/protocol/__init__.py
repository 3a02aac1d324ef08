"""signalhub's protocol layer: what servers and client SDKs both need to speak the contract (the SH1
signature, sealed instructions, secrets, wire codecs, error vocabulary, JSON logs, local state files).

It depends only on the standard library, cryptography, grpcio and protobuf (googleapis-common-protos for
status details), so a trader's bridge and a producer's strategy engine install without the servers'
dependencies. Nothing here may import ``backoffice`` or ``gateway``.
"""
