"""ncrypt.dll: persisted CNG keys, their properties, public-key export and hash signing.

Thin and leak-free: every NCRYPT handle is an :class:`NCryptHandle` with exactly one owner that frees it
once (``with`` or ``close()``); size queries are two-pass and survive a size that grows in between; a
failing status raises :class:`NativeCallError` with the ``NTE_*`` name.
"""

from __future__ import annotations

import struct
import threading
from typing import Any, Callable, Optional

from ._closing import Closing
from ._errors import NativeCallError, NativeError
from ._loader import load, require
from ._winapi import ffi

ERROR_SUCCESS = 0
NTE_BAD_KEY = 0x80090003
NTE_BAD_DATA = 0x80090005
NTE_BAD_SIGNATURE = 0x80090006
NTE_BAD_FLAGS = 0x80090009
NTE_BAD_TYPE = 0x8009000A
NTE_BAD_KEY_STATE = 0x8009000B
NTE_NO_MEMORY = 0x8009000E
NTE_EXISTS = 0x8009000F
NTE_PERM = 0x80090010
NTE_NOT_FOUND = 0x80090011
NTE_BAD_PROVIDER = 0x80090013
NTE_BAD_KEYSET = 0x80090016
NTE_FAIL = 0x80090020
NTE_SILENT_CONTEXT = 0x80090022
NTE_INVALID_HANDLE = 0x80090026
NTE_INVALID_PARAMETER = 0x80090027
NTE_BUFFER_TOO_SMALL = 0x80090028
NTE_NOT_SUPPORTED = 0x80090029
NTE_INTERNAL_ERROR = 0x8009002D
NTE_DEVICE_NOT_READY = 0x80090030
#: Creating a key with NCRYPT_USE_VIRTUAL_ISOLATION_FLAG where VBS key isolation is unavailable. Not in
#: winerror.h under any name we know: the name is ours; the value is the one MSAL.NET's
#: WindowsCngKeyOperations.IsVbsUnavailable checks (its comment calls it "NTE_NOT_SUPPORTED", which is
#: 0x80090029, a different status that older systems return and that we also treat as "no VBS").
NTE_VBS_UNAVAILABLE = 0x80890014

#: Status code -> name, for messages and for callers that branch on ``NativeCallError.name``.
NTE_NAMES: dict[int, str] = {
    value: name for name, value in globals().items() if name.startswith("NTE_") and isinstance(value, int)
}

MS_KEY_STORAGE_PROVIDER = "Microsoft Software Key Storage Provider"
BCRYPT_RSA_ALGORITHM = "RSA"
BCRYPT_RSAPUBLIC_BLOB = "RSAPUBLICBLOB"
BCRYPT_RSAPUBLIC_MAGIC = 0x31415352  # "RSA1"
BCRYPT_PAD_PSS = 0x00000008
NCRYPT_LENGTH_PROPERTY = "Length"
NCRYPT_EXPORT_POLICY_PROPERTY = "Export Policy"
NCRYPT_USE_VIRTUAL_ISOLATION_PROPERTY = "Virtual Iso"
NCRYPT_USE_VIRTUAL_ISOLATION_FLAG = 0x00020000
NCRYPT_USE_PER_BOOT_KEY_FLAG = 0x00040000

_FUNCTIONS = (
    "NCryptOpenStorageProvider",
    "NCryptOpenKey",
    "NCryptCreatePersistedKey",
    "NCryptSetProperty",
    "NCryptFinalizeKey",
    "NCryptGetProperty",
    "NCryptExportKey",
    "NCryptSignHash",
    "NCryptDeleteKey",
    "NCryptFreeObject",
)
#: A size may grow between the two passes (another thread changed the object); retry this many times.
_SIZE_RETRIES = 3


def _wide(text: str) -> Any:
    """A NUL-terminated UTF-16 copy; the caller keeps it referenced for as long as C may read it."""
    return ffi.new("char16_t[]", text)


class NCryptHandle(Closing):
    """One NCRYPT_HANDLE (provider or key) with exactly one owner; ``close()`` frees it once."""

    __slots__ = ("_api", "_lock", "_value")

    def __init__(self, api: NCrypt, value: int) -> None:
        self._api = api
        self._value = value
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        """The raw handle for a native call; raises once the handle is closed."""
        value = self._value
        if not value:
            raise NativeError("the NCrypt handle is closed")
        return value

    @property
    def closed(self) -> bool:
        return not self._value

    def detach(self) -> int:
        """Give up ownership without freeing (for calls such as NCryptDeleteKey that free on success)."""
        with self._lock:
            value, self._value = self._value, 0
        return value

    def close(self) -> None:
        value = self.detach()
        if value:
            self._api.free_object(value)

    def __repr__(self) -> str:
        return f"NCryptHandle({'closed' if self.closed else 'open'})"


