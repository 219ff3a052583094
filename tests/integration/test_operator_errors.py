"""
What an operator sees for each mistake of issue 14, item 8, from the real
programs: ``twistd edd-gateway`` in the foreground (``-n``) and daemonised,
and ``python -m edd_gateway``.  One line that names the option (or the
environment variable) and the value at fault, exit status 1, never a
traceback, never the whole ``--help``, never a password.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

from edd_gateway.__main__ import main
from edd_gateway.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))


def run(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd or tempfile.gettempdir(),
                          env={**os.environ, **(env or {})})


class GatewayStartTests(TestCase):
    def twistd(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run([TWISTD, "-n", "--pidfile=", "edd-gateway", "--admin", "none", *args], env)

    def assertOneLine(self, done: subprocess.CompletedProcess[str], line: str) -> None:
        text = done.stdout + done.stderr
        self.assertEqual(done.returncode, 1, text)
        self.assertIn(line, text)
        self.assertNotIn("Traceback", text)
        self.assertNotIn("--max-body-size", text, "the whole --help was printed")

    def busy_port(self) -> int:
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        return int(busy.getsockname()[1])

    def test_a_port_in_use_in_the_foreground(self) -> None:
        port = self.busy_port()
        done = self.twistd("--listen", f"tcp:{port}:interface=127.0.0.1")
        self.assertOneLine(done, f"edd-gateway: --listen tcp:{port}:interface=127.0.0.1: Address already in use")

    def test_a_port_in_use_daemonised(self) -> None:
        port = self.busy_port()
        work = Path(self.mktemp()).absolute()
        work.mkdir(parents=True)
        done = run([TWISTD, f"--pidfile={work / 'g.pid'}", f"--logfile={work / 'g.log'}", "edd-gateway",
                    "--admin", "none", "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
                    "--ssh-listen", f"tcp:{port}:interface=127.0.0.1"])
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertIn(f"edd_gateway.StartFailure: --ssh-listen tcp:{port}:interface=127.0.0.1: Address already in "
                      "use'", done.stderr, f"twistd's line is whole: {done.stderr}")
        self.assertIn(f"--ssh-listen tcp:{port}:interface=127.0.0.1: Address already in use",
                      (work / "g.log").read_text())

    def test_malformed_endpoints_name_their_option(self) -> None:
        for option, value, why in (("--listen", "tcp:notaport", "invalid literal for int()"),
                                   ("--listen", "foo:1", "Unknown endpoint type: 'foo'"),
                                   ("--ssh-listen", "tcp:x", "invalid literal"), ("--admin", "bogus:1", "bogus")):
            done = self.twistd(option, value) if option != "--admin" else run(
                [TWISTD, "-n", "--pidfile=", "edd-gateway", "--admin", value])
            self.assertOneLine(done, f"{option} {value!r} is not an endpoint (")
            self.assertIn(why, done.stdout + done.stderr)

    def test_bad_database_urls_are_refused_at_start(self) -> None:
        for url, line in (("postgresql://u:s3cret@127.0.0.1:notaport/db",
                           "--database: port 'notaport' is not a number from 1 to 65535"),
                          ("postgresql://u:s3cret@127.0.0.1:99999/db", "--database: port '99999' is not a number"),
                          ("host=db password=s3cret sslmode=bogus", "--database: sslmode 'bogus' is not one of")):
            done = self.twistd("--database", url)
            self.assertOneLine(done, line)
            self.assertNotIn("s3cret", done.stdout + done.stderr)

    def test_the_environment_variable_is_named(self) -> None:
        done = self.twistd(env={"DATABASE_URL": "postgresql://u:s3cret@[::1:5432/db"})
        self.assertOneLine(done, "DATABASE_URL is not a PostgreSQL DSN")
        self.assertNotIn("--database", done.stdout + done.stderr)
        self.assertNotIn("s3cret", done.stdout + done.stderr)
        done = self.twistd(env={"DATABASE_URL": "postgresql://u@127.0.0.1:70000/db"})
        self.assertOneLine(done, "DATABASE_URL: port '70000' is not a number")


class CommandLineToolTests(TestCase):
    def test_a_closed_pipe_is_no_traceback(self) -> None:
        class Closed(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError(32, "Broken pipe")

        err = io.StringIO()
        status = main(["explain", "http://app.test/"], stdout=Closed(), stderr=err)
        self.assertEqual((status, err.getvalue()), (0, ""))

    def test_check_into_head(self) -> None:
        work = Path(self.mktemp()).absolute()
        work.mkdir(parents=True)
        (work / "r.yaml").write_text("routes:\n  - host: a.test\n    path: /\n    target: 127.0.0.1:8081\n")
        # A line per file: 110 kB, more than a pipe holds once head has gone.
        many = " ".join(["r.yaml"] * 5000)
        done = subprocess.run(f"{sys.executable} -m edd_gateway check {many} | head -c 10", shell=True,
                              capture_output=True, text=True, timeout=60, cwd=str(work))
        self.assertEqual(done.stdout, "r.yaml: OK")
        self.assertNotIn("Traceback", done.stderr)
        self.assertNotIn("BrokenPipe", done.stderr)

    def test_outside_the_venv_from_the_checkout(self) -> None:
        base = shutil.which("python3", path=os.path.join(sys.base_prefix, "bin"))
        if base is None or run([base, "-c", "import twisted.logger"]).returncode == 0:
            raise SkipTest("no interpreter without Twisted to try")
        done = run([base, "-m", "edd_gateway", "--help"], cwd=str(ROOT))
        self.assertEqual(done.returncode, 1)
        self.assertNotIn("Traceback", done.stderr)
        self.assertIn("run .venv/bin/python -m edd_gateway", done.stderr)

    def test_what_the_readme_leaves_is_ignored(self) -> None:
        if shutil.which("git") is None or not (ROOT / ".git").exists():
            raise SkipTest("not a git checkout")
        left = ["gateway.log", "gateway.pid", "edd-gateway-state/dev-tls/tls.crt"]
        done = run(["git", "-C", str(ROOT), "check-ignore", *left])
        self.assertEqual(done.stdout.split(), left)
