"""
Tests for L{edd_gateway.tls.store} and L{edd_gateway.tls.secret}: secret directories (plain and in the
Kubernetes symlink layout), choice by SNI, reloads and expiry reporting.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.tls.devcert import self_signed_certificate, write_secret_directory
from edd_gateway.tls.secret import LoadedCertificate, load_secret_directory, normalize_name
from edd_gateway.tls.store import CertificateStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def write_pair(
    directory: str, names: Sequence[str], days: float = 90, mismatched: bool = False
) -> x509.Certificate:
    """Write a self-signed pair valid from 30 days before L{NOW} to C{days} after."""
    certificate, key = self_signed_certificate(
        names, NOW - timedelta(days=30), NOW + timedelta(days=days)
    )
    if mismatched:
        key = ec.generate_private_key(ec.SECP256R1())
    write_secret_directory(directory, [certificate], key)
    return certificate


def write_kubernetes_version(mount: str, version: str, names: Sequence[str], **kw):
    """
    Write a secret the way the kubelet does: the files in C{..VERSION}, an
    atomically swapped C{..data} symlink to it, and C{tls.crt -> ..data/tls.crt}.
    """
    os.makedirs(mount, exist_ok=True)
    certificate = write_pair(os.path.join(mount, f"..{version}"), names, **kw)
    temporary = os.path.join(mount, "..data_tmp")
    os.symlink(f"..{version}", temporary)
    os.replace(temporary, os.path.join(mount, "..data"))
    for name in ("tls.crt", "tls.key"):
        if not os.path.islink(os.path.join(mount, name)):
            os.symlink(f"..data/{name}", os.path.join(mount, name))
    return certificate


def certificate_with_chain(directory: str, name: str) -> x509.Certificate:
    """A leaf issued by a throwaway CA, written with the CA as its chain."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=900))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_secret_directory(directory, [leaf, ca], key)
    return ca


class StoreTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.events: list[dict] = []
        self.log = Logger(observer=self.events.append)

    def store(self, **kwargs) -> CertificateStore:
        return CertificateStore(clock=self.clock, log=self.log, **kwargs)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def messages(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == level]


