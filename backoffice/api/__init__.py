"""Back-office gRPC servicers: each method decodes, calls one domain function, encodes."""
