"""The ncrypt wrapper against the fake: two-pass queries, status mapping, handle ownership, export policy."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from azure_msiv2_credential._native import NativeCallError, NativeError
from azure_msiv2_credential._native import ncrypt as nc
from azure_msiv2_credential._native._winapi import ffi

from ._fakes import FakeWin

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


@pytest.fixture
def api(fakewin: FakeWin) -> nc.NCrypt:
    return nc.NCrypt(fakewin.libraries.ncrypt)


@pytest.fixture
def provider(api: nc.NCrypt) -> Iterator[nc.NCryptHandle]:
    with api.open_storage_provider() as prov:
        yield prov


def _make_key(api: nc.NCrypt, provider: nc.NCryptHandle, name: str | None = "k", policy: int = 0) -> nc.NCryptHandle:
    key = api.create_persisted_key(provider, "RSA", name, nc.NCRYPT_USE_PER_BOOT_KEY_FLAG)
    api.set_dword_property(key, "Length", 2048)
    api.set_dword_property(key, "Export Policy", policy)
    api.finalize_key(key)
    return key


def _public(api: nc.NCrypt, key: nc.NCryptHandle) -> rsa.RSAPublicKey:
    n, e = nc.parse_rsa_public_blob(api.export_key(key, nc.BCRYPT_RSAPUBLIC_BLOB))
    return rsa.RSAPublicNumbers(e, n).public_key()


def test_export_and_sign_are_two_pass(fakewin: FakeWin, api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    with _make_key(api, provider) as key:
        public = _public(api, key)
        assert fakewin.calls("NCryptExportKey") == 2
        digest = hashlib.sha256(b"data").digest()
        signature = api.sign_hash_pss(key, digest, "SHA256", 32)
        assert fakewin.calls("NCryptSignHash") == 2
        assert len(signature) == 256
        public.verify(signature, b"data", PSS, hashes.SHA256())
        assert public.public_numbers().e == 65537
        assert public.key_size == 2048
        api.delete_key(key)


def test_second_pass_too_small_is_retried(fakewin: FakeWin, api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    with _make_key(api, provider) as key:
        fakewin.ctl.FakeNCrypt_UnderstateNextSize()
        blob = api.export_key(key, nc.BCRYPT_RSAPUBLIC_BLOB)
        assert fakewin.calls("NCryptExportKey") == 3  # size, too small, right size
        assert nc.parse_rsa_public_blob(blob)[1] == 65537
        fakewin.ctl.FakeNCrypt_UnderstateNextSize()
        assert api.get_dword_property(key, "Virtual Iso") == 0  # created without the isolation flag
        api.delete_key(key)


def test_fake_follows_the_two_pass_contract(fakewin: FakeWin, api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    """Directly through cffi: NULL -> size; a short buffer -> NTE_BUFFER_TOO_SMALL with the size."""
    lib = api._lib
    with _make_key(api, provider) as key:
        size = ffi.new("uint32_t *")
        name = ffi.new("char16_t[]", "Length")
        assert lib.NCryptGetProperty(key.value, name, ffi.NULL, 0, size, 0) == 0
        assert size[0] == 4
        small = ffi.new("uint8_t[]", 2)
        status = lib.NCryptGetProperty(key.value, name, small, 2, size, 0)
        assert status & 0xFFFFFFFF == nc.NTE_BUFFER_TOO_SMALL
        assert size[0] == 4
        api.delete_key(key)


def test_status_codes_are_named(fakewin: FakeWin, api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    with pytest.raises(NativeCallError) as info:
        api.open_key(provider, "no-such-key")
    assert info.value.code == nc.NTE_BAD_KEYSET
    assert info.value.name == "NTE_BAD_KEYSET"
    assert str(info.value) == "NCryptOpenKey failed: NTE_BAD_KEYSET (0x80090016)"
    for status in (nc.NTE_NO_MEMORY, nc.NTE_PERM, nc.NTE_INVALID_HANDLE, nc.NTE_NOT_SUPPORTED, 0x80091234):
        fakewin.fail_next("NCryptOpenKey", status)
        with pytest.raises(NativeCallError) as info:
            api.open_key(provider, "no-such-key")
        assert info.value.code == status
        assert info.value.name == nc.NTE_NAMES.get(status, "unknown status")


def test_bad_flags_and_parameters(api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    with pytest.raises(NativeCallError) as info:
        api.create_persisted_key(provider, "RSA", "k", 0x1)
    assert info.value.name == "NTE_BAD_FLAGS"
    with api.create_persisted_key(provider, "RSA", "k") as key, pytest.raises(NativeCallError) as info:
        api.set_dword_property(key, "Length", 7)
    assert info.value.name == "NTE_INVALID_PARAMETER"


def test_private_export_refused_by_policy(api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    with _make_key(api, provider) as key:
        with pytest.raises(NativeCallError) as info:
            api.export_key(key, "RSAPRIVATEBLOB")
        assert info.value.name == "NTE_PERM"
        api.delete_key(key)


def test_existing_name_is_not_overwritten(api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    with _make_key(api, provider) as key:
        with pytest.raises(NativeCallError) as info:
            api.create_persisted_key(provider, "RSA", "k", nc.NCRYPT_USE_PER_BOOT_KEY_FLAG)
        assert info.value.code == nc.NTE_EXISTS
        api.delete_key(key)


def test_persisted_key_survives_its_handle(fakewin: FakeWin, api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    with _make_key(api, provider) as key:
        first = _public(api, key)
    assert fakewin.stored_keys() == 1
    with api.open_key(provider, "k") as again:
        assert _public(api, again) == first
        api.delete_key(again)
        assert again.closed  # NCryptDeleteKey freed the handle
    assert fakewin.stored_keys() == 0


def test_failed_delete_keeps_ownership(fakewin: FakeWin, api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    with _make_key(api, provider) as key:
        fakewin.fail_next("NCryptDeleteKey", nc.NTE_PERM)
        with pytest.raises(NativeCallError):
            api.delete_key(key)
        assert not key.closed  # still ours: the `with` frees it
    assert fakewin.stored_keys() == 1


def test_stale_key_after_reboot(fakewin: FakeWin, api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    _make_key(api, provider).close()
    fakewin.reboot()
    with api.open_key(provider, "k") as key:
        with pytest.raises(NativeCallError) as info:
            api.sign_hash_pss(key, hashlib.sha256(b"x").digest(), "SHA256", 32)
        assert info.value.code == nc.NTE_BAD_KEYSET
        api.delete_key(key)


def test_handle_closes_once(api: nc.NCrypt, provider: nc.NCryptHandle) -> None:
    key = api.create_persisted_key(provider, "RSA", None)
    key.close()
    key.close()
    assert key.closed
    assert repr(key) == "NCryptHandle(closed)"
    with pytest.raises(NativeError):
        _ = key.value


def test_rsa_blob_parser_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        nc.parse_rsa_public_blob(b"\0" * 8)
    with pytest.raises(ValueError):
        nc.parse_rsa_public_blob(b"\0" * 24)
    header = (nc.BCRYPT_RSAPUBLIC_MAGIC).to_bytes(4, "little") + bytes(4) + (3).to_bytes(4, "little")
    with pytest.raises(ValueError):
        nc.parse_rsa_public_blob(header + (256).to_bytes(4, "little") + bytes(8) + b"\1\0\1")
