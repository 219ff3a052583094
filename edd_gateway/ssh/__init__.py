"""
The SSH door: users log in as C{<container-id>} or C{<user>.<container-id>}
with a key they uploaded, and the gateway relays their channels (shell,
exec, sftp, C{ssh -L}) to the container's own sshd, which it logs in to with
its client key after checking the container's pinned host key.

L{build_ssh_factory} makes the protocol factory for C{--ssh-listen} and for
the sniffer; L{HostKeyPins} is the pin store interface the container sources
implement.  The pieces: C{username} (the name grammar), C{hostkey} (key
files), C{pins} (host key pins), C{pinning} (C{--ssh-host-key-policy}: how
long a pin holds), C{signatures} (the signature algorithms accepted and
offered), C{auth} (who may log in), C{upstream} (the container
side), C{connection} and C{relay} (channels), C{keepalive}, C{factory}
(wiring), C{algorithms} (the key exchanges, ciphers and MACs both sides
offer, and C{--ssh-kex}/C{--ssh-ciphers}/C{--ssh-macs}), C{packet} (the
packet protection), C{keyset} (an agreed cipher's protection),
C{transport_crypto} (the seam that puts it and strict key exchange under
Conch), C{client_crypto} (the client side's additions to it, the hybrid key
exchange's among them) and C{conch_internals} (what the seam relies on).
"""

from edd_gateway.ssh.auth import ContainerKeyChecker, GatewayLogin, LoginRefused
from edd_gateway.ssh.factory import (
    DEFAULT_CLIENT_KEY,
    DEFAULT_HOST_KEY,
    GatewaySSHFactory,
    SSHSettings,
    build_ssh_factory,
)
from edd_gateway.ssh.hostkey import KeyFileError, load_host_keys, load_or_create_key, public_text
from edd_gateway.ssh.pinning import HostKeyPolicy, RunWatch
from edd_gateway.ssh.pins import HostKeyPins, MemoryHostKeyPins
from edd_gateway.ssh.signatures import SignaturePolicy
from edd_gateway.ssh.username import InvalidUsername, SSHTarget, parse_ssh_username

__all__ = [
    "DEFAULT_CLIENT_KEY", "DEFAULT_HOST_KEY", "ContainerKeyChecker", "GatewayLogin", "GatewaySSHFactory", "HostKeyPins", "HostKeyPolicy", "InvalidUsername", "KeyFileError",
    "LoginRefused", "MemoryHostKeyPins", "RunWatch", "SSHSettings", "SignaturePolicy", "SSHTarget", "build_ssh_factory", "load_host_keys",
    "load_or_create_key", "parse_ssh_username", "public_text",
]
