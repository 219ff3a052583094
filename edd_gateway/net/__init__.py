"""
Bytes between two connections, whatever the protocol: handing a transport to
another protocol and writing straight to its socket, the endpoint for a
backend, the two-way relay with backpressure, the PROXY protocol header, and
how a peer's address is described in log lines.
"""
