"""
The command line of ``twistd edd-gateway``, one group per concern: the
process and its listeners, the HTTP proxy, TLS, the live state, container
routing and SSH.  Each L{OptionGroup} holds its options and the check that
validates (and parses) their values once twistd has read them.

L{edd_gateway.tap.Options} is their sum, with admission's group
(L{edd_gateway.front.admission.OPTIONS}) and the repeatable options, which
twistd wants as C{opt_} methods.  A group's check reads and writes the
options as a mapping, so it can be tested on a plain dictionary too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.python.usage import UsageError

from edd_gateway.front.listeners import check_endpoint
from edd_gateway.http.settings import parse_networks
from edd_gateway.issuance.options import ACME, check_acme
from edd_gateway.net.proxyprotocol import parse_version as proxy_protocol_version
from edd_gateway.routes.containers import ADDRESS_MODES, DEFAULT_SERVICE_DNS, EXTERNAL_IP, ContainerAddressing
from edd_gateway.routes.containers import normalize_container_domain, parse_port_map, parse_port_range
from edd_gateway.ssh import DEFAULT_CLIENT_KEY, DEFAULT_HOST_KEY
from edd_gateway.ssh import algorithms as ssh_algorithms
from edd_gateway.ssh.pinning import HostKeyPolicy, parse_host_key_policy
from edd_gateway.state.localfile import DEFAULT_STATE_FILE
from edd_gateway.state.service import DEFAULT_RESYNC_INTERVAL
from edd_gateway.tls.service import DEFAULT_CHECK_INTERVAL, DEFAULT_DEV_CERT_DIR
from edd_gateway.tls.tickets import DEFAULT_ROTATION as DEFAULT_TICKET_ROTATION

__all__ = ["DEFAULT_ADMIN", "DEFAULT_LISTEN", "GROUPS", "OptionGroup"]

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
#: Loopback only by default: the admin endpoint is for the node's probes and scrapers.
DEFAULT_ADMIN = "tcp:9180:interface=127.0.0.1"


@dataclass(frozen=True)
class OptionGroup:
    """Options of one concern, in twistd's C{optParameters} and C{optFlags} shapes, and their check."""

    parameters: list[list[Any]]
    flags: list[list[Any]]
    check: Callable[[Any], None]


def _check_process(config: Any) -> None:
    if config["sniff-default"] not in ("close", "http", "tls", "ssh"):
        raise UsageError("--sniff-default must be close, http, tls or ssh")
    if config["drain-timeout"] < 0:
        raise UsageError("--drain-timeout must not be negative")
    if config["admin"].lower() == "none":
        config["admin"] = None
    else:
        check_endpoint("--admin", config["admin"])


PROCESS = OptionGroup([
    ["routes", "r", None, "The routes file (YAML, or the gateway-routes ConfigMap manifest).", str],
    ["sniff-timeout", None, 3.0, "Seconds to wait for a client's first bytes.", float],
    ["sniff-default", None, "close", "What a silent client gets after --sniff-timeout: close, http, tls or ssh."],
    ["reload-interval", None, 1.0, "Seconds between checks of the routes file for changes.", float],
    ["admin", None, DEFAULT_ADMIN, "The admin endpoint: /healthz, /readyz, /metrics ('none': no endpoint)."],
    ["drain-timeout", None, 30.0, "Seconds connections get to finish after SIGTERM before they are closed.",
     float],
], [
    ["no-access-log", None, "Log no line per HTTP request, tunnel and SSH session."],
], _check_process)


def _check_proxy(config: Any) -> None:
    try:
        config["trusted-proxy"] = parse_networks(config["trusted-proxy"])
    except ValueError as problem:
        raise UsageError(f"--trusted-proxy: {problem}") from None
    main_site = config["main-site"]
    if main_site is not None:
        parts = urlsplit(main_site)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"--main-site must be an http:// or https:// URL, not {main_site!r}")
    for name in ("body-buffer-size", "body-streams-per-client"):
        if config[name] < 0:
            raise UsageError(f"--{name} must not be negative")
    if config["body-timeout"] <= 0:
        raise UsageError("--body-timeout must be more than 0 seconds")
    for name in ("websocket-idle-timeout", "tcp-idle-timeout"):
        if config[name] is None:
            config[name] = config["tunnel-idle-timeout"] if config["tunnel-idle-timeout"] is not None else 3600.0


