"""crypt32.dll: the certificate context WinHTTP presents as the TLS client certificate.

WinHTTP signs the TLS handshake with whatever key the certificate context leads to, so the KeyGuard key
(which never leaves CNG) is attached to the context **by name only**: ``CERT_KEY_PROV_INFO_PROP_ID``
(:meth:`CertContext.bind_key_provider_info`), a ``CRYPT_KEY_PROV_INFO`` naming the key storage provider and
the persisted key, from which crypt32 / Schannel open the key themselves, the way a certificate from a store
finds its key. This is how .NET's ``CopyWithPrivateKey`` binds a *persisted* CNG key
(``CertificateHelpers.CopyWithPersistedCngKey``), and what MSAL does for its KeyGuard key.

**Why not by handle.** ``CERT_NCRYPT_KEY_HANDLE_PROP_ID`` (78) *transfers ownership* of the
``NCRYPT_KEY_HANDLE`` to the context: the key context is "implicitly released on the final freeing of the
CERT_CONTEXT" (unless ``CERT_STORE_NO_CRYPT_RELEASE_FLAG``), and .NET's ``CopyWithEphemeralKey`` duplicates
its handle first because the call "transfers ownership of the handle to the certificate". Attaching the
KeyGuard key's own handle would let freeing a context (every client close, rotation or retire) free the
process's shared key handle. So property 78 is never set here; :meth:`CertContext.ncrypt_key_handle` only
reads it (the tests use it to show it stays absent).

**The ``CRYPT_KEY_PROV_INFO`` values** (learn.microsoft.com, "CRYPT_KEY_PROV_INFO structure (wincrypt.h)"):
``dwProvType = 0`` means a CNG key storage provider; then ``pwszProvName`` is passed to
``NCryptOpenStorageProvider``, ``pwszContainerName`` to ``NCryptOpenKey`` as the key name, ``dwKeySpec`` to
``NCryptOpenKey`` as ``dwLegacyKeySpec``, and ``cProvParam``/``rgProvParam`` "must be zero"/"NULL". The
documented ``dwLegacyKeySpec`` values are ``AT_KEYEXCHANGE``, ``AT_SIGNATURE`` and 0 ("none of the above")
("NCryptOpenKey function (ncrypt.h)"), so ``dwKeySpec`` is **0**, the value our own ``NCryptOpenKey`` and
``NCryptCreatePersistedKey`` calls use and the one .NET uses for the Microsoft software KSP.
``CERT_NCRYPT_KEY_SPEC`` (0xFFFFFFFF) is *not* used: it is what crypt32 reports for a CNG key
(``CryptAcquireCertificatePrivateKey``'s ``pdwKeySpec``), not a documented ``dwLegacyKeySpec``. ``dwFlags``
is **NCRYPT_SILENT_FLAG**: its documented values are ``CERT_SET_KEY_CONTEXT_PROP_ID``,
``NCRYPT_MACHINE_KEY_FLAG`` and ``CRYPT_SILENT`` / ``NCRYPT_SILENT_FLAG`` ("the key container attempts to
open any keys silently without any user interface prompts"), which is what a service wants when Schannel
opens the key by name. The KeyGuard key is a per-user key (created without ``NCRYPT_MACHINE_KEY_FLAG``), and
the per-boot / virtual-isolation flags exist only at creation (``NCryptCreatePersistedKey``), not when
opening, so nothing else describes them here.

crypt32 keeps its own copy of the structure: "If a property already exists, its old value is replaced"
("CertSetCertificateContextProperty"), and reading it back returns the structure with "structures pointed
to by members ... returned following the base structure" in the caller's buffer
("CertGetCertificateContextProperty"). So our strings need to live only for the duration of the call, and
the context holds no reference to the key object: closing the context never touches the key.
"""

from __future__ import annotations

import struct
import threading
from typing import Any, NamedTuple, Optional

from ._closing import Closing
from ._errors import NativeCallError, NativeError
from ._loader import last_error, load
from ._winapi import ffi

X509_ASN_ENCODING = 0x00000001
PKCS_7_ASN_ENCODING = 0x00010000
CERT_KEY_PROV_INFO_PROP_ID = 2
CERT_NCRYPT_KEY_HANDLE_PROP_ID = 78
#: CRYPT_KEY_PROV_INFO.dwFlags (= CRYPT_SILENT): open the key by name without any UI.
NCRYPT_SILENT_FLAG = 0x00000040
#: What crypt32 *reports* as the key spec of a CNG key; never a CRYPT_KEY_PROV_INFO.dwKeySpec we set.
CERT_NCRYPT_KEY_SPEC = 0xFFFFFFFF
#: CRYPT_KEY_PROV_INFO.dwProvType for a CNG key storage provider (rather than a CryptoAPI CSP type).
KEY_PROV_TYPE_CNG = 0
#: CRYPT_KEY_PROV_INFO.dwKeySpec of a CNG key: NCryptOpenKey's dwLegacyKeySpec 0, "none of the above".
KEY_SPEC_NONE = 0
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


class KeyProvInfo(NamedTuple):
    """``CERT_KEY_PROV_INFO_PROP_ID`` as read back (names are not secret: a provider and a key name)."""

    container_name: Optional[str]  # for a CNG provider: the key name
    provider_name: Optional[str]
    provider_type: int  # 0 = CNG key storage provider
    flags: int
    key_spec: int
    param_count: int


