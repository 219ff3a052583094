"""
The PostgreSQL change feed against a throwaway PostgreSQL: the installed
triggers, the operator command and the listener across a server restart.
The payloads and the state service over the memory fakes are
C{tests/unit/test_state_changefeed.py}'s.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from edd_gateway.state.changefeed import ChangeFeedListener
from edd_gateway.state.triggers import CHANNEL, Change, ChangeFeedError, install
from edd_gateway.testing import poll_until
from edd_gateway.testing.postgres import ThrowawayPostgres, start_postgres


class _Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.listening = 0
        self.stopped: list[str] = []

    def bind(self, listener: ChangeFeedListener) -> None:
        listener.bind(self.changes.append, self._listening, self.stopped.append)

    def _listening(self) -> None:
        self.listening += 1


class InstalledTests(TestCase):
    """The triggers, the operator command and the listener, on a real server."""

    async def compute(self, dedicated: bool = False) -> ThrowawayPostgres:
        server = await start_postgres(self, dedicated=dedicated)
        await server.create_compute_tables()
        return server

    async def listener(self, server: ThrowawayPostgres) -> tuple[ChangeFeedListener, _Recorder]:
        listener = ChangeFeedListener(server.dsn(), reactor, reconnect_delays=lambda: iter([0.0] + [0.2] * 100))
        recorder = _Recorder()
        recorder.bind(listener)
        self.addCleanup(listener.stop)
        await listener.start()
        return listener, recorder

    async def test_install_is_idempotent_and_remove_takes_it_away(self) -> None:
        server = await self.compute()
        self.assertIn(CHANNEL, install(server.dsn()))
        install(server.dsn())
        rows = await server.query("SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgname LIKE "
                                  "'edd_gateway%' ORDER BY 1, 2")
        self.assertEqual(len(rows), 6)
        self.assertEqual({row[0] for row in rows}, {"containers", "ingress_rules", "ssh_keys"})
        install(server.dsn(), remove=True)
        install(server.dsn(), remove=True)
        self.assertEqual(await server.query("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'edd_gateway%'"), [])
        self.assertEqual(await server.query("SELECT proname FROM pg_proc WHERE proname LIKE 'edd_gateway%'"), [])

    async def test_install_by_a_role_that_does_not_own_the_tables_fails_in_one_line(self) -> None:
        server = await self.compute()
        await server.execute("CREATE ROLE gateway_reader LOGIN")
        await server.execute("GRANT SELECT ON containers, ingress_rules, ssh_keys TO gateway_reader")
        with self.assertRaises(ChangeFeedError) as raised:
            install(server.dsn() + " user=gateway_reader")
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        self.assertIn("owner", message)
        with self.assertRaises(ChangeFeedError):
            install("host=127.0.0.1 port=1 dbname=none connect_timeout=2")

    async def test_install_refuses_a_database_without_the_compute_tables(self) -> None:
        server = await start_postgres(self)
        with self.assertRaises(ChangeFeedError) as raised:
            install(server.dsn())
        self.assertIn("containers", str(raised.exception))

    async def test_each_committed_change_is_announced_and_rollbacks_are_not(self) -> None:
        server = await self.compute()
        install(server.dsn())
        listener, recorder = await self.listener(server)
        self.assertTrue(listener.listening)
        self.assertEqual(recorder.listening, 1)
        await server.execute("INSERT INTO containers (id, user_id, name, namespace) VALUES "
                             "('a1b2c3d4', '7', 'web', 'compute-7-a1b2c3d4')")
        await server.execute("INSERT INTO ingress_rules (container_id, port, target_port) VALUES ('a1b2c3d4', 8000, 80)")
        await server.execute("INSERT INTO ssh_keys (user_id, name, public_key, fingerprint) VALUES "
                             "('7', 'laptop', 'ssh-ed25519 AAAA me', 'aa:bb')")
        await server.execute("DELETE FROM containers WHERE id = 'a1b2c3d4'")
        await server.execute("BEGIN; UPDATE containers SET status = 'running'; ROLLBACK")
        await poll_until(lambda: len(recorder.changes) >= 5, "five notifications")
        self.assertEqual(recorder.changes, [
            Change("containers", ("a1b2c3d4",)), Change("ingress_rules", ("a1b2c3d4",)),
            Change("ssh_keys", user_ids=("7",)), Change("containers", ("a1b2c3d4",)),
            Change("ingress_rules", ("a1b2c3d4",)),  # the cascade
        ])

    async def test_not_installed_then_installed(self) -> None:
        server = await self.compute()
        listener, recorder = await self.listener(server)
        self.assertEqual(listener.state, "not installed")
        self.assertFalse(await listener.check())
        install(server.dsn())
        self.assertTrue(await listener.check())
        self.assertEqual(recorder.listening, 1)
        install(server.dsn(), remove=True)
        self.assertFalse(await listener.check())
        self.assertEqual(recorder.stopped, ["triggers removed"])

    async def test_a_restarted_server_is_listened_to_again(self) -> None:
        server = await self.compute(dedicated=True)
        install(server.dsn())
        listener, recorder = await self.listener(server)
        await server.restart()
        # Idle, the connection learns of the loss when the server closes it.
        await poll_until(lambda: recorder.listening == 2, "listening again", timeout=20)
        self.assertEqual(recorder.stopped, ["connection lost"])
        await server.execute("UPDATE containers SET status = 'running'")
        await server.execute("INSERT INTO containers (id, user_id, name, namespace) VALUES "
                             "('b1b2c3d4', '7', 'web', 'compute-7-b1b2c3d4')")
        await poll_until(lambda: Change("containers", ("b1b2c3d4",)) in recorder.changes, "the insert announced")
        self.flushLoggedErrors()
