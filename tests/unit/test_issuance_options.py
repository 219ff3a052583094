"""The C{--acme-*} options: what each needs, each refusal one line naming the option."""

from __future__ import annotations

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.issuance.options import issuance_settings
from edd_gateway.issuance.sealing import generate_key_text
from edd_gateway.tap import Options

DSN = "host=127.0.0.1 port=5999 user=postgres"


class AcmeOptionsTests(SynchronousTestCase):
    def key_file(self, text: str | None = None) -> str:
        path = self.mktemp()
        with open(path, "w") as file:
            file.write(generate_key_text() if text is None else text)
        return path

    def refused(self, *args: str) -> str:
        with self.assertRaises(UsageError) as raised:
            Options().parseOptions(list(args))
        return str(raised.exception)

    def test_needs(self) -> None:
        self.assertIn("needs --database", self.refused("--acme-directory", "https://ca.test/dir"))
        self.assertIn("needs --acme-storage-key", self.refused("--database", DSN, "--acme-directory",
                                                                "https://ca.test/dir"))
        self.assertIn("--acme-storage-key needs --acme-directory", self.refused("--acme-storage-key", "x"))

    def test_bad_values(self) -> None:
        base = ["--database", DSN, "--acme-directory", "https://ca.test/dir"]
        self.assertIn("--acme-storage-key:", self.refused(*base, "--acme-storage-key", self.key_file("short")))
        key = ["--acme-storage-key", self.key_file()]
        self.assertIn("--acme-challenges", self.refused(*base, *key, "--acme-challenges", "dns-01"))
        self.assertIn("--acme-directory must be", self.refused("--database", DSN, "--acme-directory", "ca.test",
                                                                *key))
        self.assertIn("--acme-renew-fraction", self.refused(*base, *key, "--acme-renew-fraction", "1.5"))
        self.assertIn("--acme-ca-bundle: cannot read", self.refused(*base, *key, "--acme-ca-bundle",
                                                                     self.mktemp()))

    def test_settings(self) -> None:
        options = Options()
        options.parseOptions(["--database", DSN, "--acme-directory", "https://ca.test/dir", "--acme-storage-key",
                              self.key_file(), "--acme-challenges", "http-01", "--acme-first-wait", "5",
                              "--acme-email", "ops@example.test"])
        settings, policy = issuance_settings(options)
        self.assertEqual((settings.directory, settings.email, settings.challenges), (
            "https://ca.test/dir", "ops@example.test", ("http-01",)))
        self.assertEqual(policy.first_wait, 5)