class NCrypt:
    """ncrypt.dll loaded from one absolute path."""

    def __init__(self, path: str) -> None:
        self._lib = load(path)
        require(self._lib, path, _FUNCTIONS)

    def _check(self, function: str, status: int) -> None:
        if status & 0xFFFFFFFF != ERROR_SUCCESS:
            raise NativeCallError(function, status, NTE_NAMES)

    def _query(self, function: str, call: Callable[[Any, int, Any], int]) -> bytes:
        """Two-pass query: ``call(NULL, 0, &size)``, then with a buffer of that size; retried on growth."""
        size = ffi.new("uint32_t *")
        self._check(function, call(ffi.NULL, 0, size))
        for _ in range(_SIZE_RETRIES):
            buf = ffi.new("uint8_t[]", max(int(size[0]), 1))
            status = call(buf, len(buf), size) & 0xFFFFFFFF
            if status == ERROR_SUCCESS:
                return bytes(ffi.buffer(buf, size[0]))
            if status != NTE_BUFFER_TOO_SMALL:
                self._check(function, status)
        raise NativeCallError(function, NTE_BUFFER_TOO_SMALL, NTE_NAMES)

    def free_object(self, value: int) -> None:
        self._check("NCryptFreeObject", self._lib.NCryptFreeObject(value))

    def open_storage_provider(self, name: str = MS_KEY_STORAGE_PROVIDER) -> NCryptHandle:
        out = ffi.new("NCRYPT_PROV_HANDLE *")
        self._check("NCryptOpenStorageProvider", self._lib.NCryptOpenStorageProvider(out, _wide(name), 0))
        return NCryptHandle(self, int(out[0]))

    def open_key(self, provider: NCryptHandle, name: str, flags: int = 0) -> NCryptHandle:
        out = ffi.new("NCRYPT_KEY_HANDLE *")
        self._check("NCryptOpenKey", self._lib.NCryptOpenKey(provider.value, out, _wide(name), 0, flags))
        return NCryptHandle(self, int(out[0]))

    def create_persisted_key(
        self, provider: NCryptHandle, algorithm: str, name: Optional[str], flags: int = 0
    ) -> NCryptHandle:
        """An unfinalized key: set its properties, then :meth:`finalize_key`."""
        out = ffi.new("NCRYPT_KEY_HANDLE *")
        key_name = _wide(name) if name is not None else ffi.NULL
        status = self._lib.NCryptCreatePersistedKey(provider.value, out, _wide(algorithm), key_name, 0, flags)
        self._check("NCryptCreatePersistedKey", status)
        return NCryptHandle(self, int(out[0]))

    def set_property(self, handle: NCryptHandle, name: str, value: bytes, flags: int = 0) -> None:
        buf = ffi.from_buffer("uint8_t[]", value)
        status = self._lib.NCryptSetProperty(handle.value, _wide(name), buf, len(value), flags)
        self._check("NCryptSetProperty", status)

    def set_dword_property(self, handle: NCryptHandle, name: str, value: int) -> None:
        self.set_property(handle, name, struct.pack("<I", value))

    def finalize_key(self, key: NCryptHandle, flags: int = 0) -> None:
        self._check("NCryptFinalizeKey", self._lib.NCryptFinalizeKey(key.value, flags))

    def get_property(self, handle: NCryptHandle, name: str, flags: int = 0) -> bytes:
        prop = _wide(name)
        return self._query(
            "NCryptGetProperty",
            lambda buf, cb, size: self._lib.NCryptGetProperty(handle.value, prop, buf, cb, size, flags),
        )

    def get_dword_property(self, handle: NCryptHandle, name: str) -> int:
        value = self.get_property(handle, name)
        if len(value) != 4:
            raise NativeCallError("NCryptGetProperty", NTE_BAD_DATA, NTE_NAMES)
        return int(struct.unpack("<I", value)[0])

    def export_key(self, key: NCryptHandle, blob_type: str) -> bytes:
        blob = _wide(blob_type)
        return self._query(
            "NCryptExportKey",
            lambda buf, cb, size: self._lib.NCryptExportKey(key.value, 0, blob, ffi.NULL, buf, cb, size, 0),
        )

    def sign_hash_pss(self, key: NCryptHandle, digest: bytes, hash_algorithm: str, salt_length: int) -> bytes:
        """RSASSA-PSS over a precomputed ``digest`` (MGF1 uses the same hash, as CNG does)."""
        alg = _wide(hash_algorithm)  # referenced by `padding`: keep both alive across the calls
        padding = ffi.new("BCRYPT_PSS_PADDING_INFO *", {"pszAlgId": alg, "cbSalt": salt_length})
        hashed = ffi.from_buffer("uint8_t[]", digest)
        return self._query(
            "NCryptSignHash",
            lambda buf, cb, size: self._lib.NCryptSignHash(
                key.value, padding, hashed, len(digest), buf, cb, size, BCRYPT_PAD_PSS
            ),
        )

    def delete_key(self, key: NCryptHandle) -> None:
        """Delete the persisted key. On success NCrypt frees the handle too; on failure it stays owned."""
        status = self._lib.NCryptDeleteKey(key.value, 0)
        self._check("NCryptDeleteKey", status)
        key.detach()


def parse_rsa_public_blob(blob: bytes) -> tuple[int, int]:
    """``(modulus, exponent)`` from a BCRYPT_RSAPUBLIC_BLOB: a little-endian header (magic "RSA1",
    BitLength, cbPublicExp, cbModulus, cbPrime1, cbPrime2), then the big-endian exponent and modulus."""
    header_size = ffi.sizeof("BCRYPT_RSAKEY_BLOB")
    if len(blob) < header_size:
        raise ValueError("RSA public blob shorter than its header")
    header = ffi.cast("BCRYPT_RSAKEY_BLOB *", ffi.from_buffer(blob))
    magic, cb_exp, cb_mod = int(header.Magic), int(header.cbPublicExp), int(header.cbModulus)
    if magic != BCRYPT_RSAPUBLIC_MAGIC:
        raise ValueError(f"not an RSA public blob (magic 0x{magic:08X})")
    if len(blob) < header_size + cb_exp + cb_mod or cb_exp == 0 or cb_mod == 0:
        raise ValueError("RSA public blob truncated")
    exponent = int.from_bytes(blob[header_size : header_size + cb_exp], "big")
    modulus = int.from_bytes(blob[header_size + cb_exp : header_size + cb_exp + cb_mod], "big")
    return modulus, exponent
