"""
The transport of terminated TLS: Twisted's C{TLSMemoryBIOProtocol} with the
changes the gateway's HTTP side and its handshake rate need (see
L{TerminatedTLS}).  L{edd_gateway.tls.listener} hands it the connections
whose SNI it terminates.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from edd_gateway.net.transport import write_now
from edd_gateway.front.admission import NO_ADMISSION, NoAdmission
from edd_gateway.tls import openssl as _openssl
from edd_gateway.tls.secret import LoadedCertificate
from edd_gateway.net.addresses import describe_peer

__all__ = ["TerminatedTLS", "TerminatorFactory"]

_handshake_log = Logger()


#: A TLS record's payload at most (RFC 8446 section 5.1): what one encryption takes.
_RECORD = 2**14

_PROVIDED_BY: dict[type, Any] = {}


def _provided_by(kind: type, transport: Any) -> Any:
    """What C{transport} provides, computed once per transport class (TCP's never changes)."""
    provided = _PROVIDED_BY.get(kind)
    if provided is None:
        provided = _PROVIDED_BY[kind] = providedBy(transport)
    return provided


class TerminatedTLS(TLSMemoryBIOProtocol):
    """
    Twisted's TLS transport, with two changes for the HTTP side it carries.

    It is the plain TLSMemoryBIOProtocol, not the BufferingTLSTransport that
    Twisted's factory picks by default: that one holds every write until a
    zero-delay timer fires, to merge small writes into one record, which
    costs a timer per response (a quarter of the CPU of keep-alive HTTPS,
    measured with py-spy) and gains nothing here, where a response's head
    and first body bytes already go out in one write.

    It tells, like TCP, which producer is registered with it (C{producer}).
    The stock wrapper has no attribute of its own and hands the lookup to the
    TCP transport below, which names Twisted's internal membrane instead: code
    that unregisters only the producer it registered would never unregister,
    and the next registration on a keep-alive connection would fail.

    And its records go to the socket at once when nothing is queued.

    And the handshake has a deadline (the factory's C{handshake_timeout}):
    after it nothing bounds a connection but the HTTP keep-alive deadline,
    which starts only once the handshake is done.
    """

    producer: object = None
    _handshake_timer: IDelayedCall | None = None
    factory: TerminatorFactory  # the one that builds it

    def __init__(self, factory: Any, wrappedProtocol: Any, _connectWrapped: bool = True, *,
                 certificate: LoadedCertificate, peer: IAddress | None = None,
                 server_name: str | None = None) -> None:
        """
        @param certificate: what the handshake presents, chosen by the
            listener from the ClientHello (the factory's creator sets the
            connection up with it, L{edd_gateway.tls.context}).
        @param peer: the client's address, when the listener knew it
            already (see getPeer).
        @param server_name: the client's SNI name as the listener parsed it
            from the ClientHello (lower-case, no trailing dot; L{None}
            without SNI), for the 421 check (L{misdirected}).
        """
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self.certificate = certificate
        self.peer = peer
        self.server_name = server_name
        #: (host, misdirected?) for the last host the HTTP side asked about.
        self._last_authority: tuple[str, bool] | None = None

    def misdirected(self, host: str) -> bool:
        """
        Whether this connection's certificate does not cover C{host}
        (L{edd_gateway.tls.authority}): false for its own SNI name.
        """
        if self.server_name == host:
            return False
        # The connection's certificate never changes either: remember the
        # answer for the last host asked (a client sends the same one).
        last = self._last_authority
        if last is not None and last[0] == host:
            return last[1]
        answer = not self.certificate.covers(host)
        self._last_authority = (host, answer)
        return answer

    def getPeer(self) -> IAddress:
        # The TCP transport builds a new address object at every call; the
        # HTTP side asks once per connection and per log line.
        peer = self.peer
        if peer is None:
            peer = self.peer = self.transport.getPeer()  # type: ignore[union-attr]  # set by makeConnection
        return peer

    def makeConnection(self, transport: Any) -> None:
        # TLSMemoryBIOProtocol.makeConnection, with the transport's
        # interfaces declared in one step instead of one directlyProvides
        # per interface and then all of them again (in
        # ProtocolWrapper.makeConnection), which zope.interface recomputes
        # each time: a tenth of a TLS handshake's CPU, measured with py-spy.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        directlyProvides(self, _provided_by(type(transport), transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            self.wrappedProtocol.makeConnection(self)
        self._checkHandshakeStatus()
        timeout = self.factory.handshake_timeout
        if timeout is not None and not self._handshakeDone and not self._aborted:
            self._handshake_timer = self.factory.clock.callLater(timeout, self._handshakeTimedOut)

    def _handshakeTimedOut(self) -> None:
        self._handshake_timer = None
        if self._handshakeDone or self._aborted or self._lostTLSConnection:
            return
        peer = self.getPeer()
        _handshake_log.info("tls: {client} did not finish the TLS handshake within {timeout:g}s; closing",
                            client=describe_peer(peer), timeout=self.factory.handshake_timeout)
        self.factory.admission.hit("tls-handshake-timeout", getattr(peer, "host", ""))
        self.abortConnection()

    def _stopHandshakeTimer(self) -> None:
        timer, self._handshake_timer = self._handshake_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopHandshakeTimer()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        # TLSMemoryBIOProtocol.dataReceived, through edd_gateway.tls.openssl.
        _openssl.feed(self._tlsConnection, data)
        if not self._handshakeDone:
            self._checkHandshakeStatus()
            if not self._handshakeDone:
                return
        if self._appSendBuffer:
            self._unbufferPendingWrites()
        self._flushReceiveBIO()

    def _write(self, data: bytes) -> None:
        # TLSMemoryBIOProtocol._write, through edd_gateway.tls.openssl.
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        sent, size = 0, len(data)
        while sent < size:
            try:
                sent += _openssl.send(connection, data[sent:sent + _RECORD] if sent or size > _RECORD else data)
            except SSL.WantReadError:
                self._bufferedWrite(data[sent:])
                break
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
                break
            self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        # The one place Twisted's TLS hands records to TCP (a private method,
        # stable since TLSMemoryBIOProtocol exists).  Its plain write() queues
        # and sends at the next loop turn, registering and unregistering the
        # socket for writing every time: send at once when nothing is queued,
        # as the plain-HTTP side does (see _transport.write_now).
        connection = self._tlsConnection
        if connection is None:
            # Gone with connectionLost (a transport that reports it within
            # loseConnection, as test transports do).
            return
        records = _openssl.take_records(connection)
        while records is not None:
            write_now(self.transport, records)
            records = _openssl.take_records(connection) if len(records) == _openssl.CHUNK else None

    def _flushReceiveBIO(self) -> None:
        # Twisted's loop, ending when the memory BIO and OpenSSL hold no more
        # bytes instead of when recv raises WantReadError: the exception
        # (and the final flush's, above) cost a few microseconds per
        # request, a twentieth of keep-alive HTTPS.
        connection = self._tlsConnection
        while not self._lostTLSConnection:
            try:
                data = _openssl.recv(connection)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    self.wrappedProtocol.dataReceived(data)
                if not _openssl.pending(connection) and not _openssl.bio_pending(connection, "_into_ssl"):
                    break
        self._flushSendBIO()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        self.producer = producer

    _counted = False

    def _checkHandshakeStatus(self) -> None:
        # Counts handshakes for the metrics: Twisted tells a wrapped protocol
        # of a completed one only, and of a failed one not at all.
        super()._checkHandshakeStatus()
        if self._counted:
            return
        if self._handshake_timer is not None and (self._handshakeDone or self._aborted):
            self._stopHandshakeTimer()
        stats = self.factory.stats
        if self._handshakeDone:
            self._counted = True
            stats.handshakes += 1
        elif self._lostTLSConnection or self._aborted:
            self._counted = True
            stats.handshake_failures += 1

    def unregisterProducer(self) -> None:
        self.producer = None
        super().unregisterProducer()


class TerminatorFactory(TLSMemoryBIOFactory):
    """
    The factory of L{TerminatedTLS}: Twisted's, with what the transport reads
    of it besides.

    @param stats: counts handshakes and handshake failures
        (L{edd_gateway.tls.listener.TLSStats}).
    @param handshake_timeout: seconds from the ClientHello to the end of the
        handshake; L{None} for no bound.
    @ivar admission: hears of handshake timeouts
        (L{edd_gateway.front.admission.Admission}; L{NoAdmission} by default).
    """

    protocol = TerminatedTLS

    def __init__(self, creator: IOpenSSLServerConnectionCreator, wrapped: IProtocolFactory, clock: IReactorTime,
                 stats: Any, handshake_timeout: float | None, *, admission: Any = NO_ADMISSION) -> None:
        super().__init__(creator, False, wrapped, clock=clock)
        self.clock = clock
        self.stats = stats
        self.handshake_timeout = handshake_timeout
        self.admission = admission

    def terminate(self, peer: IAddress, server_name: str | None, certificate: LoadedCertificate) -> TerminatedTLS:
        """
        The transport for a connection whose ClientHello the listener read:
        its address and SNI known, its certificate chosen.
        """
        return TerminatedTLS(self, self.wrappedFactory.buildProtocol(peer), certificate=certificate, peer=peer,
                             server_name=server_name)
