"""crypt32.dll: the certificate context WinHTTP presents as the TLS client certificate.

WinHTTP signs the TLS handshake with whatever key the certificate context carries, so a KeyGuard key
(which never leaves CNG) is attached to the context as ``CERT_NCRYPT_KEY_HANDLE_PROP_ID``.

**Ownership of the attached key handle.** The property *borrows* the handle. Microsoft documents a
release-on-final-free only for ``CERT_KEY_PROV_HANDLE_PROP_ID`` / ``CERT_KEY_CONTEXT_PROP_ID`` (the
``hCryptProv`` "is implicitly released ... on the final freeing of the CERT_CONTEXT" unless
``CERT_STORE_NO_CRYPT_RELEASE_FLAG``); for ``CERT_NCRYPT_KEY_HANDLE_PROP_ID`` it says only that the
property "sets the NCRYPT_KEY_HANDLE for the certificate private key", and handing the handle over is
the job of the separate ``CERT_NCRYPT_KEY_HANDLE_TRANSFER_PROP_ID`` (99). (learn.microsoft.com,
"CertSetCertificateContextProperty function (wincrypt.h)".) So: the key object stays the handle's one
owner, :class:`CertContext` keeps a reference to that owner so the key outlives the context, and freeing
the context never frees the key. The Linux fake implements exactly this and the tests check it.
"""

from __future__ import annotations

import struct
import threading
from types import TracebackType
from typing import Any, Optional

from ._errors import NativeCallError, NativeError
from ._loader import last_error, load
from ._winapi import ffi

X509_ASN_ENCODING = 0x00000001
PKCS_7_ASN_ENCODING = 0x00010000
CERT_NCRYPT_KEY_HANDLE_PROP_ID = 78
#: Our contexts live in no persisted store; say so, so that nothing is ever written anywhere.
CERT_SET_PROPERTY_INHIBIT_PERSIST_FLAG = 0x40000000

ERROR_INVALID_PARAMETER = 87
ERROR_MORE_DATA = 234
E_INVALIDARG = 0x80070057
CRYPT_E_NOT_FOUND = 0x80092004
CRYPT_E_ASN1_BADTAG = 0x8009310B

#: Error code -> name, for messages.
CRYPT32_ERROR_NAMES: dict[int, str] = {
    8: "ERROR_NOT_ENOUGH_MEMORY",
    ERROR_INVALID_PARAMETER: "ERROR_INVALID_PARAMETER",
    ERROR_MORE_DATA: "ERROR_MORE_DATA",
    E_INVALIDARG: "E_INVALIDARG",
    CRYPT_E_NOT_FOUND: "CRYPT_E_NOT_FOUND",
    CRYPT_E_ASN1_BADTAG: "CRYPT_E_ASN1_BADTAG",
}

#: A property may grow between the two passes; retry this many times.
_SIZE_RETRIES = 3


class Crypt32Error(NativeCallError):
    """A crypt32 call failed; ``code`` is its ``GetLastError()`` value."""

    def __init__(self, function: str, code: int) -> None:
        super().__init__(function, code, CRYPT32_ERROR_NAMES)


