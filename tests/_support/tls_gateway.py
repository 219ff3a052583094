"""
L{TLSCase}: the real gateway with exact, wildcard and default certificates
(the exact one on a secret volume that updates through C{..data}), a plain
and a TLS echo backend (the passthrough route's), and C{openssl s_client},
C{curl} and a memory-BIO client against it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from edd_gateway.testing import (
    BackendServer,
    EchoResource,
    EndToEndMixin,
    require_tool,
    run_process,
    web_factory,
)
from edd_gateway.testing.tls import BackendTLS, MemoryTLSClient, SecretVolume, make_pair, write_pair, write_pem

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", re.S)


class TLSCase(EndToEndMixin, TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.openssl = require_tool("openssl")
        self.curl_path = require_tool("curl")
        self.dir = Path(self.mktemp()).absolute()
        secrets = self.dir / "secrets"
        self.exact_key_pair = make_pair("app.cloud.test")
        self.exact = self.exact_key_pair[0]
        self.exact_volume = SecretVolume(secrets / "app")
        self.exact_volume.publish(*self.exact_key_pair)
        self.wildcard = write_pair(secrets / "wildcard", "*.cloud.test")
        self.default = write_pair(self.dir / "default", "default.test")
        self.backend_certificate, backend_key = make_pair("vm.cloud.test")
        self.echo_backend, self.echo = self.serve_echo("plain")
        self.tls_echo = EchoResource("tls-backend")
        self.tls_backend: BackendServer = self.serve(
            TLSMemoryBIOFactory(BackendTLS(self.backend_certificate, backend_key), False, web_factory(self.tls_echo))
        )
        self.vm_target = self.tls_backend.target

    def routes(self) -> list[dict[str, Any]]:
        echo = self.echo_backend.target
        return [
            {"host": "app.cloud.test", "path": "/", "target": echo},
            {"host": "other.cloud.test", "path": "/", "target": echo},
            {"host": "secure.test", "path": "/", "target": echo, "redirect_https": True},
            {"host": "vm.cloud.test", "path": "/", "target": self.vm_target, "tls": "passthrough"},
        ]

    async def start(self, *extra: str) -> None:
        args = ["--tls-dir", str(self.dir / "secrets"), "--tls-dir", str(self.dir / "default"),
                "--default-cert", "default.test", "--cert-check-interval", "0.2", *extra]
        self.gateway = await self.start_gateway(args, routes=self.routes())

    async def s_client(self, server_name: str | None, *args: str) -> tuple[x509.Certificate | None, str]:
        """The certificate C{openssl s_client} was shown, and its output."""
        sni = ["-servername", server_name] if server_name else ["-noservername"]
        argv = [self.openssl, "s_client", "-connect", f"127.0.0.1:{self.gateway.port}", *sni, *args]
        run = run_process(argv, timeout=20)
        run.transport.closeStdin()
        await run.result()
        output = bytes(run.out + run.err).decode("utf-8", "replace")
        found = _PEM.search(bytes(run.out))
        return (x509.load_pem_x509_certificate(found.group(0)) if found else None), output

    async def presented(self, server_name: str | None) -> x509.Certificate:
        certificate, output = await self.s_client(server_name)
        self.assertIsNotNone(certificate, f"no certificate for SNI {server_name}:\n{output}")
        assert certificate is not None
        return certificate

    async def https(self, host: str, path: str = "/", *args: str, cacert: x509.Certificate | None = None) -> Any:
        port = self.gateway.port
        trust = ["--cacert", write_pem(self.dir / f"trust-{host}.pem", cacert)] if cacert else ["-k"]
        return await self.curl(f"https://{host}:{port}{path}", "--resolve", f"{host}:{port}:127.0.0.1",
                               *trust, *args)

    async def raw_tls(self, server_name: str) -> MemoryTLSClient:
        return MemoryTLSClient(await self.raw(self.gateway.port), server_name)
