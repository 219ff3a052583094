"""
End-to-end tests of TLS session tickets across replicas: two real
``twistd -n edd-gateway`` processes, and ``openssl s_client -sess_out`` against
the first and ``-sess_in`` against the second.  With one ``--tls-ticket-keys``
file the second resumes the first's sessions (TLS 1.2 and TLS 1.3), also
after the file is rotated and after a bad version of it; with keys of their
own it does not; ``--no-tls-tickets`` issues no ticket.

For TLS 1.3 the tickets come after the handshake: s_client sends a request
and, with ``-ign_eof``, reads until the gateway closes, so it has read them
before it writes the session file.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin, GatewayProcess, poll_until, require_tool, run_process
from edd_gateway.testing.tls import write_pair

_REQUEST = b"GET / HTTP/1.0\r\nHost: app.cloud.test\r\n\r\n"


def key_lines(count: int) -> list[str]:
    return [base64.b64encode(os.urandom(80)).decode() for _ in range(count)]


class TicketReplicaTests(EndToEndMixin, TestCase):
    def setUp(self) -> None:
        self.openssl = require_tool("openssl")
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        write_pair(self.dir / "secrets" / "app", "app.cloud.test")
        self.echo_backend, _ = self.serve_echo("app")
        self.keys_path = self.dir / "ticket.keys"
        self.keys = key_lines(3)
        self.keys_path.write_text("# made by the test\n" + "\n".join(self.keys) + "\n")

    async def replica(self, *extra: str) -> GatewayProcess:
        routes = [{"host": "app.cloud.test", "path": "/", "target": self.echo_backend.target}]
        args = ["--tls-dir", str(self.dir / "secrets"), "--cert-check-interval", "0.2", *extra]
        return await self.start_gateway(args, routes=routes)

    async def s_client(self, gateway: GatewayProcess, version: str, session: str, *args: str) -> str:
        """s_client's output for one request over TLS C{version} (C{-tls1_2}/C{-tls1_3}), C{session} to or from a file."""
        argv = [self.openssl, "s_client", "-connect", f"127.0.0.1:{gateway.port}", "-servername",
                "app.cloud.test", version, "-ign_eof", *args]
        run = run_process(argv, timeout=20)
        run.transport.write(_REQUEST)
        run.transport.closeStdin()
        await run.result()
        output = bytes(run.out + run.err).decode("utf-8", "replace")
        self.assertIn("HTTP/1.1 200", output, output)
        return output

    async def hand_over(self, first: GatewayProcess, second: GatewayProcess, version: str) -> str:
        """A session from C{first}, offered to C{second}: s_client's output there."""
        session = str(self.dir / f"session-{version}-{first.port}-{second.port}")
        output = await self.s_client(first, version, session, "-sess_out", session)
        self.assertIn("New,", output)
        self.assertIn("TLS session ticket:", output, "the first replica issued no ticket")
        return await self.s_client(second, version, session, "-sess_in", session)

    async def test_shared_keys_resume_on_the_other_replica(self) -> None:
        first = await self.replica("--tls-ticket-keys", str(self.keys_path))
        second = await self.replica("--tls-ticket-keys", str(self.keys_path))
        for gateway in (first, second):
            self.assertIn(f"tls: session tickets: keys from {self.keys_path} (3 keys of 80 bytes, "
                          f"encrypting with #2 ", gateway.log_text())
        for version in ("-tls1_2", "-tls1_3"):
            output = await self.hand_over(first, second, version)
            self.assertIn("Reused,", output, f"{version}: not resumed on the second replica:\n{output}")
        scrape = await self.scrape(second)
        self.assertEqual(scrape.value("edd_gateway_tls_tickets_total", outcome="resumed"), 2)

    async def test_rotated_and_bad_files_keep_resuming(self) -> None:
        first = await self.replica("--tls-ticket-keys", str(self.keys_path))
        second_keys = self.dir / "second.keys"
        second_keys.write_text("\n".join(self.keys) + "\n")
        second = await self.replica("--tls-ticket-keys", str(second_keys))
        # The operator's rotation, seen by the second replica first: append a
        # key, drop the oldest.  The second now encrypts with the first's
        # "next" key and still decrypts the first's tickets, and back.
        rotated = [*self.keys[1:], *key_lines(1)]
        second_keys.write_text("\n".join(rotated) + "\n")
        await poll_until(lambda: "tls: ticket keys reloaded from" in second.log_text(),
                         "the second replica to re-read its key file", 10)
        self.assertIn("Reused,", await self.hand_over(first, second, "-tls1_3"))
        self.assertIn("Reused,", await self.hand_over(second, first, "-tls1_2"))
        # A bad version: one line naming the file and line, the keys in use stay.
        second_keys.write_text(rotated[0] + "\nnot base64 at all!\n")
        await poll_until(lambda: "keeping the 3 keys in use" in second.log_text(),
                         "the second replica to refuse the bad key file", 10)
        self.assertIn(f"tls: ticket keys: {second_keys}:2: not base64; keeping the 3 keys in use",
                      second.log_text())
        self.assertNotIn("Traceback", second.log_text())
        self.assertIn("Reused,", await self.hand_over(first, second, "-tls1_2"))

    async def test_own_keys_do_not_resume_on_the_other_replica(self) -> None:
        first = await self.replica()
        second = await self.replica()
        self.assertIn("tls: session tickets: keys drawn in memory, a new one every 3600s", first.log_text())
        for version in ("-tls1_2", "-tls1_3"):
            output = await self.hand_over(first, second, version)
            self.assertIn("New,", output, f"{version}: resumed without shared keys:\n{output}")
            # The session file was good: the replica that made it resumes it.
            output = await self.hand_over(first, first, version)
            self.assertIn("Reused,", output, f"{version}: not resumed on the same replica:\n{output}")

    async def test_no_tls_tickets(self) -> None:
        gateway = await self.replica("--no-tls-tickets")
        self.assertIn("tls: session tickets off (--no-tls-tickets)", gateway.log_text())
        session = str(self.dir / "session-id")
        output = await self.s_client(gateway, "-tls1_2", session, "-sess_out", session)
        self.assertNotIn("TLS session ticket:", output)
        # TLS 1.2 still resumes on this replica, by session id.
        output = await self.s_client(gateway, "-tls1_2", session, "-sess_in", session)
        self.assertIn("Reused,", output)
        self.assertNotIn("TLS session ticket:", output)
