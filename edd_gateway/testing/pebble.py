"""
A throwaway ACME CA for end-to-end tests: Debian's C{pebble} (RFC 8555 test
CA) with C{pebble-challtestsrv} as its DNS server, which answers every name
with 127.0.0.1 (no AAAA: the gateway listens on IPv4 loopback), on random
loopback ports.  Pebble validates HTTP-01 and TLS-ALPN-01 challenges on the
ports it is given (C{http_port}, C{tls_port}): point them at the gateway's
listener.  Its own TLS certificate is made here (the Debian package ships
none), trusted through L{ThrowawayPebble.wfe_ca}; the root that signs the
certificates it issues is fetched from its management API
(L{ThrowawayPebble.fetch_root}).  Its output is kept: C{orders} counts the
C{Added order} lines, the ACME traffic a test can count from pebble's side.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from edd_gateway.tls.devcert import self_signed_certificate

from .tools import ProcessRun, free_port, poll_until, require_tool, run_process

__all__ = ["ThrowawayPebble"]


class ThrowawayPebble:
    """
    @param validity: seconds its certificates are valid (pebble's
        C{certificateValidityPeriod}; short ones for renewal tests).
    """

    def __init__(self, workdir: str, *, http_port: int, tls_port: int, validity: int | None = None,
                 reactor: Any = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.tls_port, self.validity = http_port, tls_port, validity
        self.port, self.management_port, self.dns_port = free_port(), free_port(), free_port()
        self._reactor = reactor
        self._pebble: ProcessRun | None = None
        self._dns: ProcessRun | None = None
        self.wfe_ca = str(self.workdir / "pebble-wfe.pem")

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    _output_before = ""

    @property
    def output(self) -> str:
        """Everything pebble printed, across restarts."""
        now = bytes(self._pebble.out + self._pebble.err).decode("utf-8", "replace") if self._pebble else ""
        return self._output_before + now

    @property
    def orders(self) -> int:
        """Orders placed so far (pebble logs C{Added order} for each)."""
        return self.output.count("Added order")

    def _write_files(self) -> Path:
        path = self.workdir / "pebble-config.json"
        if path.exists():
            # A restart: the same TLS certificate, which clients trust already.
            return path
        now = datetime.now(timezone.utc)
        certificate, key = self_signed_certificate(("localhost", "127.0.0.1"), now - timedelta(hours=1),
                                                   now + timedelta(days=2))
        Path(self.wfe_ca).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path = self.workdir / "pebble-wfe.key"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": self.wfe_ca, "privateKey": str(key_path),
            "httpPort": self.http_port, "tlsPort": self.tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }
        if self.validity is not None:
            config["certificateValidityPeriod"] = self.validity
        path.write_text(json.dumps({"pebble": config}))
        return path

    async def start(self) -> None:
        pebble, challtestsrv = require_tool("pebble"), require_tool("pebble-challtestsrv")
        config = self._write_files()
        self._dns = run_process([challtestsrv, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                                 "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
                                 "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"],
                                timeout=3600, reactor=self._reactor)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        self._pebble = run_process([pebble, "-config", str(config), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                                   timeout=3600, env=env, path=str(self.workdir), reactor=self._reactor)
        await poll_until(lambda: self._accepting() or self._pebble_ended(), "pebble to listen", 20,
                         reactor=self._reactor)
        if self._pebble_ended():
            raise AssertionError(f"pebble exited while starting: {self.output}")

    def _accepting(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def _pebble_ended(self) -> bool:
        return self._pebble is not None and self._pebble.exit_code is not None

    def fetch_root(self) -> str:
        """The PEM root of the certificates pebble issues (a new one at every start), written to a file."""
        context = ssl.create_default_context(cafile=self.wfe_ca)
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management_port}/roots/0", context=context,
                                    timeout=10) as answer:
            pem = answer.read()
        path = self.workdir / "pebble-root.pem"
        path.write_bytes(pem)
        return str(path)

    async def restart(self) -> None:
        """A new pebble on the same ports and TLS certificate: it remembers no account, order or root."""
        await self.stop()
        self._output_before = self.output
        await self.start()

    async def stop(self) -> None:
        for run in (self._pebble, self._dns):
            if run is not None:
                await run.stop()
