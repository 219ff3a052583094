"""
edd-gateway: the single front door of the edd cloud.

One twistd process listens on many ports, sniffs the first bytes of every
connection and hands it to the TLS, HTTP or SSH side; see docs/architecture.md.
"""

__version__ = "0.1.0"
