"""KeyGuardKeyProvider against the fake ncrypt: create/reuse, races, no VBS, reboot, export, PSS signatures."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from azure_msiv2_credential._errors import ErrorCode, MsiV2Error
from azure_msiv2_credential._native import NativeCallError, NativeLibraries
from azure_msiv2_credential._native import ncrypt as nc
from azure_msiv2_credential.keys import BindingKey, KeyProvider
from azure_msiv2_credential.keys.keyguard import KeyGuardKey, KeyGuardKeyProvider

from ._fakes import FakeWin

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


@pytest.fixture
def provider(fakewin: FakeWin) -> Iterator[KeyGuardKeyProvider]:
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as prov:
        yield prov


def test_protocols_and_repr(provider: KeyGuardKeyProvider) -> None:
    assert isinstance(provider, KeyProvider)
    key = provider.get_key()
    assert isinstance(key, BindingKey)
    assert provider.strength == key.strength == "keyguard"
    assert repr(key) == f"KeyGuardKey(key_id={key.key_id!r})"
    assert key.key_id.startswith("keyguard:AzureMsiV2BindingKey:")
    assert repr(provider) == "KeyGuardKeyProvider(key_name='AzureMsiV2BindingKey')"
    assert key.native_handle != 0


def test_creates_once_then_reuses(fakewin: FakeWin, provider: KeyGuardKeyProvider) -> None:
    key = provider.get_key()
    assert provider.get_key() is key
    assert fakewin.calls("NCryptCreatePersistedKey") == 1
    assert fakewin.stored_keys() == 1
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as other:  # another process of this boot
        assert other.get_key().public_key() == key.public_key()
    assert fakewin.calls("NCryptCreatePersistedKey") == 1


def test_key_properties(fakewin: FakeWin, provider: KeyGuardKeyProvider) -> None:
    key = provider.get_key()
    api = nc.NCrypt(fakewin.libraries.ncrypt)
    with api.open_storage_provider() as prov, api.open_key(prov, "AzureMsiV2BindingKey") as handle:
        assert api.get_dword_property(handle, "Virtual Iso") == 1
        assert api.get_dword_property(handle, "Length") == 2048
        assert api.get_dword_property(handle, "Export Policy") == 0
        with pytest.raises(NativeCallError) as info:
            api.export_key(handle, "RSAPRIVATEBLOB")
        assert info.value.name == "NTE_PERM"
    numbers = key.public_key().public_numbers()
    assert (key.public_key().key_size, numbers.e) == (2048, 65537)


def test_concurrent_creator_wins(fakewin: FakeWin) -> None:
    """Between our failed open and our create, another process creates the key: NTE_EXISTS -> open theirs."""
    fakewin.ctl.FakeNCrypt_PreemptNextCreate()
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as prov:
        key = prov.get_key()
        assert fakewin.calls("NCryptOpenKey") == 2  # miss, then theirs
        assert fakewin.stored_keys() == 1
        with KeyGuardKeyProvider(libraries=fakewin.libraries) as other:
            assert other.get_key().public_key() == key.public_key()


def test_threads_share_one_key(fakewin: FakeWin) -> None:
    providers = [KeyGuardKeyProvider(libraries=fakewin.libraries) for _ in range(8)]
    keys: list[KeyGuardKey] = []
    barrier = threading.Barrier(len(providers))

    def run(p: KeyGuardKeyProvider) -> None:
        barrier.wait()
        keys.append(p.get_key())

    threads = [threading.Thread(target=run, args=(p,)) for p in providers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(keys) == 8
        assert len({k.key_id for k in keys}) == 1
        assert fakewin.stored_keys() == 1
    finally:
        for p in providers:
            p.close()


@pytest.mark.parametrize(
    ("not_supported", "status"),
    [
        (False, "NTE_VBS_UNAVAILABLE (0x80890014)"),  # what Windows returns when VBS key isolation is off
        (True, "NTE_NOT_SUPPORTED (0x80090029)"),  # a Windows that does not know the flag
    ],
)
def test_no_vbs_is_keyguard_unavailable(fakewin: FakeWin, not_supported: bool, status: str) -> None:
    fakewin.set_vbs(False, not_supported=not_supported)
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as prov, pytest.raises(MsiV2Error) as info:
        prov.get_key()
    assert info.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE
    assert status in str(info.value)
    assert "Trusted Launch" in str(info.value) and "VBS" in str(info.value)
    assert fakewin.stored_keys() == 0


@pytest.mark.parametrize("size", [1, 8])
def test_virtual_iso_of_another_size_still_counts(fakewin: FakeWin, size: int) -> None:
    """ "Virtual Iso" is read as "non-empty with a non-zero byte": a value that is not a DWORD never makes a
    working key look non-isolated (which would delete it, and then report KeyGuard unavailable)."""
    fakewin.set_virtual_iso_size(size)
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as first:
        key = first.get_key()
        with KeyGuardKeyProvider(libraries=fakewin.libraries) as second:  # opens the existing key
            assert second.get_key().public_key() == key.public_key()
    assert fakewin.calls("NCryptCreatePersistedKey") == 1
    assert fakewin.calls("NCryptDeleteKey") == 0
    assert fakewin.stored_keys() == 1


def test_zero_virtual_iso_of_another_size_is_not_isolated(fakewin: FakeWin) -> None:
    fakewin.set_virtual_iso_size(8)
    fakewin.set_vbs(False, silently=True)
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as prov, pytest.raises(MsiV2Error) as info:
        prov.get_key()
    assert info.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE
    assert fakewin.stored_keys() == 0


def test_silently_unisolated_key_is_deleted(fakewin: FakeWin) -> None:
    fakewin.set_vbs(False, silently=True)
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as prov, pytest.raises(MsiV2Error) as info:
        prov.get_key()
    assert info.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE
    assert "Virtual Iso" in str(info.value)
    assert fakewin.stored_keys() == 0  # the non-isolated key did not survive under our name


def test_existing_unisolated_key_is_replaced(fakewin: FakeWin) -> None:
    fakewin.set_vbs(False, silently=True)
    api = nc.NCrypt(fakewin.libraries.ncrypt)
    with api.open_storage_provider() as prov:
        stray = api.create_persisted_key(prov, "RSA", "AzureMsiV2BindingKey", nc.NCRYPT_USE_VIRTUAL_ISOLATION_FLAG)
        with stray:
            api.finalize_key(stray)
    fakewin.set_vbs(True)
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as kg:
        kg.get_key()
        assert fakewin.calls("NCryptDeleteKey") == 1
        assert fakewin.stored_keys() == 1


def test_stale_key_after_reboot_is_recreated(fakewin: FakeWin) -> None:
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as before:
        old = before.get_key().public_key()
    fakewin.reboot()
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as after:
        key = after.get_key()
        assert key.public_key() != old
        assert fakewin.calls("NCryptDeleteKey") == 1
        assert fakewin.stored_keys() == 1
        key.public_key().verify(key.sign_pss_sha256(b"fresh"), b"fresh", PSS, hashes.SHA256())


def test_sign_and_verify_with_cryptography(provider: KeyGuardKeyProvider) -> None:
    """The CSR-free end check: arbitrary data, RSASSA-PSS SHA-256 salt 32, verified by cryptography."""
    key = provider.get_key()
    for data in (b"", b"x" * 10_000, bytes(range(256))):
        key.public_key().verify(key.sign_pss_sha256(data), data, PSS, hashes.SHA256())


def test_sign_failure_maps_to_key_error(fakewin: FakeWin, provider: KeyGuardKeyProvider) -> None:
    key = provider.get_key()
    fakewin.fail_next("NCryptSignHash", nc.NTE_NO_MEMORY)
    with pytest.raises(MsiV2Error) as info:
        key.sign_pss_sha256(b"data")
    assert info.value.error_code == ErrorCode.KEY_ERROR
    assert "NTE_NO_MEMORY (0x8009000E)" in str(info.value)


@pytest.mark.parametrize(
    "function",
    ["NCryptOpenStorageProvider", "NCryptCreatePersistedKey", "NCryptSetProperty", "NCryptExportKey"],
)
def test_failures_while_opening_map_to_key_error_without_leaks(fakewin: FakeWin, function: str) -> None:
    fakewin.fail_next(function, nc.NTE_INTERNAL_ERROR)
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as prov:
        with pytest.raises(MsiV2Error) as info:
            prov.get_key()
        assert info.value.error_code == ErrorCode.KEY_ERROR
        assert "NTE_INTERNAL_ERROR" in str(info.value)
        prov.get_key()  # not sticky: the next call works


def test_close_releases_and_allows_reopen(fakewin: FakeWin) -> None:
    prov = KeyGuardKeyProvider(libraries=fakewin.libraries)
    key = prov.get_key()
    prov.close()
    with pytest.raises(MsiV2Error):
        _ = key.native_handle
    with pytest.raises(MsiV2Error):
        key.sign_pss_sha256(b"after close")
    again = prov.get_key()
    assert again.public_key() == key.public_key()
    prov.close()
    prov.close()


def test_missing_library_is_keyguard_unavailable() -> None:
    libs = NativeLibraries(ncrypt="/nonexistent/ncrypt.dll", crypt32="/x", winhttp="/x")
    with pytest.raises(MsiV2Error) as info:
        KeyGuardKeyProvider(libraries=libs).get_key()
    assert info.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE


@pytest.mark.skipif(sys.platform == "win32", reason="off-Windows behaviour")
def test_default_libraries_off_windows_is_keyguard_unavailable() -> None:
    with pytest.raises(MsiV2Error) as info:
        KeyGuardKeyProvider().get_key()
    assert info.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE


def test_wrong_library_is_keyguard_unavailable() -> None:
    import _cffi_backend  # any shared object that is not ncrypt

    libs = NativeLibraries(ncrypt=str(_cffi_backend.__file__), crypt32="/x", winhttp="/x")
    with pytest.raises(MsiV2Error) as info:
        KeyGuardKeyProvider(libraries=libs).get_key()
    assert info.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE
    assert "does not export NCryptOpenStorageProvider" in str(info.value)


def test_create_refusing_the_flags_is_keyguard_unavailable(fakewin: FakeWin) -> None:
    fakewin.fail_next("NCryptCreatePersistedKey", nc.NTE_BAD_FLAGS)
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as prov, pytest.raises(MsiV2Error) as info:
        prov.get_key()
    assert info.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE
    assert "NTE_BAD_FLAGS" in str(info.value)


def test_key_keeps_its_provider_handle_open(fakewin: FakeWin) -> None:
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as prov:
        prov.get_key()
        assert fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.provider") == 1
        assert fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.key") == 1
    assert fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.provider") == 0


# ---- borrow(): the handle stays open while a native call uses it -----------------------------------------


def _keys_open(fakewin: FakeWin) -> int:
    return int(fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.key"))


def test_close_during_a_borrow_frees_the_handles_when_it_ends(fakewin: FakeWin) -> None:
    prov = KeyGuardKeyProvider(libraries=fakewin.libraries)
    key = prov.get_key()
    keys_open = _keys_open(fakewin)
    with key.borrow() as handle:
        assert handle == key.native_handle
        with key.borrow() as again:  # borrows nest and overlap
            assert again == handle
        prov.close()  # e.g. from another thread: returns at once, frees nothing yet
        assert key.closed
        assert _keys_open(fakewin) == keys_open
        assert fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.provider") == 1
        with pytest.raises(MsiV2Error) as info, key.borrow():
            pass
        assert info.value.error_code == ErrorCode.KEY_ERROR
        with pytest.raises(MsiV2Error):
            key.sign_pss_sha256(b"refused once closing")
    assert _keys_open(fakewin) == keys_open - 1  # the last borrower freed them
    assert fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.provider") == 0
    key.close()  # idempotent: nothing is freed twice


def test_signing_threads_and_a_concurrent_close(fakewin: FakeWin) -> None:
    """Signatures in flight finish on an open handle; later ones are refused; nothing is freed twice."""
    prov = KeyGuardKeyProvider(libraries=fakewin.libraries)
    key = prov.get_key()
    start = threading.Barrier(5)
    outcomes: list[str] = []

    def sign() -> None:
        start.wait()
        for _ in range(20):
            try:
                key.public_key().verify(key.sign_pss_sha256(b"x"), b"x", PSS, hashes.SHA256())
                outcomes.append("signed")
            except MsiV2Error as exc:
                assert exc.error_code == ErrorCode.KEY_ERROR
                assert "closed" in str(exc)
                outcomes.append("refused")

    threads = [threading.Thread(target=sign) for _ in range(4)]
    for t in threads:
        t.start()
    start.wait()
    prov.close()
    for t in threads:
        t.join()
    assert len(outcomes) == 80
    assert set(outcomes) <= {"signed", "refused"}
