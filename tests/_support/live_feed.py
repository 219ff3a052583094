"""
The PostgreSQL change feed, end to end and timed: a throwaway PostgreSQL
holding the compute service's schema, the feed installed by the operator
command (C{python -m edd_gateway install-change-feed DSN}, run as a
subprocess), an echo backend standing in for the containers, and the real
``twistd -n edd-gateway --database ...`` with no NATS and a poll and resync
interval of an hour, so that nothing but the feed can explain a change being
served.  Rows are written as the compute service writes them
(L{ComputeService}), one transaction per action.

Each kind of change is made 100 times and timed from the moment its COMMIT
returned to the first answer that shows it: HTTP asked in a tight loop over
one keep-alive connection per listener (L{KeepAliveProbe}); SSH through an
in-process Conch client that logs in as the container's owner and reads the
gateway's refusal, since the gateway shows C{ssh_enabled} and the owners' keys
only to an SSH login:

 - C{ssh_enabled} off: C{SSH access is disabled for container <id>};
 - on, and the key one of the owner's: the gateway goes on to the container
   (whose sshd port is closed here), C{container <id> is not accepting SSH
   connections (connection refused)};
 - a key that is not the owner's: C{Permission denied}.

The SSH logins are prepared before each change (keys exchanged, the C{none}
request answered), so that an answer costs one signed request, and spaced by
L{SSH_PAUSE}.  Real OpenSSH logins against the same feed are
C{tests/integration/test_ssh_live.py}'s.

The target is issue 4's, p99 under 50 ms, over 100 changes of each kind: the
nearest-rank p99 of 100 is the second slowest, so one scheduling hiccup of
the machine (a change at 60-100 ms while the gateway's own histogram had it
within 5 ms, seen on a quiet 2-core machine too) does not decide it, as it
did when 50 changes made the p99 the slowest of them.  The figures (p50, p99, max, the three slowest, how long one answer
takes, which bounds their resolution, and the gateway's own
C{edd_gateway_event_propagation_seconds} over the same changes, which tells
the gateway's share from the client's) go to the test log
(C{_trial_temp/test.log}), on lines starting C{change feed:}.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys as ssh_keys
from twisted.conch.ssh import service, userauth
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh.common import NS
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.python import log

from edd_gateway.testing import (
    BackendServer,
    ComputeService,
    EchoResource,
    free_port,
    poll_until,
    run_process,
    start_compute,
    web_factory,
)
from edd_gateway.testing.backends import _TrackingFactory
from edd_gateway.testing.postgres import ThrowawayPostgres, start_postgres
from edd_gateway.testing.replicas import KeepAliveProbe, ProbeAnswer, ReplicaGateway, connect_probe

DOMAIN = "compute.test"
#: Issue 4's propagation target: p99 of commit-to-served under 50 ms.
TARGET = 0.050
#: Changes of each kind.
CHANGES = 100
#: Where the containers' ports are (an echo backend per port): Linux routes 127/8 to lo.
CONTAINER_IP = "127.0.1.61"
#: Long enough that no poll or periodic full read happens during a test.
AN_HOUR = "3600"
#: How long one change may take before the test gives up on it.
GIVE_UP = 10.0
#: Seconds between two SSH answers while waiting for a change.  A login costs
#: the gateway a few milliseconds of its one thread (a signature to check, an
#: upstream connection to try, two log lines); back to back they kept it busy
#: and doubled its own notification-to-served time.  The pause costs the
#: figures that much resolution instead.
SSH_PAUSE = 0.005
#: What the in-process SSH client reports when the gateway turned every key down.
DENIED = "Permission denied (publickey)"

T = TypeVar("T")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank, as bench/propagation.py reports it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


@dataclass
class Timings:
    """Commit-to-served seconds of one kind of change, and how many answers each took to show."""

    kind: str
    seconds: list[float] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    probe_seconds: list[float] = field(default_factory=list)

    #: What the gateway itself measured over the same changes (edd_gateway_event_propagation_seconds:
    #: a notification's arrival to its change being served).
    gateway_side: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        ms = [s * 1000 for s in self.seconds]
        return {"changes": len(ms), "p50_ms": round(percentile(ms, 0.5), 2), "p99_ms": round(percentile(ms, 0.99), 2),
                "max_ms": round(max(ms), 2), "slowest_ms": [round(v, 1) for v in sorted(ms)[-3:]],
                "median_answers": statistics.median(self.answers),
                "probe_ms": round(statistics.median(self.probe_seconds) * 1000, 2), "gateway_side": self.gateway_side}


#: The gateway's propagation histogram, as (count, sum, {bound: cumulative count}).
Lag = tuple[float, float, dict[str, float]]
_LAG = "edd_gateway_event_propagation_seconds"


def lag_between(before: Lag, after: Lag) -> dict[str, Any]:
    """The gateway's own figures for the notifications between two scrapes."""
    count, total = after[0] - before[0], after[1] - before[1]
    within = {f"<={float(bound) * 1000:g}ms": int(after[2][bound] - before[2].get(bound, 0))
              for bound in ("0.005", "0.01", "0.025", "0.05") if bound in after[2]}
    return {"notifications": int(count), "mean_ms": round(total / count * 1000, 2) if count else None, **within}


