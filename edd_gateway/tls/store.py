"""
The certificate store: server certificates read from Kubernetes TLS secret
mounts and chosen by SNI.

It owns the set of configured directories (a secret directory, or a parent
with one sub-directory per secret), reloading them when their fingerprints
change, expiry reporting, and an immutable name index swapped in whole on
every change so that the handshake path only does dictionary lookups.  A
broken new pair never replaces a working one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from edd_gateway.tls.secret import (
    CERTIFICATE_FILE,
    KEY_FILE,
    CertificateError,
    LoadedCertificate,
    PairFingerprint,
    load_secret_directory,
    normalize_name,
    pair_fingerprint,
)

__all__ = [
    "DEFAULT_WARN_DAYS",
    "CertificateError",
    "CertificateStore",
    "LoadReport",
    "LoadedCertificate",
]

DEFAULT_WARN_DAYS = 14


@dataclass(frozen=True)
class LoadReport:
    """
    What one L{CertificateStore.add_directory} or L{CertificateStore.reload}
    did.

    @ivar loaded: secret directories whose pair was (re)loaded.
    @ivar failed: C{(directory, reason)} for pairs that could not be used;
        a previously loaded pair for that directory stays in service.
    @ivar removed: secret directories that disappeared, with their pairs.
    """

    loaded: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.loaded or self.removed)


def _is_secret_directory(path: str) -> bool:
    return any(
        os.path.lexists(os.path.join(path, name)) for name in (CERTIFICATE_FILE, KEY_FILE)
    )


def _secret_directories(root: str) -> list[str]:
    """
    The secret directories a configured directory stands for: itself when it
    holds the pair, else its sub-directories that do (skipping dot entries
    such as Kubernetes' C{..data} and C{..2026_...} versions).
    """
    if _is_secret_directory(root):
        return [root]
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return []
    children = (os.path.join(root, e) for e in entries if not e.startswith("."))
    return [c for c in children if os.path.isdir(c) and _is_secret_directory(c)]


@dataclass(frozen=True)
class _Index:
    """An immutable name -> certificate index; replaced whole, never edited."""

    exact: dict[str, LoadedCertificate]
    wildcard: dict[str, LoadedCertificate]
    default: LoadedCertificate | None

    def covering(self, name: str) -> LoadedCertificate | None:
        found = self.exact.get(name)
        if found is None:
            _, _, suffix = name.partition(".")
            found = self.wildcard.get(suffix) if suffix else None
        return found


_EMPTY_INDEX = _Index({}, {}, None)


class CertificateStore:
    """
    Certificates from secret directories, chosen by SNI.

    For a name, the first loaded certificate (in the order directories were
    added, sub-directories sorted by name) naming it exactly wins, then the
    first whose wildcard covers it, then the default: the certificate
    covering C{default_name} when given, else the first one from a directory
    added with C{default=True}, else the first one loaded.
    """

    def __init__(
        self,
        default_name: str | None = None,
        warn_days: float = DEFAULT_WARN_DAYS,
        clock: IReactorTime | None = None,
        log: Logger | None = None,
    ) -> None:
        self._default_name = None if default_name is None else normalize_name(default_name)
        self._warn_days = warn_days
        self._clock = clock
        self._log = Logger() if log is None else log
        self._roots: list[tuple[str, bool]] = []
        self._loaded: dict[str, LoadedCertificate] = {}
        self._attempted: dict[str, PairFingerprint] = {}
        self._index = _EMPTY_INDEX
        self._generation = 0

    @property
    def generation(self) -> int:
        """Incremented every time the set of served certificates changes."""
        return self._generation

    @property
    def default(self) -> LoadedCertificate | None:
        return self._index.default

    def certificates(self) -> tuple[LoadedCertificate, ...]:
        return tuple(self._loaded.values())

    def choose(self, server_name: str | None) -> LoadedCertificate | None:
        """The certificate to present for an SNI name (L{None}: no SNI)."""
        if server_name is None:
            return self._index.default
        return self.covering(server_name) or self._index.default

    def covering(self, name: str) -> LoadedCertificate | None:
        """The certificate naming C{name} exactly or by wildcard; L{None} when none does (the default aside)."""
        return self._index.covering(normalize_name(name))

    def covers(self, name: str) -> bool:
        """Whether some certificate names C{name} exactly or by wildcard."""
        return self.covering(name) is not None

    def expiring_within(self, days: float) -> tuple[LoadedCertificate, ...]:
        now = self._now()
        return tuple(c for c in self._loaded.values() if c.days_left(now) < days)

    def add_directory(self, path: str, default: bool = False) -> LoadReport:
        """
        Serve the secret directory C{path}, or each secret sub-directory of
        it, now and on every reload.

        @raise NotADirectoryError: when C{path} is not a directory.
        """
        if not os.path.isdir(path):
            raise NotADirectoryError(f"TLS directory {path} is not a directory")
        self._roots.append((path, default))
        report = self._load(self._scan_root(path), force=True)
        if not _secret_directories(path):
            self._log.warn("No tls.crt/tls.key pair under {path} yet", path=path)
        return report

    def reload(self, force: bool = False) -> LoadReport:
        """
        Re-scan every added directory and re-read each pair whose files
        changed (every pair when C{force}).
        """
        directories: list[str] = []
        for root, _ in self._roots:
            directories.extend(self._scan_root(root))
        return self._load(directories, force=force)

    def fingerprint(self) -> tuple[tuple[str, PairFingerprint], ...]:
        """The identities of every secret directory's pair, for polling."""
        return tuple(
            (directory, pair_fingerprint(directory))
            for root, _ in self._roots
            for directory in self._scan_root(root)
        )

    def changed(self) -> bool:
        """Whether a L{reload} would find something new to read or remove."""
        current = dict(self.fingerprint())
        known = set(self._attempted) | set(self._loaded)
        return set(current) != known or any(
            self._attempted.get(d) != f for d, f in current.items()
        )

    def _scan_root(self, root: str) -> list[str]:
        found = _secret_directories(root)
        # A known directory that still exists but no longer holds the pair is
        # kept as a candidate so that its failure is reported and its old
        # pair kept, instead of silently dropping the certificate.
        prefix = os.path.join(root, "")
        for directory in list(self._attempted):
            if (
                directory not in found
                and (directory == root or directory.startswith(prefix))
                and os.path.isdir(directory)
            ):
                found.append(directory)
        return found

    def _load(self, directories: Iterable[str], force: bool) -> LoadReport:
        loaded, failed = [], []
        candidates = list(dict.fromkeys(directories))
        for directory in candidates:
            fingerprint = pair_fingerprint(directory)
            if not force and self._attempted.get(directory) == fingerprint:
                continue
            self._attempted[directory] = fingerprint
            try:
                certificate = load_secret_directory(directory)
            except CertificateError as error:
                failed.append((directory, str(error)))
                self._log_failure(directory, str(error))
                continue
            self._loaded[directory] = certificate
            loaded.append(directory)
            self._log_loaded(certificate)
        removed = self._forget_missing()
        report = LoadReport(tuple(loaded), tuple(failed), tuple(removed))
        if report.changed:
            self._rebuild_index()
        return report

    def _forget_missing(self) -> list[str]:
        removed = []
        for directory in [d for d in self._attempted if not os.path.isdir(d)]:
            del self._attempted[directory]
            if self._loaded.pop(directory, None) is not None:
                removed.append(directory)
                self._log.info("TLS secret {directory} is gone", directory=directory)
        return removed

    def _ordered(self) -> list[LoadedCertificate]:
        """Loaded certificates in the order their directories were added."""
        order = {d: i for i, (d, _) in enumerate(self._roots)}

        def rank(certificate: LoadedCertificate) -> tuple[int, str]:
            for root, position in order.items():
                if certificate.directory == root or certificate.directory.startswith(
                    os.path.join(root, "")
                ):
                    return position, certificate.directory
            return len(order), certificate.directory

        return sorted(self._loaded.values(), key=rank)

    def _rebuild_index(self) -> None:
        exact: dict[str, LoadedCertificate] = {}
        wildcard: dict[str, LoadedCertificate] = {}
        ordered = self._ordered()
        for certificate in ordered:
            for name in certificate.names:
                exact.setdefault(name, certificate)
            for suffix in certificate.wildcard_suffixes:
                wildcard.setdefault(suffix, certificate)
        partial = _Index(exact, wildcard, None)
        self._index = _Index(exact, wildcard, self._pick_default(partial, ordered))
        self._generation += 1

    def _pick_default(
        self, index: _Index, ordered: list[LoadedCertificate]
    ) -> LoadedCertificate | None:
        if self._default_name is not None:
            chosen = index.covering(self._default_name)
            if chosen is None:
                self._log.warn(
                    "No certificate covers the default name {name}",
                    name=self._default_name,
                )
            return chosen
        designated = [root for root, default in self._roots if default]
        for certificate in ordered:
            if any(
                certificate.directory == root
                or certificate.directory.startswith(os.path.join(root, ""))
                for root in designated
            ):
                return certificate
        return ordered[0] if ordered else None

    def _now(self) -> datetime:
        if self._clock is None:
            return datetime.now(timezone.utc)
        return datetime.fromtimestamp(self._clock.seconds(), timezone.utc)

    def _log_loaded(self, certificate: LoadedCertificate) -> None:
        days = certificate.days_left(self._now())
        fields = dict(
            directory=certificate.directory,
            names=", ".join(certificate.display_names()),
            not_after=certificate.not_after.isoformat(),
            days=f"{days:.1f}",
        )
        if days < 0:
            self._log.error(
                "TLS certificate from {directory} for {names} EXPIRED on "
                "{not_after}",
                **fields,
            )
        elif days < self._warn_days:
            self._log.warn(
                "TLS certificate from {directory} for {names} expires soon: "
                "{not_after} ({days} days left)",
                **fields,
            )
        else:
            self._log.info(
                "Loaded TLS certificate from {directory} for {names}, valid "
                "until {not_after} ({days} days left)",
                **fields,
            )

    def _log_failure(self, directory: str, reason: str) -> None:
        if directory in self._loaded:
            self._log.error(
                "Keeping the previous TLS certificate for {directory}: {reason}",
                directory=directory,
                reason=reason,
            )
        else:
            self._log.error(
                "Cannot load TLS certificate from {directory}: {reason}",
                directory=directory,
                reason=reason,
            )