class Crypt32Error(NativeCallError):
    """A crypt32 call failed; ``code`` is its ``GetLastError()`` value."""

    def __init__(self, function: str, code: int) -> None:
        super().__init__(function, code, CRYPT32_ERROR_NAMES)


def _wide_or_none(ptr: Any) -> Optional[str]:
    return None if ptr == ffi.NULL else str(ffi.string(ptr))


class CertContext(Closing):
    """Owns one ``PCCERT_CONTEXT`` (one reference); ``close()`` frees it exactly once.

    The key is attached by name (:meth:`bind_key_provider_info`), which crypt32 copies: the context keeps no
    reference to any key object and never owns a key handle.
    """

    __slots__ = ("_lib", "_lock", "_ptr")

    def __init__(self, lib: Any, ptr: Any) -> None:
        if ptr == ffi.NULL:
            raise ValueError("a CertContext needs a non-NULL PCCERT_CONTEXT")
        self._lib = lib
        self._ptr: Any = ptr
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

    def bind_key_provider_info(self, provider_name: str, key_name: str) -> None:
        """Name the certificate's private key: a persisted CNG key ``key_name`` in the key storage provider
        ``provider_name`` (``CERT_KEY_PROV_INFO_PROP_ID``, opened silently; values explained in the module
        docstring). crypt32 / Schannel open (and release) their own handle to the key when they need it.
        """
        for what, text in (("provider_name", provider_name), ("key_name", key_name)):
            if not text or "\0" in text:
                raise ValueError(f"{what} must be a non-empty string without NUL characters")
        # Kept referenced until the call returns; crypt32 copies the structure and the strings.
        provider = ffi.new("char16_t[]", provider_name)
        container = ffi.new("char16_t[]", key_name)
        info = ffi.new("CRYPT_KEY_PROV_INFO *")
        info.pwszContainerName = container
        info.pwszProvName = provider
        info.dwProvType = KEY_PROV_TYPE_CNG
        info.dwFlags = NCRYPT_SILENT_FLAG
        info.cProvParam = 0
        info.rgProvParam = ffi.NULL
        info.dwKeySpec = KEY_SPEC_NONE
        ok = self._lib.CertSetCertificateContextProperty(
            self.ptr, CERT_KEY_PROV_INFO_PROP_ID, CERT_SET_PROPERTY_INHIBIT_PERSIST_FLAG, info
        )
        if not ok:
            raise Crypt32Error("CertSetCertificateContextProperty", last_error())

    def key_provider_info(self) -> Optional[KeyProvInfo]:
        """``CERT_KEY_PROV_INFO_PROP_ID`` read back (two-pass), or None when the context does not have it."""
        found = self._read_property(CERT_KEY_PROV_INFO_PROP_ID)
        if found is None:
            return None
        buf, size = found
        if size < ffi.sizeof("CRYPT_KEY_PROV_INFO"):
            raise Crypt32Error("CertGetCertificateContextProperty", ERROR_INVALID_PARAMETER)
        # The strings follow the structure in `buf`, which stays alive while we read them.
        info = ffi.cast("CRYPT_KEY_PROV_INFO *", buf)
        return KeyProvInfo(
            container_name=_wide_or_none(info.pwszContainerName),
            provider_name=_wide_or_none(info.pwszProvName),
            provider_type=int(info.dwProvType),
            flags=int(info.dwFlags),
            key_spec=int(info.dwKeySpec),
            param_count=int(info.cProvParam),
        )

    def get_property(self, prop_id: int) -> Optional[bytes]:
        """A property's bytes (two-pass size query), or None when the context does not have it."""
        found = self._read_property(prop_id)
        if found is None:
            return None
        buf, size = found
        return bytes(ffi.buffer(buf, size))

    def _read_property(self, prop_id: int) -> Optional[tuple[Any, int]]:
        """``(buffer, bytes used)`` by the two-pass size query, or None when the property is absent."""
        size = ffi.new("uint32_t *")
        if not self._lib.CertGetCertificateContextProperty(self.ptr, prop_id, ffi.NULL, size):
            code = last_error()
            if code == CRYPT_E_NOT_FOUND:
                return None
            raise Crypt32Error("CertGetCertificateContextProperty", code)
        for _ in range(_SIZE_RETRIES):
            # uint64_t-aligned, so a structure returned at its start can be read in place
            buf = ffi.new("uint64_t[]", max((int(size[0]) + 7) // 8, 1))
            size[0] = ffi.sizeof(buf)
            if self._lib.CertGetCertificateContextProperty(self.ptr, prop_id, buf, size):
                return buf, int(size[0])
            code = last_error()
            if code == CRYPT_E_NOT_FOUND:
                return None
            if code != ERROR_MORE_DATA:
                raise Crypt32Error("CertGetCertificateContextProperty", code)
        raise Crypt32Error("CertGetCertificateContextProperty", ERROR_MORE_DATA)

    def ncrypt_key_handle(self) -> Optional[int]:
        """The key handle attached as ``CERT_NCRYPT_KEY_HANDLE_PROP_ID`` (by someone else: this module never
        sets it, see the module docstring), or None."""
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
        """Free the context once (the key it names is untouched: it was attached by name)."""
        with self._lock:
            ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self._lib.CertFreeCertificateContext(ptr)  # documented to always return TRUE

    def __repr__(self) -> str:
        return f"CertContext({'closed' if self.closed else 'open'})"