PROXY = OptionGroup([
    ["header-timeout", None, 10.0, "Seconds for a request head to arrive (408 after).", float],
    ["keepalive-timeout", None, 60.0, "Seconds an idle keep-alive client connection is kept.", float],
    ["connect-timeout", None, 5.0, "Seconds to connect to a backend (504 after).", float],
    ["response-timeout", None, 60.0, "Seconds for a backend to start answering (504 after).", float],
    ["websocket-idle-timeout", None, None, "Seconds a WebSocket tunnel or a streamed response may move "
     "nothing (default 3600).", float],
    ["tcp-idle-timeout", None, None, "Seconds a TCP tunnel (TLS passthrough, raw TCP on container ports) may move nothing "
     "(default 3600).", float],
    ["tunnel-idle-timeout", None, None, "Deprecated: sets both --websocket-idle-timeout and --tcp-idle-timeout.",
     float],
    ["max-request-line", None, 8192, "Longest request target accepted, in bytes (414 beyond).", int],
    ["max-header-size", None, 32768, "Largest request head accepted, in bytes (431 beyond).", int],
    ["max-headers", None, 100, "Most request header fields accepted (431 beyond).", int],
    ["max-body-size", None, 0, "Largest request body accepted, in bytes; 0 is unlimited (413 beyond).", int],
    ["pool-max-idle", None, 64, "Idle keep-alive connections kept per backend.", int],
    ["pool-max-per-backend", None, 512, "Connections (busy and idle) per backend.", int],
    ["pool-idle-timeout", None, 60.0, "Seconds an idle backend connection is kept.", float],
    ["body-buffer-size", None, 65536, "Request bodies up to this many bytes are read whole before a backend "
     "connection is taken; 0 streams every body.", int],
    ["body-timeout", None, 30.0, "Seconds a request body may go without a byte before it gets 408.", float],
    ["body-streams-per-client", None, 8, "Backend connections one client address may hold per backend while "
     "its larger request bodies are still arriving (429 beyond); 0 is no cap.", int],
    ["main-site", None, None, "A URL where requests whose Host is an IP address no route names are redirected."],
    ["h2-max-streams", None, 128, "HTTP/2 streams a client may have open at once on one connection "
     "(SETTINGS_MAX_CONCURRENT_STREAMS).", int],
    ["h2-max-resets", None, 200, "HTTP/2 streams a client may reset within 10 s before the connection gets "
     "GOAWAY ENHANCE_YOUR_CALM (the rapid-reset attack, CVE-2023-44487).", int],
], [
    ["allow-underscore-headers", None, "Pass request header names with an underscore to backends "
     "(dropped by default: CGI/WSGI backends read Transfer_Encoding as Transfer-Encoding)."],
    ["h2c-prior-knowledge", None, "Serve HTTP/2 cleartext to plain-port clients that start with the HTTP/2 "
     "preface (gRPC clients without TLS), for protocol: grpc and h2c routes only; without it the preface is "
     "answered GOAWAY HTTP_1_1_REQUIRED."],
], _check_proxy)


def _check_tls(config: Any) -> None:
    if config["tls-ticket-rotation"] <= 0:
        raise UsageError("--tls-ticket-rotation must be positive")
    if config["no-tls-tickets"] and config["tls-ticket-keys"] is not None:
        raise UsageError("--no-tls-tickets and --tls-ticket-keys: give one or the other")


TLS = OptionGroup([
    ["default-cert", None, None, "The name whose certificate TLS clients without SNI or with an unknown one get."],
    ["dev-cert-dir", None, DEFAULT_DEV_CERT_DIR,
     "Without --tls-dir: where the self-signed development certificate is kept (made on first start)."],
    ["cert-check-interval", None, DEFAULT_CHECK_INTERVAL,
     "Seconds between checks of the --tls-dir directories for renewed certificates.", float],
    ["tls-hello-timeout", None, 10.0, "Seconds for a TLS client to send its whole ClientHello.", float],
    ["tls-ticket-keys", None, None, "A file of TLS session ticket keys shared by the replicas (HAProxy's "
     "tls-ticket-keys format: base64 48- or 80-byte keys, one a line, oldest first), re-read when it changes."],
    ["tls-ticket-rotation", None, DEFAULT_TICKET_ROTATION, "Without --tls-ticket-keys: seconds between two "
     "in-memory ticket keys (the 2 previous ones still decrypt).", float],
    ["tls-handshake-timeout", None, 10.0, "Seconds for a terminated TLS client to finish the handshake "
     "after its ClientHello.", float],
], [
    ["no-tls-tickets", None, "Issue no TLS session tickets (TLS 1.2 resumes by session id, TLS 1.3 by "
     "stateful tickets, on this replica only)."],
    ["no-http2", None, "Speak HTTP/1.1 only inside terminated TLS (no ALPN h2)."],
], _check_tls)


