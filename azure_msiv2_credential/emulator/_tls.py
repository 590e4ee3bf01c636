"""Server-side TLS contexts whose private key never reaches a filesystem in clear.

``ssl.SSLContext.load_cert_chain`` only reads files. On Linux the PEM goes into an anonymous
memory file (``memfd_create``) opened through ``/proc/self/fd``; elsewhere into a temporary file
whose key is encrypted with a random one-time password, deleted right after loading.
"""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8


def memfd_available() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def load_cert_chain_in_memory(context: ssl.SSLContext, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
    """Load ``cert`` and ``key`` into ``context`` without a clear key on disk."""
    cert_pem = cert.public_bytes(_PEM)
    if memfd_available():
        fd = os.memfd_create("msiv2-emulator-tls", os.MFD_CLOEXEC)
        try:
            _write_all(fd, cert_pem + key.private_bytes(_PEM, _PKCS8, serialization.NoEncryption()))
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    password = secrets.token_urlsafe(32).encode()
    encrypted = key.private_bytes(_PEM, _PKCS8, serialization.BestAvailableEncryption(password))
    fd, path = tempfile.mkstemp(prefix="msiv2-emulator-", suffix=".pem")
    try:
        try:
            _write_all(fd, cert_pem + encrypted)
        finally:
            os.close(fd)
        context.load_cert_chain(path, password=password)
    finally:
        os.unlink(path)


def server_context(
    cert: x509.Certificate, key: rsa.RSAPrivateKey, ca: x509.Certificate, verify_mode: ssl.VerifyMode
) -> ssl.SSLContext:
    """A TLS 1.2+ server context that verifies client certificates against ``ca`` only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain_in_memory(context, cert, key)
    context.verify_mode = verify_mode
    context.load_verify_locations(cadata=ca.public_bytes(_PEM).decode("ascii"))
    return context
