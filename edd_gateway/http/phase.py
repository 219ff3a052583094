"""
Where an HTTP/1.1 client connection is: the phase of its request cycle,
which chooses its deadline, and its link, which says what it does with the
bytes it reads.  Two enums rather than one automaton because they change
apart: the phase with each request, the link once or twice in a life.
"""

from __future__ import annotations

from enum import Enum

#: Seconds a closed connection's client gets to take the bytes still queued
#: for it (the last response) before the connection is cut.
LINGER_TIMEOUT = 30.0


class Phase(Enum):
    """
    Where an open connection's request cycle is: each phase has its own
    deadline (L{HTTPServerProtocol._deadline_passed}).
    """

    #: Between requests: --keepalive-timeout.
    IDLE = "idle"
    #: A request head arriving: --header-timeout.
    HEAD = "head"
    #: The body of the request being answered arriving: --body-timeout
    #: between two bytes.
    BODY = "body"
    #: The request is all at the backend: the route's response timeout.
    WAITING = "waiting"
    #: No deadline of its own: a backend being connected, a local answer.
    BUSY = "busy"
    #: A response under way: --websocket-idle-timeout between two bytes.
    STREAMING = "streaming"


class Link(Enum):
    """
    What the connection does with the bytes it reads, and whether it is
    ending (C{ending}: no response keeps it open; reading stays stopped).
    """

    #: Parsed as requests.
    OPEN = ("open", False)
    #: An upgrade head was read: what follows is the tunnel's, held until the 101.
    UPGRADING = ("upgrading", False)
    #: A fatal error is answered after the requests already read; later bytes are ignored.
    REFUSED = ("refused", False)
    #: Closed by the gateway: the client has LINGER_TIMEOUT to take the last bytes.
    LINGERING = ("lingering", True)
    #: Lost, aborted, or handed over to the byte relay.
    CLOSED = ("closed", True)

    def __init__(self, label: str, ending: bool) -> None:
        self.label = label
        self.ending = ending
