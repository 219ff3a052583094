"""
The compute service's events, end to end and timed: the same as
C{test_live_feed.py} (whose probes, timing and SSH tests this module
reuses through their mixin, L{tests._support.live_feed.LiveFeedMixin}), with the change feed I{not} installed
and the changes announced instead by the protobuf events the compute service
publishes after each commit, through JetStream on a throwaway ``nats-server
-js`` holding the C{COMPUTE} stream (subjects C{compute.>}).  The real
``twistd -n edd-gateway --database ... --nats ...`` runs with a poll and
resync interval of an hour and must say C{state: following NATS events
(jetstream)}, so that nothing but the events can explain a change being
served.

Each write is L{ComputeService}'s, as compute writes its rows; once its
COMMIT returned, L{AnnouncingCompute} publishes the event compute publishes
for it (C{compute.container.<id>.created/started/stopped/deleted/ssh_toggled},
C{compute.ingress.<id>.requested/delete_requested},
C{compute.sshkey.<key_id>.created/deleted} with the user's id as the integer
it is in compute's messages) with C{js.publish}, which returns once the
stream stored it.  Times run from the commit, so they include the publish.
A status compute announces with no event of its own (C{initializing}) is
written and announced by nothing: the C{started} event that follows covers
it.

The target is issue 12's: p99 of commit to the first answer that shows it
under 50 ms over 100 changes of each kind.  The figures go to the test log
(C{_trial_temp/test.log}) on lines starting C{events:} (the inherited SSH
test also writes its own C{change feed:} line on the logins it prepared),
with where the three slowest changes fell and, under C{gateway_side}, the
gateway's own C{edd_gateway_event_propagation_seconds} (an event's arrival
to its change served).  With 50 changes the nearest-rank p99 was the
slowest change; over 100 it is the second slowest (see the change feed's
module).  With 50 changes, on a shared 2-core machine with other test runs
beside (load 1.5-3.5) about a third of the runs had a change or two over
50 ms in one kind or more, at any index (no warm-up): for HTTP the gateway's
own histogram mostly had one over 50 ms too, for SSH it had none (the
client's side).  p50 stayed 2-10 ms for HTTP, 11-20 ms for SSH (an answer
there costs 3-5 ms, and L{feed.SSH_PAUSE} between answers).

Then the restart: events published while the gateway is stopped for 5 s are
all delivered to its durable consumer, applied and acknowledged once it is
back.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Sequence

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.python import log
from twisted.trial.unittest import TestCase

from edd_gateway.state.jetstream import DURABLE, STREAM
from edd_gateway.testing import ComputeService, EndToEndMixin, NewContainer, NewSSHKey, as_deferred, free_port, \
    poll_until, require_asyncio_reactor
from edd_gateway.testing.nats import add_compute_stream, compute_message, start_nats
from edd_gateway.testing.postgres import start_postgres
from edd_gateway.testing.replicas import ProbeAnswer, ReplicaGateway

# The module, not its names: the mixin's helpers are read as feed.X, as they were
# when this module imported the change feed's test module itself.
from tests._support import live_feed as feed

#: The start-up line of a gateway following the events alone (with the change feed it would name that first).
FOLLOWING = "state: following NATS events (jetstream)"
#: How long the gateway stays stopped while events are published.
DOWN = 5.0


class AnnouncingCompute(ComputeService):
    """
    The compute service, rows and events: each write is L{ComputeService}'s
    (one transaction, answering when its COMMIT returned), then the event
    compute publishes after that commit goes through JetStream C{js}.  What
    the write answered is answered, so a test times from the commit.

    The events' integer user ids are the table's numeric text ids
    (C{"1001"}); C{ContainerDeleted} and C{SSHKeyDeleted} carry the user id,
    remembered from the creation made here.  L{set_status} (C{initializing})
    publishes nothing: compute has no event for it.
    """

    def __init__(self, dsn: str, js: Any, reactor: Any = None) -> None:
        super().__init__(dsn, reactor)
        self.js = js
        #: Every subject published, in order.
        self.published: list[str] = []
        self._owners: dict[str, int] = {}
        self._key_owners: dict[int, int] = {}

    async def announce(self, kind: str, entity: str | int, action: str, **fields: Any) -> None:
        subject, body = compute_message(kind, entity, action, **fields)
        await as_deferred(self.js.publish(subject, body))
        self.published.append(subject)

    # Containers

    async def create_container(self, user_id: str, name: str, **options: Any) -> NewContainer:
        call = inspect.signature(super().create_container).bind(user_id, name, **options)
        call.apply_defaults()
        given = call.arguments
        new = await super().create_container(user_id, name, **options)
        self._owners[new.id] = int(user_id)
        await self.announce("container", new.id, "created", user_id=int(user_id), name=name,
                            namespace=new.namespace, owner_username=given["owner_username"],
                            memory_mb=given["memory_mb"], storage_gb=given["storage_gb"], image=given["image"] or "")
        return new

    async def start(self, container_id: str, external_ip: str) -> float:
        committed = await super().start(container_id, external_ip)
        await self.announce("container", container_id, "started", external_ip=external_ip)
        return committed

    async def stop(self, container_id: str) -> float:
        committed = await super().stop(container_id)
        await self.announce("container", container_id, "stopped")
        return committed

    async def delete(self, container_id: str) -> float:
        committed = await super().delete(container_id)
        await self.announce("container", container_id, "deleted", user_id=self._owners.pop(container_id))
        return committed

    async def set_ssh_enabled(self, container_id: str, enabled: bool) -> float:
        committed = await super().set_ssh_enabled(container_id, enabled)
        await self.announce("container", container_id, "ssh_toggled", ssh_enabled=enabled)
        return committed

    # Ingress rules

    async def add_ingress(self, container_id: str, port: int, target_port: int = 80) -> float:
        committed = await super().add_ingress(container_id, port, target_port)
        await self.announce("ingress", container_id, "requested", port=port, target_port=target_port)
        return committed

    async def remove_ingress(self, container_id: str, port: int) -> float:
        committed = await super().remove_ingress(container_id, port)
        await self.announce("ingress", container_id, "delete_requested", port=port)
        return committed

    # SSH keys

    async def add_ssh_key(self, user_id: str, name: str, public_key_line: str) -> NewSSHKey:
        row = await super().add_ssh_key(user_id, name, public_key_line)
        self._key_owners[row.id] = int(user_id)
        await self.announce("sshkey", row.id, "created", user_id=int(user_id), name=name,
                            fingerprint=row.fingerprint)
        return row

    async def delete_ssh_key(self, key_id: int) -> float:
        committed = await super().delete_ssh_key(key_id)
        await self.announce("sshkey", key_id, "deleted", user_id=self._key_owners.pop(key_id))
        return committed


class LiveEventsTests(feed.LiveFeedMixin, EndToEndMixin, TestCase):
    """
    L{feed.LiveFeedMixin}'s tests with the events announcing the changes: its SSH
    test as it is (ssh_enabled toggled, keys added and deleted), its
    container test without the C{initializing} phase (no event announces
    it), and the restart.
    """

    compute: AnnouncingCompute

    def setUp(self) -> None:
        require_asyncio_reactor()

    # Pieces

    async def feed_and_gateway(self) -> None:
        """PostgreSQL with the compute schema and no change feed, nats-server with COMPUTE, the gateway, probes."""
        self.gateway = ReplicaGateway(self.mktemp())
        self.server = await start_postgres(self)
        await self.server.create_compute_tables()
        self.nats = await start_nats(self)
        client = self.client = await self.nats.client()
        # Closed here, before the server stops (trial cannot see asyncio's sockets).
        self.addCleanup(lambda: None if client.is_closed else as_deferred(client.close()))
        await add_compute_stream(client)
        self.js = client.jetstream()
        compute = self.compute = AnnouncingCompute(self.server.dsn(), self.js)
        await compute.connect()
        self.addCleanup(compute.close)
        self.on_80 = self.serve_container("port-80")
        self.on_8000 = self.serve_container("port-8000")
        self.container_port = free_port()
        self.ssh_port = free_port()
        self.gateway_args = ["--database", self.server.dsn(), "--nats", self.nats.url,
                             "--container-domain", feed.DOMAIN,
                             "--poll-interval", feed.AN_HOUR, "--resync-interval", feed.AN_HOUR,
                             "--container-ports", str(self.container_port),
                             "--port-map", f"{self.container_port}=8000",
                             "--ssh-listen", f"tcp:{self.ssh_port}:interface=127.0.0.1",
                             # Nothing listens there: a login the gateway lets through ends at once.
                             "--ssh-port", str(free_port())]
        self._gateways.append(self.gateway)
        self._stop_at_cleanup(self.gateway)
        await self.run_gateway()

    async def run_gateway(self) -> None:
        """Start the gateway (again), wait for its full read with the durable consumer bound, connect the probes."""
        gateway = self.gateway
        runs = gateway.log_text().count(FOLLOWING)
        await gateway.start(self.gateway_args, timeout=30)
        await poll_until(lambda: gateway.log_text().count(FOLLOWING) > runs,
                         "the gateway to follow the NATS events through JetStream", timeout=30)
        # A new port at every start (GatewayProcess picks one).
        self.http = await self.keepalive(gateway.port)
        self.http_8000 = await self.keepalive(self.container_port)

    def consumer(self) -> Any:
        return as_deferred(self.js.consumer_info(STREAM, DURABLE))

    async def settled(self) -> bool:
        info = await self.consumer()
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    async def event_count(self) -> float:
        return (await self.scrape(self.gateway)).value("edd_gateway_state_updates_total", kind="event")

    def report(self, timings: Sequence[feed.Timings]) -> None:
        figures = {t.kind: self.figures(t) for t in timings}
        log.msg(f"events: commit to the first answer that shows it: {json.dumps(figures)}")
        slow = {kind: f["p99_ms"] for kind, f in figures.items() if f["p99_ms"] > feed.TARGET * 1000}
        self.assertEqual(slow, {}, f"p99 over {feed.TARGET * 1000:g} ms (all figures: {json.dumps(figures)})")

    @staticmethod
    def figures(timings: feed.Timings) -> dict[str, Any]:
        """The change feed test's figures, where the slowest changes were, and the gateway's side named for events."""
        figures = timings.figures()
        # 0 is the first change of its kind: a warm-up would show as the first ones.
        figures["slowest_at"] = sorted(range(len(timings.seconds)), key=timings.seconds.__getitem__)[-3:]
        side = figures["gateway_side"]
        if "notifications" in side:
            side["events"] = side.pop("notifications")
        return figures

    # Tests (test_ssh_changes_are_served_within_the_target is the base class's, unchanged)

    async def test_container_changes_are_served_within_the_target(self) -> None:
        """Created, started, a rule added and removed, stopped, deleted: 100 of each, timed from the commit."""
        await self.feed_and_gateway()
        ids: list[str] = []
        created = feed.Timings("created")

        async def create() -> None:
            for index in range(feed.CHANGES):
                made: list[str] = []

                async def commit(index: int = index) -> float:
                    new = await self.compute.create_container(f"{1000 + index % 7}", f"app-{index}")
                    made.append(new.id)
                    return new.committed

                await self.timed(created, commit(), lambda: self.http_get(made[0]),
                                 lambda a: self.says(503, f"container {made[0]} is pending")(a), "a creation")
                ids.append(made[0])

        await self.measured(created, create)
        applied = (await self.lag())[0]
        for cid in ids:
            await self.compute.add_ingress(cid, 80, self.on_80.port)
        await poll_until(lambda: self.applied_since(applied, feed.CHANGES), "the gateway to read the port-80 rules")

        async def start(cid: str) -> float:
            # Compute goes through initializing, which no event announces; the started event's re-read covers it.
            await self.compute.set_status(cid, "initializing")
            return await self.compute.start(cid, feed.CONTAINER_IP)

        no_rule = "no ingress rule for this port"
        timings = [created]
        phases: list[tuple[str, Callable[[str], Awaitable[float]], Callable[[str], Any],
                           Callable[[str], Callable[[ProbeAnswer], bool]]]] = [
            ("started", start, self.http_get, lambda cid: self.says(200, "port-80")),
            ("ingress rule added", lambda cid: self.compute.add_ingress(cid, 8000, self.on_8000.port),
             self.http_8000_get, lambda cid: self.says(200, "port-8000")),
            ("ingress rule removed", lambda cid: self.compute.remove_ingress(cid, 8000), self.http_8000_get,
             lambda cid: self.says(502, no_rule)),
            ("stopped", self.compute.stop, self.http_get, lambda cid: self.says(503, f"container {cid} is stopped")),
            ("deleted", self.compute.delete, self.http_get, lambda cid: self.says(503, f"no container {cid}")),
        ]
        for kind, change, ask, shows in phases:
            timing = feed.Timings(kind)
            timings.append(timing)

            async def each(change: Any = change, ask: Any = ask, shows: Any = shows,
                           timing: feed.Timings = timing) -> None:
                for cid in ids:
                    await self.timed(timing, change(cid), lambda: ask(cid), shows(cid), f"{cid} {timing.kind}")

            await self.measured(timing, each)
        self.report(timings)

    async def test_events_published_while_the_gateway_is_stopped_are_applied_after_it_restarts(self) -> None:
        """
        The gateway stopped (SIGTERM) for 5 s while 10 containers start, 2
        stop, a key is added and another deleted, each change published as
        its event; started again with the same arguments (so the same
        durable consumer, C{gateway-service}), every change is served.

        That alone would not show the events were delivered: the gateway
        reads everything at start, which applies the changes by itself.
        What shows it is the durable consumer: the 14 messages pending
        while the gateway is down, then nothing pending and nothing
        unacknowledged, its delivered and ack floor sequences at the stream's
        last message (the gateway acks an event only once a read covering it
        was applied: here, as the backlog arrives as soon as NATS connects,
        usually before PostgreSQL has, that read is the full read at start),
        and the restarted gateway's
        C{edd_gateway_state_updates_total{kind="event"}} counting exactly the
        events published while it was down (more would mean redeliveries).
        """
        await self.feed_and_gateway()
        owner, to_stop_owner, to_start_owner = "3001", "3002", "3003"
        old_key, old_line = feed.new_user_key()
        new_key, new_line = feed.new_user_key()
        old = await self.compute.add_ssh_key(owner, "old laptop", old_line)
        box = (await self.compute.create_container(owner, "box", ssh_enabled=True)).id
        await self.compute.set_status(box, "initializing")
        await self.compute.start(box, "127.0.0.1")
        to_stop = [(await self.compute.create_container(to_stop_owner, f"stop-{i}")).id for i in range(2)]
        to_start = [(await self.compute.create_container(to_start_owner, f"start-{i}")).id for i in range(10)]
        for cid in to_stop + to_start:
            await self.compute.add_ingress(cid, 80, self.on_80.port)
        for cid in to_stop:
            await self.compute.set_status(cid, "initializing")
            await self.compute.start(cid, feed.CONTAINER_IP)

        let_through = f"container {box} is not accepting SSH connections"
        old_login, new_login = self.prober(box, old_key), self.prober(box, new_key)

        async def serves(cid: str, status: int, text: str) -> bool:
            return self.says(status, text)(await self.http_get(cid))

        async def all_of(checks: Sequence[Callable[[], Awaitable[bool]]]) -> bool:
            for check in checks:
                if not await check():
                    return False
            return True

        before = [*(lambda cid=cid: serves(cid, 200, "port-80") for cid in to_stop),
                  *(lambda cid=cid: serves(cid, 503, f"container {cid} is pending") for cid in to_start),
                  lambda: self.answer_starts(old_login, let_through),
                  lambda: self.answer_starts(new_login, feed.DENIED)]
        await poll_until(lambda: all_of(before), "the changes before the stop to be served", timeout=10)
        await poll_until(self.settled, "every event before the stop to be acknowledged", timeout=10)
        published_before = len(self.compute.published)

        # Stopped, the changes spread over DOWN seconds.
        # Within its bound, or stop() fails (twistd then re-raises SIGTERM: the exit status is -15).
        await self.gateway.stop()
        self.assertIn("Server Shut Down.", self.gateway.log_text(), "a clean shutdown on SIGTERM")
        stopped = time.monotonic()

        async def start(cid: str) -> float:
            await self.compute.set_status(cid, "initializing")
            return await self.compute.start(cid, feed.CONTAINER_IP)

        changes: list[Callable[[], Awaitable[Any]]] = [
            lambda: self.compute.add_ssh_key(owner, "new laptop", new_line),
            *(lambda cid=cid: start(cid) for cid in to_start[:5]),
            lambda: self.compute.stop(to_stop[0]),
            *(lambda cid=cid: start(cid) for cid in to_start[5:]),
            lambda: self.compute.stop(to_stop[1]),
            lambda: self.compute.delete_ssh_key(old.id),
        ]
        for index, change in enumerate(changes):
            await self.until(stopped + index * DOWN / len(changes))
            await change()
        down_events = self.compute.published[published_before:]
        self.assertEqual(len(down_events), 14, down_events)
        info = await self.consumer()
        self.assertEqual((info.num_pending, info.num_ack_pending), (len(down_events), 0),
                         "stored in the stream, not delivered while the gateway was stopped")
        await self.until(stopped + DOWN)

        # Back, with the same arguments: the same durable consumer.
        restarted = time.monotonic()
        await self.run_gateway()
        after = [*(lambda cid=cid: serves(cid, 503, f"container {cid} is stopped") for cid in to_stop),
                 *(lambda cid=cid: serves(cid, 200, "port-80") for cid in to_start),
                 lambda: self.answer_starts(new_login, let_through),
                 lambda: self.answer_starts(old_login, feed.DENIED)]
        await poll_until(lambda: all_of(after), "every change made while stopped to be served", timeout=10)
        served = time.monotonic()
        await poll_until(self.settled, "every event published while stopped to be acknowledged", timeout=10)
        settled = time.monotonic()
        info = await self.consumer()
        stream = await as_deferred(self.js.stream_info(STREAM))
        counted = await self.event_count()
        log.msg(f"events: after a {DOWN:g} s stop with {len(down_events)} events published: "
                + json.dumps({"start_to_served_s": round(served - restarted, 3),
                              "start_to_all_acked_s": round(settled - restarted, 3),
                              "events_counted": counted, "stream_last_seq": stream.state.last_seq,
                              "consumer": {"delivered_stream_seq": info.delivered.stream_seq,
                                           "ack_floor_stream_seq": info.ack_floor.stream_seq,
                                           "num_pending": info.num_pending, "num_ack_pending": info.num_ack_pending,
                                           "num_redelivered": info.num_redelivered}}))
        self.assertEqual((info.delivered.stream_seq, info.ack_floor.stream_seq),
                         (stream.state.last_seq, stream.state.last_seq), "every message delivered and acknowledged")
        self.assertEqual(counted, len(down_events), "the events the restarted gateway heard")
        self.assertEqual(self.gateway.log_text().count("created the durable consumer"), 1,
                         "the restarted gateway bound the consumer it had, not a new one")

    @staticmethod
    async def until(moment: float) -> None:
        """Sleep until C{time.monotonic()} reaches C{moment}."""
        delay = moment - time.monotonic()
        if delay > 0:
            await deferLater(reactor, delay, lambda: None)