class CertContext:
    """Owns one ``PCCERT_CONTEXT`` (one reference); ``close()`` frees it exactly once.

    ``key_owner``: the object that owns a key handle attached with :meth:`bind_ncrypt_key`; it is kept
    referenced for the context's lifetime because the context only borrows the handle.
    """

    __slots__ = ("_key_owner", "_lib", "_lock", "_ptr")

    def __init__(self, lib: Any, ptr: Any) -> None:
        if ptr == ffi.NULL:
            raise ValueError("a CertContext needs a non-NULL PCCERT_CONTEXT")
        self._lib = lib
        self._ptr: Any = ptr
        self._key_owner: Optional[object] = None
        self._lock = threading.Lock()

    @classmethod
    def from_der(cls, crypt32_path: str, der: bytes) -> CertContext:
        """A new context over a DER X.509 certificate (crypt32 copies the bytes)."""
        lib = load(crypt32_path)
        blob = ffi.from_buffer("uint8_t[]", der)
        ptr = lib.CertCreateCertificateContext(X509_ASN_ENCODING | PKCS_7_ASN_ENCODING, blob, len(der))
        if ptr == ffi.NULL:
            raise Crypt32Error("CertCreateCertificateContext", last_error())
        return cls(lib, ptr)

    @classmethod
    def adopt(cls, crypt32_path: str, ptr: Any) -> CertContext:
        """Take ownership of a context another API returned with a reference for us (e.g. WinHTTP's
        ``WINHTTP_OPTION_SERVER_CERT_CONTEXT``)."""
        return cls(load(crypt32_path), ffi.cast("PCCERT_CONTEXT", ptr))

    @property
    def ptr(self) -> Any:
        """The ``PCCERT_CONTEXT`` for a native call; raises once closed."""
        ptr = self._ptr
        if ptr is None:
            raise NativeError("the certificate context is closed")
        return ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None

    @property
    def der(self) -> bytes:
        """The DER encoding the context holds."""
        ptr = self.ptr
        return bytes(ffi.buffer(ptr.pbCertEncoded, ptr.cbCertEncoded))

    def bind_ncrypt_key(self, key_handle: int, key_owner: object) -> None:
        """Attach a CNG key handle as the certificate's private key (``CERT_NCRYPT_KEY_HANDLE_PROP_ID``).

        The context borrows the handle (see the module docstring); ``key_owner`` must keep it open and is
        kept referenced here until :meth:`close`, so the key cannot be closed under the context.
        """
        if not key_handle:
            raise ValueError("a CNG key handle is required")
        value = ffi.new("uintptr_t *", key_handle)
        ok = self._lib.CertSetCertificateContextProperty(
            self.ptr, CERT_NCRYPT_KEY_HANDLE_PROP_ID, CERT_SET_PROPERTY_INHIBIT_PERSIST_FLAG, value
        )
        if not ok:
            raise Crypt32Error("CertSetCertificateContextProperty", last_error())
        self._key_owner = key_owner

    def get_property(self, prop_id: int) -> Optional[bytes]:
        """A property's bytes (two-pass size query), or None when the context does not have it."""
        size = ffi.new("uint32_t *")
        if not self._lib.CertGetCertificateContextProperty(self.ptr, prop_id, ffi.NULL, size):
            code = last_error()
            if code == CRYPT_E_NOT_FOUND:
                return None
            raise Crypt32Error("CertGetCertificateContextProperty", code)
        for _ in range(_SIZE_RETRIES):
            buf = ffi.new("uint8_t[]", max(int(size[0]), 1))
            if self._lib.CertGetCertificateContextProperty(self.ptr, prop_id, buf, size):
                return bytes(ffi.buffer(buf, size[0]))
            code = last_error()
            if code == CRYPT_E_NOT_FOUND:
                return None
            if code != ERROR_MORE_DATA:
                raise Crypt32Error("CertGetCertificateContextProperty", code)
        raise Crypt32Error("CertGetCertificateContextProperty", ERROR_MORE_DATA)

    def ncrypt_key_handle(self) -> Optional[int]:
        """The key handle attached as ``CERT_NCRYPT_KEY_HANDLE_PROP_ID``, or None."""
        raw = self.get_property(CERT_NCRYPT_KEY_HANDLE_PROP_ID)
        if raw is None:
            return None
        fmt = {4: "<I", 8: "<Q"}.get(len(raw))
        if fmt is None:
            raise Crypt32Error("CertGetCertificateContextProperty", ERROR_INVALID_PARAMETER)
        return int(struct.unpack(fmt, raw)[0])

    def store_certificates(self) -> list[bytes]:
        """DER of every certificate in the context's store, in store order.

        For the server certificate WinHTTP returns, the store holds what the server sent in the
        handshake (leaf and intermediates). Empty when the context is in no store.
        """
        store = self.ptr.hCertStore
        if store == ffi.NULL:
            return []
        found: list[bytes] = []
        current = ffi.NULL
        try:
            while True:
                # Frees `current` (documented) and returns the next context with a reference for us.
                current = self._lib.CertEnumCertificatesInStore(store, current)
                if current == ffi.NULL:
                    code = last_error()
                    if code != CRYPT_E_NOT_FOUND:
                        raise Crypt32Error("CertEnumCertificatesInStore", code)
                    return found
                found.append(bytes(ffi.buffer(current.pbCertEncoded, current.cbCertEncoded)))
        finally:
            if current != ffi.NULL:  # left the loop early: the last context is still ours
                self._lib.CertFreeCertificateContext(current)

    def close(self) -> None:
        """Free the context once; the attached key (borrowed) stays open with its owner."""
        with self._lock:
            ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self._lib.CertFreeCertificateContext(ptr)  # documented to always return TRUE
        self._key_owner = None

    def __enter__(self) -> CertContext:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CertContext({'closed' if self.closed else 'open'})"