# An SSH login as a probe

class _Login(service.SSHService):
    """
    ssh-userauth from the client's side, in two halves: on start, the
    C{none} request every client opens with (answered with the methods
    allowed); then, on L{PreparedLogin.ask}, one signed publickey request,
    the one the gateway decides on.
    """

    name = b"ssh-userauth"
    protocolMessages = {userauth.MSG_USERAUTH_FAILURE: "MSG_USERAUTH_FAILURE",
                        userauth.MSG_USERAUTH_SUCCESS: "MSG_USERAUTH_SUCCESS",
                        userauth.MSG_USERAUTH_BANNER: "MSG_USERAUTH_BANNER"}
    transport: PreparedLogin

    def serviceStarted(self) -> None:
        self.transport.sendPacket(userauth.MSG_USERAUTH_REQUEST, self.transport.request_head + NS(b"none"))

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> None:
        self.transport.failed()

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        self.transport.answered("logged in")

    def ssh_USERAUTH_BANNER(self, packet: bytes) -> None:
        pass


class PreparedLogin(ssh_transport.SSHClientTransport):
    """
    A connection to the gateway's SSH listener, keys exchanged and the
    C{none} request answered (L{ready}), so that L{ask} costs one signed
    request: one round trip, the gateway's signature check and its decision.
    A key the gateway does not take leaves the connection open for another
    L{ask}; every other answer (the container's state, a refusal from the
    container) ends it.
    """

    def __init__(self, user: str, key: ssh_keys.Key) -> None:
        self.user, self.key = user.encode(), key
        self.request_head = NS(self.user) + NS(b"ssh-connection")
        self.ready: Deferred[PreparedLogin] = Deferred()
        self.asks = 0
        self.closed = False
        self._answer: Deferred[str] | None = None

    def verifyHostKey(self, hostKey: bytes, fingerprint: str) -> Deferred[bool]:
        # The gateway's own host key is not what is measured here.
        return succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(_Login())

    def ask(self) -> Deferred[str]:
        """The gateway's answer to a login with the key: L{DENIED}, or the reason it ended the connection."""
        self.asks += 1
        answer = self._answer = Deferred()
        key = self.key.public()
        data = self.request_head + NS(b"publickey") + b"\x01" + NS(key.sshType()) + NS(key.blob())
        signature = self.key.sign(NS(self.sessionID) + bytes((userauth.MSG_USERAUTH_REQUEST,)) + data)
        self.sendPacket(userauth.MSG_USERAUTH_REQUEST, data + NS(signature))
        return answer

    def failed(self) -> None:
        if not self.ready.called:
            self.ready.callback(self)
        else:
            self.answered(DENIED)

    def answered(self, text: str) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.callback(text)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.closed = True
        text = description.decode("utf-8", "replace")
        if not self.ready.called:
            # Refused at the first request (an unknown container, say).
            self.ready.errback(ConnectionError(f"the gateway ended the login before the key: {text}"))
        self.answered(text)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        super().connectionLost(reason)
        why = f"the connection was lost before an answer: {reason.getErrorMessage() if reason else '?'}"
        if not self.ready.called:
            self.ready.errback(ConnectionError(why))
        self.answered(why)


