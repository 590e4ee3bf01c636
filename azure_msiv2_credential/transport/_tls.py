"""The one way a software binding speaks TLS: an ``ssl.SSLContext`` holding its certificate and key.

The token leg and the SDK transports share these contexts, so a binding has exactly one TLS identity.
A context is built once per (binding, trust setting) and reused for every connection: loading a CA bundle
and a key costs about as much as a handshake, so a new connection is cheaper than with per-connection
files (see ``bench/transport.py``).

``SSLContext.load_cert_chain`` reads only files, and the key must never reach a filesystem in clear
(DESIGN.md §6). On Linux the PEM goes into an anonymous memory file (``memfd_create``) read through
``/proc/self/fd``; elsewhere the key is encrypted with a random one-time password into a temporary file
that is deleted as soon as it has been loaded. Deleting is best effort (on Windows a scanner may hold the new
file open for a moment): a few short retries, then a WARNING naming the file; a file left behind holds only
the encrypted key, whose password is gone with this process, and never turns a loaded context into an error.
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
import tempfile
import threading
import time
import weakref
from typing import Union

import certifi  # a dependency of requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .._binding import Binding
from ..keys import SoftwareKey

#: azure-core's ``connection_verify``: ``True`` (system trust) or a CA bundle file or directory.
Verify = Union[bool, str]

_log = logging.getLogger(__name__)
#: Deleting the temporary key file: attempts and the pause between them.
_DELETE_ATTEMPTS = 5
_DELETE_PAUSE_S = 0.05

_lock = threading.Lock()
_binding_contexts: weakref.WeakKeyDictionary[Binding, dict[Verify, ssl.SSLContext]] = weakref.WeakKeyDictionary()
_plain_contexts: dict[Verify, ssl.SSLContext] = {}


def check_verify(verify: object) -> Verify:
    """Validate an azure-core ``connection_verify`` value; we never switch TLS verification off.

    ``None`` means the default (system trust), as it does for ``requests`` and aiohttp.
    """
    if verify is None:
        return True
    if verify is False:
        raise ValueError(
            "turning connection_verify off (False) is not supported: MSI v2 tokens are bound to TLS and verification "
            "is never switched off; pass the path of a CA bundle to trust a private CA"
        )
    if verify is True or isinstance(verify, str):
        return verify
    raise TypeError(f"connection_verify must be True or a CA bundle path, not {type(verify).__name__}")


def _new_context(verify: Verify) -> ssl.SSLContext:
    if isinstance(verify, str):
        if os.path.isdir(verify):
            context = ssl.create_default_context(capath=verify)
        else:
            context = ssl.create_default_context(cafile=verify)
    else:
        # The system's roots plus certifi's: what aiohttp and ``requests`` trust by default, together.
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=certifi.where())
    # create_default_context already requires TLS 1.2+ on current Pythons; say so for older ones.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def plain_ssl_context(verify: Verify = True) -> ssl.SSLContext:
    """A shared client context without a client certificate (requests that carry no bound token)."""
    verify = check_verify(verify)
    context = _plain_contexts.get(verify)
    if context is None:
        with _lock:
            context = _plain_contexts.get(verify)
            if context is None:
                context = _plain_contexts[verify] = _new_context(verify)
    return context


def ssl_context_for(binding: Binding, verify: Verify = True) -> ssl.SSLContext:
    """The client context presenting ``binding``'s certificate, built once and cached.

    Cached weakly by binding (bindings compare by identity), so a dropped binding frees its context.
    Raises ``ValueError`` when verification is turned off and ``TypeError`` for a key that is not a software key:
    a KeyGuard key cannot leave CNG and is used through WinHTTP instead.
    """
    verify = check_verify(verify)
    per_binding = _binding_contexts.get(binding)
    if per_binding is not None:
        context = per_binding.get(verify)
        if context is not None:
            return context
    key = binding.key
    if not isinstance(key, SoftwareKey):
        raise TypeError(f"a {binding.strength} binding key cannot be loaded into OpenSSL; use the WinHTTP transport")
    with _lock:
        per_binding = _binding_contexts.setdefault(binding, {})
        context = per_binding.get(verify)
        if context is None:
            context = _new_context(verify)
            _load_cert_chain(context, binding.certificate_der, key._private_key_for_tls())
            per_binding[verify] = context
    return context


def _load_cert_chain(context: ssl.SSLContext, certificate_der: bytes, key: rsa.RSAPrivateKey) -> None:
    """Load a certificate and its key into ``context`` without writing the key to disk in clear."""
    cert_pem = ssl.DER_cert_to_PEM_cert(certificate_der).encode("ascii")
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("msiv2-binding", os.MFD_CLOEXEC)
        try:
            _write_all(fd, cert_pem + _key_pem(key, serialization.NoEncryption()))
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    password = secrets.token_urlsafe(32)
    encrypted = _key_pem(key, serialization.BestAvailableEncryption(password.encode("ascii")))
    fd, path = tempfile.mkstemp(prefix="msiv2-", suffix=".pem")
    try:
        try:
            _write_all(fd, cert_pem + encrypted)
        finally:
            os.close(fd)
        context.load_cert_chain(path, password=password)
    finally:
        _delete_quietly(path)


def _delete_quietly(path: str) -> None:
    """Best-effort delete with a short retry; a failure is logged, never raised (it must not mask the
    result, nor the exception, of loading the key)."""
    for attempt in range(_DELETE_ATTEMPTS):
        try:
            os.unlink(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if attempt + 1 == _DELETE_ATTEMPTS:
                _log.warning(
                    "could not delete the temporary file %s (it holds only a password-encrypted key whose password "
                    "is not kept): %s",
                    path,
                    exc,
                )
                return
            time.sleep(_DELETE_PAUSE_S)


def _key_pem(key: rsa.RSAPrivateKey, encryption: serialization.KeySerializationEncryption) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
