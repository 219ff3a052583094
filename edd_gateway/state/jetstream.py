"""
The JetStream side of the event feed: the C{COMPUTE} stream, the gateway's
durable consumer on it (found, or created when missing), and acknowledging
its messages.  L{edd_gateway.state.nats} uses the consumer when the server
has the stream, and core subscriptions otherwise.

The consumer is a push consumer (created if missing: deliver all, ack
explicit, no filter), acked by hand.  nats-py's pull C{fetch(n)} keeps a
partly filled batch until its timeout, so a pull loop would either hold a
lone event for seconds or make a round trip per message; a push consumer
hands each message over as soon as it is stored, the server bounds the
unacked ones (C{max_ack_pending}) and redelivers by itself.

Each gateway replica needs its own C{durable} name: a durable consumer is
one cursor over the stream, whose messages it splits between its
subscribers (nats-py even refuses a second subscriber to a push consumer:
"already bound"), so replicas sharing one would not each hear every event.
A second replica finding the consumer bound falls back to core
subscriptions, with a warning, until its next reconnection.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.logger import Logger

__all__ = ["DURABLE", "STREAM", "durable_consumer", "settle"]

STREAM = "COMPUTE"
DURABLE = "gateway-service"
_log = Logger()


async def durable_consumer(client: Any, js: Any, durable: str, *, subscribed: Any, ack_wait: float,
                           max_deliver: int, max_ack_pending: int) -> Any:
    """
    The durable consumer's configuration (created if missing), or None to
    use core subscriptions.  C{subscribed} is this connection's push
    subscription to the consumer, if it has one already.
    """
    from nats.errors import Error as NatsError
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError, ServiceUnavailableError

    try:
        await js.stream_info(STREAM)
    except (NotFoundError, ServiceUnavailableError):
        return None  # no such stream, or a server without JetStream
    except NatsError as error:
        return _not_used(durable, f"cannot read the stream ({type(error).__name__}: {error})")
    try:
        try:
            info = await js.consumer_info(STREAM, durable)
        except NotFoundError:
            # A consumer lost while connected is made again on the
            # subject this connection already listens to.
            deliver = subscribed.subject if subscribed is not None else client.new_inbox()
            info = await js.add_consumer(STREAM, ConsumerConfig(
                name=durable, durable_name=durable, description="edd-gateway: container routes",
                deliver_subject=deliver, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ack_wait, max_deliver=max_deliver, max_ack_pending=max_ack_pending))
            _log.info("nats: created the durable consumer {durable} on {stream}", durable=durable, stream=STREAM)
    except NatsError as error:
        return _not_used(durable, f"cannot read or create it ({type(error).__name__}: {error})")
    if not info.config.deliver_subject:
        return _not_used(durable, "it is a pull consumer; the gateway needs a push one")
    if info.push_bound and subscribed is None:
        return _not_used(durable, "another subscriber is bound to it (each replica needs its own durable name)")
    return info.config


def _not_used(durable: str, why: str) -> None:
    _log.warn("nats: not using the durable consumer {durable} on {stream}: {why}; using core subscriptions",
              durable=durable, stream=STREAM, why=why)
    return None


async def settle(acknowledgement: Coroutine[Any, Any, Any]) -> None:
    """Ack or term, best effort: a message not acked is redelivered, which is the point."""
    try:
        await acknowledgement
    except Exception as error:
        _log.debug("nats: cannot acknowledge a message: {error}", error=error)