def _check_state(config: Any) -> None:
    source = {"database": "--database", "compute-database": "--compute-database"}
    if config["database"] is None:
        config["database"] = os.environ.get("DATABASE_URL") or None
        source["database"] = "DATABASE_URL"
    for name in ("database", "compute-database"):
        if config[name] is not None:
            _check_dsn(source[name], config[name])
    if config["database"] is None:
        for name in ("compute-database", "nats"):
            if config[name] is not None:
                raise UsageError(f"--{name} needs --database (or DATABASE_URL)")
    elif config["containers"] is not None:
        raise UsageError("--containers is for running without a database: give one or the other")
    if config["poll-interval"] <= 0 or config["resync-interval"] < 0:
        raise UsageError("--poll-interval must be positive and --resync-interval not negative")


#: libpq's values the gateway can check before connecting (the rest libpq
#: checks at the first connection): what each must be.
_DSN_INTEGERS = {"port": (1, 65535), "connect_timeout": (0, 2**31 - 1), "keepalives_idle": (0, 2**31 - 1)}
_DSN_CHOICES = {"sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")}


def _check_dsn(source: str, dsn: str) -> None:
    """
    Refuse a DSN libpq would only refuse at the first connection, and go on
    retrying: C{source} (C{--database}, C{DATABASE_URL}) and the key at fault
    in the message, never the value of another key (the password).
    """
    from psycopg2.extensions import parse_dsn

    try:
        keys = parse_dsn(dsn)
    except Exception:
        # libpq's reason quotes pieces of the DSN, which may hold a password.
        raise UsageError(f"{source} is not a PostgreSQL DSN (key=value ...) or postgresql:// URL") from None
    for key, (low, high) in _DSN_INTEGERS.items():
        for value in keys.get(key, "").split(",") if key in keys else ():
            if not (value.isdigit() and low <= int(value) <= high):
                raise UsageError(f"{source}: {key} {value!r} is not a number from {low} to {high}")
    for key, choices in _DSN_CHOICES.items():
        if key in keys and keys[key] not in choices:
            raise UsageError(f"{source}: {key} {keys[key]!r} is not one of {', '.join(choices)}")


STATE = OptionGroup([
    ["database", None, None, "PostgreSQL DSN or URL: containers, static_routes (default: $DATABASE_URL)."],
    ["compute-database", None, None, "DSN of the compute service's tables when not in --database's database."],
    ["nats", None, None, "NATS server URL(s), comma-separated: container events (needs --database)."],
    ["nats-durable", None, "gateway-service", "The JetStream durable consumer on the COMPUTE stream; a replica "
     "that finds it bound to another uses plain subscriptions."],
    ["poll-interval", None, 5.0, "Seconds between full reads of PostgreSQL while no feed (the database's "
     "change feed, NATS) is active.", float],
    ["resync-interval", None, DEFAULT_RESYNC_INTERVAL, "Seconds between full reads while a feed is active, "
     "a net for a silent feed (0: never).", float],
    ["containers", None, None, "Without --database: a YAML file of containers, re-read when it changes."],
    ["state-file", None, DEFAULT_STATE_FILE, "Without --database: where pinned container SSH host keys are kept."],
], [], _check_state)


def _check_containers(config: Any) -> None:
    try:
        if config["container-domain"] is not None:
            config["container-domain"] = normalize_container_domain(config["container-domain"])
        config["port-map"] = parse_port_map(config["port-map"])
        ports = config["container-ports"]
        config["container-ports"] = parse_port_range(ports) if ports is not None else range(0)
    except ValueError as problem:
        raise UsageError(f"container routing: {problem}") from None
    if config["container-address"] not in ADDRESS_MODES:
        raise UsageError(f"--container-address must be {' or '.join(ADDRESS_MODES)}")
    try:
        ContainerAddressing(config["container-address"], config["container-service-dns"])
    except ValueError as problem:
        raise UsageError(f"--container-service-dns: {problem}") from None
    if config["container-address"] == EXTERNAL_IP and config["container-service-dns"] != DEFAULT_SERVICE_DNS:
        raise UsageError("--container-service-dns needs --container-address service-dns")


