"""The Windows KeyGuard binding key: a per-boot, VBS-isolated CNG RSA key held by the software KSP.

PROTOCOL.md §3: RSA-2048, export policy 0, ``NCRYPT_USE_VIRTUAL_ISOLATION_FLAG | NCRYPT_USE_PER_BOOT_KEY_FLAG``,
one fixed name so every process of this boot shares the key. It counts as KeyGuard only if the ``"Virtual Iso"``
property is non-empty with a non-zero byte (MSAL reads its first byte; the size is not documented, so any size
is accepted); a per-boot key left over from a previous boot is stale (its trial signature fails) and is deleted
and recreated. Creating an isolated key without VBS fails with 0x80890014 (``NTE_VBS_UNAVAILABLE``, the status
MSAL.NET's ``IsVbsUnavailable`` checks) or, on older systems, with ``NTE_NOT_SUPPORTED`` and friends: both are
``MSI_V2_KEYGUARD_UNAVAILABLE``.

Native calls that use the key's handle (signing, attestation) hold a :meth:`KeyGuardKey.borrow`, so
:meth:`KeyGuardKey.close` never frees the handle under a call in flight on another thread.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .._errors import ErrorCode, MsiV2Error
from .._native import NativeCallError, NativeError, NativeLibraries
from .._native import ncrypt as nc
from .._native._closing import Closing
from ._base import PSS_SALT_LENGTH, RSA_KEY_BITS, BindingStrength

DEFAULT_KEY_NAME = "AzureMsiV2BindingKey"

_CREATE_FLAGS = nc.NCRYPT_USE_VIRTUAL_ISOLATION_FLAG | nc.NCRYPT_USE_PER_BOOT_KEY_FLAG
#: Statuses meaning "this Windows cannot make an isolated key", as opposed to a key-store failure: VBS key
#: isolation unavailable (0x80890014), or a Windows that does not know the flags at all.
_NO_ISOLATION = {nc.NTE_VBS_UNAVAILABLE, nc.NTE_NOT_SUPPORTED, nc.NTE_BAD_FLAGS, nc.NTE_INVALID_PARAMETER}
_NO_SUCH_KEY = {nc.NTE_BAD_KEYSET, nc.NTE_NOT_FOUND}
#: open -> (stale: delete) -> create -> (lost a race: open again); three rounds cover every interleaving
#: with one concurrent creator and one concurrent deleter.
_ATTEMPTS = 3
_HOW_TO_ENABLE = (
    "KeyGuard keys need Virtualization-based Security: run on a Trusted Launch VM (Secure Boot + vTPM) and "
    "enable VBS / Credential Guard (a Credential Guard-capable Windows edition), then reboot"
)


def _key_error(what: str, exc: NativeError) -> MsiV2Error:
    return MsiV2Error(f"{what}: {exc}", error_code=ErrorCode.KEY_ERROR)


class KeyGuardKey:
    """An open KeyGuard key. Owns its NCRYPT_KEY_HANDLE (and the provider handle it came from); native calls
    use the handle only inside :meth:`borrow` and never free it. WinHTTP does not use the handle at all: it
    opens the persisted key by :attr:`key_name`."""

    def __init__(
        self,
        api: nc.NCrypt,
        provider: nc.NCryptHandle,
        handle: nc.NCryptHandle,
        *,
        name: str,
        libraries: NativeLibraries,
        public_key: rsa.RSAPublicKey,
        provider_name: str = nc.MS_KEY_STORAGE_PROVIDER,
    ) -> None:
        self._api = api
        self._name = name
        self._provider_name = provider_name
        self._provider = provider  # kept open as long as the key: CNG does not promise keys outlive it
        self._handle = handle
        self._libraries = libraries
        self._public_key = public_key
        self._state = threading.Lock()  # guards the borrow count and the closing flags
        self._borrowers = 0
        self._closing = False  # close() was called: no new borrows; the last borrower frees the handles
        self._freed = False
        self._sign_lock = threading.Lock()  # signatures through the one handle, one at a time
        spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self._key_id = f"keyguard:{name}:{hashlib.sha256(spki).hexdigest()[:16]}"

    @property
    def strength(self) -> BindingStrength:
        return "keyguard"

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def key_name(self) -> str:
        """The persisted key's name in its key storage provider (``NCryptOpenKey``'s ``pszKeyName``)."""
        return self._name

    @property
    def provider_name(self) -> str:
        """The key storage provider holding the key (``NCryptOpenStorageProvider``'s ``pszProviderName``)."""
        return self._provider_name

    @property
    def native_handle(self) -> int:
        """The NCRYPT_KEY_HANDLE value, for display and diagnostics. A native call must use the value from
        :meth:`borrow` instead: only a borrow keeps the handle open for the call's duration."""
        try:
            return self._handle.value
        except NativeError as exc:
            raise _key_error("the KeyGuard key is closed", exc) from exc

    @contextmanager
    def borrow(self) -> Iterator[int]:
        """The NCRYPT_KEY_HANDLE value, guaranteed open until the ``with`` block ends.

        Any number of threads may borrow at once. :meth:`close` refuses new borrows immediately and leaves
        the freeing of the handles to the last borrower. Raises ``MsiV2Error`` (``KEY_ERROR``) once closed.
        """
        with self._state:
            if self._closing:
                raise MsiV2Error("the KeyGuard key is closed", error_code=ErrorCode.KEY_ERROR)
            self._borrowers += 1
        try:
            yield self._handle.value
        finally:
            with self._state:
                self._borrowers -= 1
                free = self._closing and self._borrowers == 0 and not self._freed
                if free:
                    self._freed = True
            if free:
                self._free()

    @property
    def libraries(self) -> NativeLibraries:
        return self._libraries

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    def sign_pss_sha256(self, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        with self.borrow(), self._sign_lock:  # the handle stays open while NCrypt signs with it
            try:
                return self._api.sign_hash_pss(self._handle, digest, "SHA256", PSS_SALT_LENGTH)
            except NativeError as exc:
                raise _key_error("signing with the KeyGuard key failed", exc) from exc

    @property
    def closed(self) -> bool:
        """``close()`` was called (the handles may still be open for a borrow in flight)."""
        return self._closing

    def close(self) -> None:
        """Refuse new borrows and free the handles: now, or when the last borrow in flight ends (also one on
        this thread: closing inside a ``with key.borrow()`` frees at the end of that block). Idempotent."""
        with self._state:
            self._closing = True
            free = self._borrowers == 0 and not self._freed
            if free:
                self._freed = True
        if free:
            self._free()

    def _free(self) -> None:
        try:
            self._handle.close()
        finally:
            self._provider.close()

    def __repr__(self) -> str:
        return f"KeyGuardKey(key_id={self._key_id!r})"


class KeyGuardKeyProvider(Closing):
    """Opens the named KeyGuard key of this boot, or creates it; ``MSI_V2_KEYGUARD_UNAVAILABLE`` without VBS.

    Thread-safe: one key per provider, made on first ``get_key``. ``close()`` frees the native handles (the
    persisted key stays in the store for the next process of this boot).
    """

    def __init__(self, key_name: str = DEFAULT_KEY_NAME, libraries: Optional[NativeLibraries] = None) -> None:
        self._key_name = key_name
        self._libraries = libraries
        self._lock = threading.Lock()
        self._key: Optional[KeyGuardKey] = None

    @property
    def strength(self) -> BindingStrength:
        return "keyguard"

    def get_key(self) -> KeyGuardKey:
        with self._lock:
            if self._key is None:
                self._key = self._load()
            return self._key

    def close(self) -> None:
        with self._lock:
            key, self._key = self._key, None
        if key is not None:
            key.close()

    def __repr__(self) -> str:
        return f"KeyGuardKeyProvider(key_name={self._key_name!r})"

    # -- the steps; every handle is closed on every path that does not hand it to a KeyGuardKey --

    def _load(self) -> KeyGuardKey:
        try:
            libraries = self._libraries or NativeLibraries.for_this_host()
            api = nc.NCrypt(libraries.ncrypt)
        except NativeError as exc:
            raise MsiV2Error(
                f"KeyGuard is not available here: {exc}", error_code=ErrorCode.KEYGUARD_UNAVAILABLE
            ) from exc
        provider_name = nc.MS_KEY_STORAGE_PROVIDER
        try:
            provider = api.open_storage_provider(provider_name)
        except NativeError as exc:
            raise _key_error("opening the key storage provider failed", exc) from exc
        try:
            handle = self._open_or_create(api, provider)
            try:
                public_key = _export_public_key(api, handle)
            except BaseException:
                handle.close()
                raise
        except NativeError as exc:
            provider.close()
            raise _key_error("opening the KeyGuard key failed", exc) from exc
        except BaseException:
            provider.close()
            raise
        return KeyGuardKey(
            api,
            provider,
            handle,
            name=self._key_name,
            libraries=libraries,
            public_key=public_key,
            provider_name=provider_name,
        )

    def _open_or_create(self, api: nc.NCrypt, provider: nc.NCryptHandle) -> nc.NCryptHandle:
        for _ in range(_ATTEMPTS):
            key = self._open_existing(api, provider)
            if key is not None:
                return key
            try:
                return self._create(api, provider)
            except NativeCallError as exc:
                if exc.code != nc.NTE_EXISTS:  # NTE_EXISTS: another process created it first; open theirs
                    raise
        raise MsiV2Error(
            f"the KeyGuard key {self._key_name!r} kept changing under concurrent creators and deleters",
            error_code=ErrorCode.KEY_ERROR,
        )

    def _open_existing(self, api: nc.NCrypt, provider: nc.NCryptHandle) -> Optional[nc.NCryptHandle]:
        """The named key if it is isolated and alive; a stale or non-isolated one is deleted."""
        try:
            key = api.open_key(provider, self._key_name)
        except NativeCallError as exc:
            if exc.code in _NO_SUCH_KEY:
                return None
            raise
        try:
            if _is_isolated(api, key) and _signs(api, key):
                return key
            _delete(api, key)  # from a previous boot, or not ours to trust: make a fresh one
        except BaseException:
            key.close()
            raise
        key.close()
        return None

    def _create(self, api: nc.NCrypt, provider: nc.NCryptHandle) -> nc.NCryptHandle:
        # No NCRYPT_OVERWRITE_KEY_FLAG: a concurrent creator's key must win, not be replaced.
        try:
            key = api.create_persisted_key(provider, nc.BCRYPT_RSA_ALGORITHM, self._key_name, _CREATE_FLAGS)
        except NativeCallError as exc:
            if exc.code in _NO_ISOLATION:  # an older Windows that does not know the flags
                raise _unavailable(f"this Windows cannot create an isolated key ({exc})") from exc
            raise
        try:
            api.set_dword_property(key, nc.NCRYPT_LENGTH_PROPERTY, RSA_KEY_BITS)
            api.set_dword_property(key, nc.NCRYPT_EXPORT_POLICY_PROPERTY, 0)
            try:
                api.finalize_key(key)
            except NativeCallError as exc:
                if exc.code in _NO_ISOLATION:
                    raise _unavailable(f"this Windows cannot create an isolated key ({exc})") from exc
                raise
            if not _is_isolated(api, key):
                _delete(api, key)  # never leave a non-isolated key under our name
                raise _unavailable('the key was created without isolation ("Virtual Iso" is 0)')
        except BaseException:
            key.close()
            raise
        return key


def _unavailable(reason: str) -> MsiV2Error:
    message = f"KeyGuard is not available: {reason}. {_HOW_TO_ENABLE}."
    return MsiV2Error(message, error_code=ErrorCode.KEYGUARD_UNAVAILABLE)


def _is_isolated(api: nc.NCrypt, key: nc.NCryptHandle) -> bool:
    """Isolated when "Virtual Iso" is non-empty with any non-zero byte, whatever its size (the size is not
    documented; MSAL reads the first byte). Empty, all zero, or unreadable means not KeyGuard."""
    try:
        value = api.get_property(key, nc.NCRYPT_USE_VIRTUAL_ISOLATION_PROPERTY)
    except NativeError:
        return False
    return any(value)


def _signs(api: nc.NCrypt, key: nc.NCryptHandle) -> bool:
    """A trial PSS signature: per-boot keys from a previous boot open fine but cannot sign."""
    try:
        api.sign_hash_pss(key, hashlib.sha256(b"keyguard liveness probe").digest(), "SHA256", PSS_SALT_LENGTH)
    except NativeError:
        return False
    return True


def _delete(api: nc.NCrypt, key: nc.NCryptHandle) -> None:
    """Delete the persisted key (the handle is freed with it); someone else deleting it first is fine."""
    try:
        api.delete_key(key)
    except NativeCallError as exc:
        if exc.code not in _NO_SUCH_KEY:
            raise


def _export_public_key(api: nc.NCrypt, key: nc.NCryptHandle) -> rsa.RSAPublicKey:
    try:
        modulus, exponent = nc.parse_rsa_public_blob(api.export_key(key, nc.BCRYPT_RSAPUBLIC_BLOB))
    except NativeError as exc:
        raise _key_error("exporting the KeyGuard public key failed", exc) from exc
    except ValueError as exc:
        raise MsiV2Error(f"the KeyGuard public key blob is malformed: {exc}", error_code=ErrorCode.KEY_ERROR) from exc
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()