class SSHProber:
    """
    Logins as C{user} with C{key}, from a stock of L{PreparedLogin}s made
    before the change (L{stock}), so that the time measured is the gateway's
    answer and not a key exchange; when the stock runs out mid-measure a new
    login is prepared then, and the time it takes counts.
    """

    #: Answers taken on one connection before moving to another: the gateway ends it after ten refused keys.
    ASKS_PER_LOGIN = 8

    def __init__(self, port: int, user: str, key: ssh_keys.Key) -> None:
        self.port, self.user, self.key = port, user, key
        self._stock: list[PreparedLogin] = []
        self.prepared_while_measuring = 0

    async def stock(self, count: int) -> None:
        self._stock = [login for login in self._stock if self._usable(login)]
        made = [ensureDeferred(self._prepare()) for _ in range(count - len(self._stock))]
        self._stock += await gatherResults(made)

    async def ask(self) -> str:
        while self._stock and not self._usable(self._stock[0]):
            self._stock.pop(0).transport.loseConnection()
        if self._stock:
            login = self._stock[0]
        else:
            self.prepared_while_measuring += 1
            login = await self._prepare()
            self._stock.append(login)
        return await login.ask()

    def close(self) -> None:
        for login in self._stock:
            login.transport.loseConnection()
        self._stock = []

    def _usable(self, login: PreparedLogin) -> bool:
        return not login.closed and login.asks < self.ASKS_PER_LOGIN

    async def _prepare(self) -> PreparedLogin:
        factory = protocol.ClientFactory.forProtocol(lambda: PreparedLogin(self.user, self.key))
        login = await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5).connect(factory)
        return await login.ready  # type: ignore[no-any-return]


def new_user_key() -> tuple[ssh_keys.Key, str]:
    """A fresh Ed25519 key and its authorized_keys line (with a comment, as users upload them)."""
    key = ssh_keys.Key(ed25519.Ed25519PrivateKey.generate())
    return key, key.public().toString("openssh").decode() + " someone@laptop"


