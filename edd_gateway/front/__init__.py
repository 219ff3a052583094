"""
The front door: what happens to a client connection before a protocol owns
it.  The listeners, admission (allow-list, caps, rates) and bans, the sniffer
that reads the first bytes and hands the connection to TLS, HTTP or SSH, raw
TCP on container ports, and the drain that stops listeners first on SIGTERM.
"""