CONTAINERS = OptionGroup([
    ["container-domain", None, None, "Route <container-id>.DOMAIN (Host or SNI) to that container."],
    ["container-ports", None, None, "Open sniffing listeners on this port range, e.g. 8000-8999."],
    ["container-interface", None, "127.0.0.1", "The address --container-ports listeners bind (0.0.0.0, ::)."],
    ["container-address", None, EXTERNAL_IP, "Where containers are dialled: external-ip (the row's "
     "external_ip) or service-dns (--container-service-dns), on the rule's target port or the sshd port."],
    ["container-service-dns", None, DEFAULT_SERVICE_DNS, "With --container-address service-dns: the host "
     "name, from {namespace}, {id} and {user_id}."],
    ["container-proxy-protocol", None, None, "PROXY protocol header (none, v1 or v2; default none) first on "
     "TLS passed through to containers.", proxy_protocol_version],
], [], _check_containers)


def _check_ssh(config: Any) -> None:
    if not 1 <= config["ssh-port"] <= 65535:
        raise UsageError("--ssh-port must be a port (1-65535)")
    try:
        config["ssh-host-key-policy"] = parse_host_key_policy(config["ssh-host-key-policy"])
    except ValueError as problem:
        raise UsageError(f"--ssh-host-key-policy: {problem}") from None
    for name, kind in (("ssh-kex", "kex"), ("ssh-ciphers", "cipher"), ("ssh-macs", "mac")):
        if isinstance(config[name], str):
            try:
                config[name] = ssh_algorithms.parse_algorithm_list(kind, config[name])
            except ValueError as problem:
                raise UsageError(str(problem)) from None


def _offered(names: Sequence[bytes]) -> str:
    return ",".join(name.decode() for name in names)


SSH = OptionGroup([
    ["ssh-host-key", None, DEFAULT_HOST_KEY, "The gateway's Ed25519 SSH host key (generated when missing)."],
    ["ssh-rsa-host-key", None, None, "An RSA SSH host key too, for old clients (generated when missing)."],
    ["ssh-client-key", None, DEFAULT_CLIENT_KEY, "The key the gateway logs in to containers with."],
    ["ssh-port", None, 22, "The port of the containers' sshd.", int],
    ["ssh-connect-timeout", None, 10.0, "Seconds to connect and log in to a container's sshd.", float],
    ["ssh-login-grace-time", None, 30.0, "Seconds a user has, from connecting, to log in.", float],
    ["ssh-host-key-policy", None, HostKeyPolicy.PIN_PER_RUN.value, "Containers' SSH host keys: pin-per-run "
     "(pinned while a container runs, afresh when it starts again), pin (for good) or ignore (not checked)."],
    ["ssh-kex", None, None, "SSH key exchanges offered, comma-separated, preferred first (a subset of "
     + _offered(ssh_algorithms.KEX) + ")."],
    ["ssh-ciphers", None, None, "SSH ciphers offered, comma-separated, preferred first (a subset of "
     + _offered(ssh_algorithms.CIPHERS) + ")."],
    ["ssh-macs", None, None, "SSH MACs offered with the CTR ciphers, comma-separated, preferred first (a "
     "subset of " + _offered(ssh_algorithms.MACS) + ")."],
    ["ssh-proxy-protocol", None, None, "PROXY protocol header (none, v1 or v2; default none) first on the "
     "connection to containers' sshd (stock OpenSSH reads none).", proxy_protocol_version],
], [
    ["ssh-allow-sha1-rsa", None, "Accept SHA-1 ssh-rsa signatures from users' RSA keys, and offer ssh-rsa "
     "for an RSA host key (off: rsa-sha2-256/512 only)."],
], _check_ssh)

#: Custom domains' certificates (L{edd_gateway.issuance.options}).
ISSUANCE = OptionGroup(ACME, [], check_acme)

#: Every group, in the order their checks run (the first problem found is the one reported).
GROUPS = (PROCESS, PROXY, TLS, STATE, CONTAINERS, SSH, ISSUANCE)
