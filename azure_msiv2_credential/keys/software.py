"""An in-memory RSA binding key held by ``cryptography``: for hosts without KeyGuard and for the emulator."""

from __future__ import annotations

import hashlib
import threading
from typing import Optional

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ._base import PSS_SALT_LENGTH, RSA_KEY_BITS, RSA_PUBLIC_EXPONENT, BindingStrength

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)


class SoftwareKey:
    """An RSA-2048 key that lives only in this process's memory.

    There is no export method: the only way out of the object is :meth:`_private_key_for_tls`, which the
    TLS layer uses to load the key into an ``ssl.SSLContext`` without a clear-text file.
    """

    def __init__(self, private_key: Optional[rsa.RSAPrivateKey] = None) -> None:
        self._key = private_key or rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)
        spki = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._key_id = "software:" + hashlib.sha256(spki).hexdigest()[:16]

    @property
    def strength(self) -> BindingStrength:
        return "software"

    @property
    def key_id(self) -> str:
        return self._key_id

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def sign_pss_sha256(self, data: bytes) -> bytes:
        return self._key.sign(data, _PSS, hashes.SHA256())

    def _private_key_for_tls(self) -> rsa.RSAPrivateKey:
        """For ``transport``'s SSLContext loader only; never log, serialise to disk or hand it on."""
        return self._key

    def __repr__(self) -> str:
        return f"SoftwareKey(key_id={self._key_id!r})"


class SoftwareKeyProvider:
    """Makes one in-memory RSA-2048 key on first use and keeps it for the provider's lifetime.

    The key is never exported or written to disk; it dies with the process. Use it where KeyGuard is not
    available (Linux, the emulator) and a software-strength binding is acceptable.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Optional[SoftwareKey] = None

    @property
    def strength(self) -> BindingStrength:
        return "software"

    def get_key(self) -> SoftwareKey:
        key = self._key
        if key is None:
            with self._lock:
                if self._key is None:
                    self._key = SoftwareKey()
                key = self._key
        return key

    def close(self) -> None:
        """Nothing native to release; the key stays so bound certificates keep working."""

    def __repr__(self) -> str:
        return "SoftwareKeyProvider()"
