"""
The twistd plugin: ``twistd edd-gateway``.

It names the tap module and nothing else, so that ``twistd --help`` stays cheap
and the reactor is chosen only when the gateway itself is run.
"""

from twisted.application.service import ServiceMaker

edd_gateway = ServiceMaker(
    "edd-gateway",
    "edd_gateway.tap",
    "The edd cloud gateway: sniffing listeners, TLS, HTTP reverse proxy, SSH.",
    "edd-gateway",
)