class LiveFeedMixin:
    """
    The change feed's tests, over an L{EndToEndMixin} test case: run as they are
    by C{test_live_feed.LiveFeedTests}, and with the events announcing the
    changes by C{test_live_events.LiveEventsTests}.
    """

    timeout = 240

    # Pieces

    async def feed_and_gateway(self) -> None:
        """PostgreSQL with the compute schema and the feed installed, the backends, the gateway, the probes."""
        gateway = self.gateway = ReplicaGateway(self.mktemp())
        self.server = await start_postgres(self)
        await self.server.create_compute_tables()
        for _ in range(2):  # idempotent: a second install changes nothing and succeeds
            await self.install_feed(self.server)
        self.compute: ComputeService = await start_compute(self, self.server.dsn())
        self.on_80 = self.serve_container("port-80")
        self.on_8000 = self.serve_container("port-8000")
        self.container_port = free_port()
        self.ssh_port = free_port()
        self._gateways.append(gateway)
        self._stop_at_cleanup(gateway)
        await gateway.start(["--database", self.server.dsn(), "--container-domain", DOMAIN,
                             "--poll-interval", AN_HOUR, "--resync-interval", AN_HOUR,
                             "--container-ports", str(self.container_port),
                             "--port-map", f"{self.container_port}=8000",
                             "--ssh-listen", f"tcp:{self.ssh_port}:interface=127.0.0.1",
                             # Nothing listens there: a login the gateway lets through ends at once.
                             "--ssh-port", str(free_port())], timeout=30)
        # Listening, and its first full read done (a notification before that is left to the read).
        await poll_until(lambda: "state: following PostgreSQL change feed" in gateway.log_text(),
                         "the gateway to follow the change feed", timeout=30)
        self.http = await self.keepalive(gateway.port)
        self.http_8000 = await self.keepalive(self.container_port)

    async def install_feed(self, server: ThrowawayPostgres) -> None:
        # The operator's command, run as the operator would, from this checkout.
        done = await run_process([sys.executable, "-m", "edd_gateway", "install-change-feed", server.dsn()],
                                 env=self.gateway.environment()).result()
        self.assertEqual(done.exit_code, 0, f"install-change-feed: {bytes(done.out + done.err).decode()}")

    def serve_container(self, name: str) -> BackendServer:
        tracker = _TrackingFactory(web_factory(EchoResource(name)))
        backend = BackendServer(reactor.listenTCP(0, tracker, interface=CONTAINER_IP), tracker)
        self._stop_at_cleanup(backend)
        return backend

    async def keepalive(self, port: int) -> KeepAliveProbe:
        probe = await connect_probe(port)
        self.addCleanup(probe.close)
        return probe

    async def lag(self) -> Lag:
        scrape = await self.scrape(self.gateway)
        buckets = {sample.labels["le"]: sample.value for sample in scrape.samples if sample.name == f"{_LAG}_bucket"}
        return scrape.value(f"{_LAG}_count"), scrape.value(f"{_LAG}_sum"), buckets

    async def measured(self, timings: Timings, changes: Callable[[], Awaitable[None]]) -> None:
        """Run C{changes} (which time themselves into C{timings}) and add what the gateway measured meanwhile."""
        before = await self.lag()
        await changes()
        timings.gateway_side = lag_between(before, await self.lag())

    async def timed(self, timings: Timings, committed: Awaitable[float], ask: Callable[[], Awaitable[T]],
                    shows: Callable[[T], bool], what: str, pause: float = 0.0) -> None:
        """
        Make the change (C{committed}: the write, answering its commit time),
        then ask until the answer C{shows} it, C{pause} seconds between
        answers; record the time from commit.
        """
        since = await committed
        answers = 0
        while True:
            asked = time.monotonic()
            answer = await ask()
            answers += 1
            timings.probe_seconds.append(time.monotonic() - asked)
            if shows(answer):
                break
            if time.monotonic() - since > GIVE_UP:
                raise AssertionError(f"{what}: not served {GIVE_UP} s after its commit; the last answer: {answer!r}")
            if pause:
                await deferLater(reactor, pause, lambda: None)
        timings.seconds.append(time.monotonic() - since)
        timings.answers.append(answers)

    def report(self, timings: Sequence[Timings]) -> None:
        figures = {t.kind: t.figures() for t in timings}
        log.msg(f"change feed: commit to the first answer that shows it: {json.dumps(figures)}")
        slow = {kind: f["p99_ms"] for kind, f in figures.items() if f["p99_ms"] > TARGET * 1000}
        self.assertEqual(slow, {}, f"p99 over {TARGET * 1000:g} ms (all figures: {json.dumps(figures)})")

    # HTTP observables

    def http_get(self, cid: str) -> Deferred[ProbeAnswer]:
        return self.http.get(f"{cid}.{DOMAIN}", "/hello")

    def http_8000_get(self, cid: str) -> Deferred[ProbeAnswer]:
        return self.http_8000.get(f"{cid}.{DOMAIN}", "/hello")

    @staticmethod
    def says(status: int, text: str) -> Callable[[ProbeAnswer], bool]:
        return lambda answer: answer.status == status and text in answer.text

    # Tests

    async def test_container_changes_are_served_within_the_target(self) -> None:
        await self.feed_and_gateway()
        ids: list[str] = []
        no_rule = "no ingress rule for this port"

        async def create() -> None:
            for index in range(CHANGES):
                made: list[str] = []

                async def commit(index: int = index) -> float:
                    new = await self.compute.create_container(f"{1000 + index % 7}", f"app-{index}")
                    made.append(new.id)
                    return new.committed

                # The id is known once the row is committed, so the probe asks after it.
                await self.timed(created, commit(), lambda: self.http_get(made[0]),
                                 lambda a: self.says(503, f"container {made[0]} is pending")(a), "a creation")
                ids.append(made[0])

        created = Timings("created")
        await self.measured(created, create)
        # Their port-80 rules, not shown while they are pending (and not timed).
        applied = (await self.lag())[0]
        for cid in ids:
            await self.compute.add_ingress(cid, 80, self.on_80.port)
        await poll_until(lambda: self.applied_since(applied, CHANGES), "the gateway to read the port-80 rules")

        timings = [created]
        phases: list[tuple[str, Callable[[str], Awaitable[float]], Callable[[str], Deferred[ProbeAnswer]],
                           Callable[[str], Callable[[ProbeAnswer], bool]]]] = [
            ("initializing", lambda cid: self.compute.set_status(cid, "initializing"), self.http_get,
             lambda cid: self.says(503, f"container {cid} is initializing")),
            ("started", lambda cid: self.compute.start(cid, CONTAINER_IP), self.http_get,
             lambda cid: self.says(200, "port-80")),
            ("ingress rule added", lambda cid: self.compute.add_ingress(cid, 8000, self.on_8000.port),
             self.http_8000_get, lambda cid: self.says(200, "port-8000")),
            ("ingress rule removed", lambda cid: self.compute.remove_ingress(cid, 8000), self.http_8000_get,
             lambda cid: self.says(502, no_rule)),
            ("stopped", self.compute.stop, self.http_get, lambda cid: self.says(503, f"container {cid} is stopped")),
            ("deleted", self.compute.delete, self.http_get, lambda cid: self.says(503, f"no container {cid}")),
        ]
        for kind, change, ask, shows in phases:
            timing = Timings(kind)
            timings.append(timing)

            async def each(change: Any = change, ask: Any = ask, shows: Any = shows, timing: Timings = timing) -> None:
                for cid in ids:
                    await self.timed(timing, change(cid), lambda: ask(cid), shows(cid), f"{cid} {timing.kind}")

            await self.measured(timing, each)
        self.report(timings)

    async def applied_since(self, count: float, more: int) -> bool:
        return (await self.lag())[0] >= count + more

    async def test_ssh_changes_are_served_within_the_target(self) -> None:
        await self.feed_and_gateway()
        owner = "2001"
        key, line = new_user_key()
        await self.compute.add_ssh_key(owner, "laptop", line)
        new = await self.compute.create_container(owner, "box")
        cid = new.id
        await self.compute.set_status(cid, "initializing")
        await self.compute.start(cid, "127.0.0.1")
        # Known and running (it has no port-80 rule) before any login is prepared for it.
        await poll_until(lambda: self.http_get(cid).addCallback(self.says(502, "no ingress rule")),
                         f"{cid} to run", timeout=10)
        disabled = f"SSH access is disabled for container {cid}"
        let_through = f"container {cid} is not accepting SSH connections"
        owners = self.prober(cid, key)
        await poll_until(lambda: self.answer_starts(owners, disabled), f"{cid} to refuse SSH as disabled", timeout=10)

        # Each answer ends the connection here: a stock for the worst case.
        toggled = Timings("ssh_enabled toggled")

        async def toggle() -> None:
            for index in range(CHANGES):
                enable = index % 2 == 0
                await owners.stock(12)
                await self.timed(toggled, self.compute.set_ssh_enabled(cid, enable), owners.ask,
                                 lambda answer, enable=enable: answer.startswith(let_through if enable else disabled),
                                 f"ssh_enabled {enable}", pause=SSH_PAUSE)

        await self.measured(toggled, toggle)
        await self.compute.set_ssh_enabled(cid, True)
        await poll_until(lambda: self.answer_starts(owners, let_through), "SSH to be enabled", timeout=10)

        # Keys added and deleted in turn: the gateway's own figures cover both.
        added, deleted = Timings("ssh key added"), Timings("ssh key deleted")

        async def keys() -> None:
            for index in range(CHANGES):
                other, other_line = new_user_key()
                newcomer = self.prober(cid, other)
                await newcomer.stock(3)
                self.assertEqual(await newcomer.ask(), DENIED, "a key the owner has not uploaded yet")
                uploaded: list[int] = []

                async def upload(index: int = index, other_line: str = other_line) -> float:
                    row = await self.compute.add_ssh_key(owner, f"key-{index}", other_line)
                    uploaded.append(row.id)
                    return row.committed

                await self.timed(added, upload(), newcomer.ask, lambda answer: answer.startswith(let_through),
                                 "a key added", pause=SSH_PAUSE)
                await newcomer.stock(3)
                await self.timed(deleted, self.compute.delete_ssh_key(uploaded[0]), newcomer.ask,
                                 lambda answer: answer == DENIED, "a key deleted", pause=SSH_PAUSE)

        await self.measured(added, keys)
        deleted.gateway_side = added.gateway_side
        self.assertTrue(await self.answer_starts(owners, let_through), "the owner's first key still works")
        log.msg(f"change feed: SSH logins prepared while measuring (the stock ran out): "
                f"{owners.prepared_while_measuring} for ssh_enabled")
        self.report([toggled, added, deleted])

    def prober(self, cid: str, key: ssh_keys.Key) -> SSHProber:
        prober = SSHProber(self.ssh_port, cid, key)
        self.addCleanup(prober.close)
        return prober

    async def answer_starts(self, prober: SSHProber, start: str) -> bool:
        return (await prober.ask()).startswith(start)
