"""
TLS termination: the certificate store (Kubernetes secret directories,
reload, SNI choice), the pyOpenSSL server connection creator built on it,
and the self-signed development certificate of the embedded default.
"""

from edd_gateway.tls.store import CertificateError, CertificateStore, LoadedCertificate

__all__ = ["CertificateError", "CertificateStore", "LoadedCertificate"]