class LoadingTests(StoreTestCase):
    def test_single_secret_directory(self) -> None:
        certificate = write_pair(self.path("exact"), ["a.cloud.example"])
        store = self.store()
        report = store.add_directory(self.path("exact"))
        self.assertEqual(report.loaded, (self.path("exact"),))
        [loaded] = store.certificates()
        self.assertEqual(loaded.certificate, certificate)
        self.assertEqual(loaded.names, frozenset({"a.cloud.example"}))
        self.assertEqual(loaded.not_after, NOW + timedelta(days=90))

    def test_parent_directory_skips_dot_and_incomplete_entries(self) -> None:
        write_pair(self.path("b"), ["b.example"])
        write_pair(self.path("a"), ["a.example"])
        write_pair(self.path("..2026_06_01"), ["hidden.example"])
        os.makedirs(self.path("empty"))
        with open(self.path("README"), "w") as note:
            note.write("not a secret")
        store = self.store()
        report = store.add_directory(self.root)
        self.assertEqual(report.loaded, (self.path("a"), self.path("b")))
        self.assertFalse(store.covers("hidden.example"))

    def test_chain_is_kept(self) -> None:
        ca = certificate_with_chain(self.path("chained"), "c.example")
        loaded = load_secret_directory(self.path("chained"))
        self.assertEqual(loaded.chain, (ca,))

    def test_common_name_only_without_san(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CN.Example")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(3)
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        write_secret_directory(self.path("cn"), [certificate], key)
        self.assertEqual(load_secret_directory(self.path("cn")).names, {"cn.example"})

    def test_san_wins_over_common_name(self) -> None:
        write_pair(self.path("san"), ["*.cloud.example", "cloud.example", "::1"])
        loaded = load_secret_directory(self.path("san"))
        self.assertEqual(loaded.names, {"cloud.example", "::1"})
        self.assertEqual(loaded.wildcard_suffixes, {"cloud.example"})

    def test_mismatched_key_is_not_served(self) -> None:
        write_pair(self.path("bad"), ["bad.example"], mismatched=True)
        store = self.store()
        report = store.add_directory(self.path("bad"))
        [(directory, reason)] = report.failed
        self.assertEqual(directory, self.path("bad"))
        self.assertIn("does not match", reason)
        self.assertEqual(store.certificates(), ())
        self.assertIsNone(store.choose("bad.example"))
        [message] = self.messages(LogLevel.error)
        self.assertIn(self.path("bad"), message)

    def test_unparsable_and_missing_files(self) -> None:
        os.makedirs(self.path("garbage"))
        for name in ("tls.crt", "tls.key"):
            with open(self.path("garbage", name), "w") as file:
                file.write("not PEM")
        os.makedirs(self.path("keyless"))
        write_pair(self.path("keyless"), ["k.example"])
        os.remove(self.path("keyless", "tls.key"))
        report = self.store().add_directory(self.root)
        reasons = dict(report.failed)
        self.assertIn("not PEM certificates", reasons[self.path("garbage")])
        self.assertIn("cannot read", reasons[self.path("keyless")])

    def test_not_a_directory(self) -> None:
        with self.assertRaises(NotADirectoryError):
            self.store().add_directory(self.path("missing"))


class ChoiceTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        write_pair(self.path("1-wildcard"), ["*.cloud.example"])
        write_pair(self.path("2-exact"), ["a.cloud.example"])
        write_pair(self.path("3-default"), ["default.example"])
        write_pair(self.path("4-addresses"), ["127.0.0.1", "::1"])

    def chosen(self, store: CertificateStore, name: str | None) -> str | None:
        certificate = store.choose(name)
        return None if certificate is None else os.path.basename(certificate.directory)

    def test_exact_before_wildcard(self) -> None:
        store = self.store()
        store.add_directory(self.root)
        self.assertEqual(self.chosen(store, "a.cloud.example"), "2-exact")
        self.assertEqual(self.chosen(store, "A.Cloud.Example."), "2-exact")
        self.assertEqual(self.chosen(store, "b.cloud.example"), "1-wildcard")

    def test_wildcard_covers_exactly_one_label(self) -> None:
        store = self.store()
        store.add_directory(self.root)
        self.assertTrue(store.covers("b.cloud.example"))
        self.assertFalse(store.covers("x.b.cloud.example"))
        self.assertFalse(store.covers("cloud.example"))
        self.assertFalse(store.covers("default.example.other"))
        # Not covered: the default (the first loaded here) answers.
        self.assertEqual(self.chosen(store, "x.b.cloud.example"), "1-wildcard")

    def test_default_name(self) -> None:
        store = self.store(default_name="default.example")
        store.add_directory(self.root)
        self.assertEqual(self.chosen(store, None), "3-default")
        self.assertEqual(self.chosen(store, "unknown.example"), "3-default")
        self.assertEqual(self.chosen(store, "cloud.example"), "3-default")
        self.assertFalse(store.covers("unknown.example"))

    def test_designated_default_directory(self) -> None:
        store = self.store()
        store.add_directory(self.path("2-exact"))
        store.add_directory(self.path("3-default"), default=True)
        self.assertEqual(self.chosen(store, None), "3-default")

    def test_uncovered_default_name_means_no_default(self) -> None:
        store = self.store(default_name="nowhere.example")
        store.add_directory(self.root)
        self.assertIsNone(store.choose(None))
        self.assertIn("nowhere.example", self.messages(LogLevel.warn)[0])

    def test_empty_store(self) -> None:
        store = self.store()
        self.assertIsNone(store.choose("a.cloud.example"))
        self.assertIsNone(store.choose(None))

    def test_ip_addresses(self) -> None:
        store = self.store()
        store.add_directory(self.root)
        self.assertEqual(self.chosen(store, "127.0.0.1"), "4-addresses")
        self.assertTrue(store.covers("[::1]"))
        self.assertTrue(store.covers("0:0::1"))
        self.assertFalse(store.covers("127.0.0.2"))

    def test_certificate_covers(self) -> None:
        store = self.store()
        store.add_directory(self.root)
        wildcard = store.choose("z.cloud.example")
        assert isinstance(wildcard, LoadedCertificate)
        self.assertTrue(wildcard.covers("Z.cloud.example."))
        self.assertFalse(wildcard.covers("a.b.cloud.example"))
        self.assertFalse(wildcard.covers("default.example"))

    def test_first_directory_wins_a_shared_name(self) -> None:
        write_pair(self.path("0-other-exact"), ["a.cloud.example"])
        store = self.store()
        store.add_directory(self.path("2-exact"))
        store.add_directory(self.path("0-other-exact"))
        self.assertEqual(self.chosen(store, "a.cloud.example"), "2-exact")

    def test_normalize_name(self) -> None:
        self.assertEqual(normalize_name("Example.COM."), "example.com")
        self.assertEqual(normalize_name("[::0001]"), "::1")


class ExpiryTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        write_pair(self.path("fresh"), ["fresh.example"], days=90)
        write_pair(self.path("soon"), ["soon.example"], days=5)
        write_pair(self.path("expired"), ["expired.example"], days=-2)
        self.store_ = self.store()
        self.store_.add_directory(self.root)

    def test_logged_on_load(self) -> None:
        [info] = [m for m in self.messages(LogLevel.info) if "fresh" in m]
        self.assertIn("fresh.example", info)
        self.assertIn("90.0 days left", info)
        [warning] = self.messages(LogLevel.warn)
        self.assertIn("soon.example", warning)
        self.assertIn("5.0 days left", warning)
        [error] = self.messages(LogLevel.error)
        self.assertIn("expired.example", error)
        self.assertIn("EXPIRED", error)

    def test_expiring_within(self) -> None:
        names = {c.directory for c in self.store_.expiring_within(14)}
        self.assertEqual(names, {self.path("soon"), self.path("expired")})
        self.clock.advance(80 * 86400)
        self.assertEqual(len(self.store_.expiring_within(14)), 3)

    def test_expired_certificate_is_still_served(self) -> None:
        self.assertTrue(self.store_.covers("expired.example"))


class ReloadTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.mount = self.path("secret")
        self.v1 = write_kubernetes_version(self.mount, "2026_v1", ["a.example"])
        self.store_ = self.store()
        self.store_.add_directory(self.root)

    def served(self) -> x509.Certificate | None:
        chosen = self.store_.choose("a.example")
        return None if chosen is None else chosen.certificate

    def test_kubernetes_layout_loads(self) -> None:
        self.assertEqual(self.served(), self.v1)
        self.assertFalse(self.store_.changed())

    def test_data_swap_is_detected_and_served(self) -> None:
        generation = self.store_.generation
        v2 = write_kubernetes_version(self.mount, "2026_v2", ["a.example"])
        shutil.rmtree(os.path.join(self.mount, "..2026_v1"))
        self.assertTrue(self.store_.changed())
        report = self.store_.reload()
        self.assertEqual(report.loaded, (self.mount,))
        self.assertEqual(self.served(), v2)
        self.assertGreater(self.store_.generation, generation)
        self.assertFalse(self.store_.changed())

    def test_broken_swap_keeps_the_old_pair(self) -> None:
        write_kubernetes_version(self.mount, "2026_v2", ["a.example"], mismatched=True)
        self.assertTrue(self.store_.changed())
        report = self.store_.reload()
        self.assertEqual([d for d, _ in report.failed], [self.mount])
        self.assertEqual(self.served(), self.v1)
        [message] = self.messages(LogLevel.error)
        self.assertIn("Keeping the previous", message)
        self.assertIn(self.mount, message)
        # The failure is not retried (nor re-logged) until the files change.
        self.assertFalse(self.store_.changed())
        self.assertEqual(self.store_.reload(), type(report)())
        v3 = write_kubernetes_version(self.mount, "2026_v3", ["a.example"])
        self.store_.reload()
        self.assertEqual(self.served(), v3)

    def test_files_vanishing_keep_the_old_pair(self) -> None:
        os.remove(os.path.join(self.mount, "tls.crt"))
        os.remove(os.path.join(self.mount, "tls.key"))
        report = self.store_.reload()
        self.assertEqual([d for d, _ in report.failed], [self.mount])
        self.assertEqual(self.served(), self.v1)

    def test_unchanged_reload_does_nothing_unless_forced(self) -> None:
        generation = self.store_.generation
        self.assertFalse(self.store_.reload().changed)
        self.assertEqual(self.store_.generation, generation)
        before = self.store_.choose("a.example")
        self.assertEqual(self.store_.reload(force=True).loaded, (self.mount,))
        self.assertIsNot(self.store_.choose("a.example"), before)

    def test_new_and_removed_secrets(self) -> None:
        write_pair(self.path("second"), ["b.example"])
        self.assertTrue(self.store_.changed())
        self.assertEqual(self.store_.reload().loaded, (self.path("second"),))
        self.assertTrue(self.store_.covers("b.example"))
        shutil.rmtree(self.path("second"))
        self.assertTrue(self.store_.changed())
        self.assertEqual(self.store_.reload().removed, (self.path("second"),))
        self.assertFalse(self.store_.covers("b.example"))
        self.assertTrue(self.store_.covers("a.example"))

    def test_fingerprint_follows_symlinks(self) -> None:
        before = self.store_.fingerprint()
        write_kubernetes_version(self.mount, "2026_v2", ["a.example"])
        after = self.store_.fingerprint()
        self.assertNotEqual(before, after)
        [(directory, (certificate_identity, _))] = after
        self.assertEqual(directory, self.mount)
        assert certificate_identity is not None
        self.assertIn("..2026_v2", certificate_identity[0])
