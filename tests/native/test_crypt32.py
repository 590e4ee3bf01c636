"""CertContext against the fake crypt32.dll: creation, property 2 (the key by name), two-pass reads,
leak-free; and the fake's property 78, which takes ownership of the key handle as Windows does (the reason
the bindings never set it)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID

from azure_msiv2_credential._errors import MsiV2Error
from azure_msiv2_credential._native import NativeError
from azure_msiv2_credential._native import crypt32 as c32
from azure_msiv2_credential._native import ncrypt as nc
from azure_msiv2_credential._native._loader import last_error
from azure_msiv2_credential._native._winapi import ffi
from azure_msiv2_credential._native.crypt32 import CertContext, Crypt32Error, KeyProvInfo
from azure_msiv2_credential.keys.keyguard import DEFAULT_KEY_NAME, KeyGuardKey, KeyGuardKeyProvider

from ._fakes import FakeWin

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


@pytest.fixture
def key(fakewin: FakeWin) -> Iterator[KeyGuardKey]:
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as provider:
        yield provider.get_key()


@pytest.fixture
def cert_der(key: KeyGuardKey) -> bytes:
    """A certificate for the KeyGuard key's public half (issued by a throwaway CA key)."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyguard")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _certs(fakewin: FakeWin) -> int:
    return int(fakewin.ctl.FakeWin_LiveHandlesOfKind(b"crypt32.cert"))


def test_create_and_free(fakewin: FakeWin, cert_der: bytes) -> None:
    before = _certs(fakewin)
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        assert _certs(fakewin) == before + 1
        assert ctx.der == cert_der
        assert ctx.ptr.dwCertEncodingType == c32.X509_ASN_ENCODING | c32.PKCS_7_ASN_ENCODING
        assert ctx.store_certificates() == []  # a standalone context is in no store
        assert ctx.ncrypt_key_handle() is None  # missing property: CRYPT_E_NOT_FOUND -> None
        assert repr(ctx) == "CertContext(open)"
    assert _certs(fakewin) == before
    assert ctx.closed and repr(ctx) == "CertContext(closed)"
    ctx.close()  # idempotent: freed exactly once
    with pytest.raises(NativeError, match="closed"):
        _ = ctx.ptr


def test_garbage_der_is_refused(fakewin: FakeWin) -> None:
    with pytest.raises(Crypt32Error) as info:
        CertContext.from_der(fakewin.libraries.crypt32, b"not a certificate")
    assert info.value.function == "CertCreateCertificateContext"
    assert info.value.name == "CRYPT_E_ASN1_BADTAG"
    assert info.value.code == c32.CRYPT_E_ASN1_BADTAG


# ---- CERT_NCRYPT_KEY_HANDLE_PROP_ID in the fake: ownership moves to the context ---------------------

CERT_STORE_NO_CRYPT_RELEASE_FLAG = 0x1


def _keys(fakewin: FakeWin) -> int:
    return int(fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.key"))


@pytest.fixture
def own_handles(fakewin: FakeWin, key: KeyGuardKey) -> Iterator[Any]:
    """Opens extra handles to the KeyGuard key (each the test's until handed to a context)."""
    api = nc.NCrypt(fakewin.libraries.ncrypt)
    provider = api.open_storage_provider()
    opened: list[nc.NCryptHandle] = []

    def open_handle() -> nc.NCryptHandle:
        opened.append(api.open_key(provider, key.key_name))
        return opened[-1]

    yield open_handle
    for handle in opened:
        handle.close()  # only those never handed over are still ours
    provider.close()


def _set_78(ctx: CertContext, handle: Optional[int], flags: int = 0) -> None:
    value = ffi.new("uintptr_t *", handle) if handle is not None else ffi.NULL
    assert ctx._lib.CertSetCertificateContextProperty(ctx.ptr, c32.CERT_NCRYPT_KEY_HANDLE_PROP_ID, flags, value)


def test_property_78_takes_the_handle_and_frees_it_with_the_context(
    fakewin: FakeWin, cert_der: bytes, own_handles: Any
) -> None:
    """As on Windows: setting 78 hands the handle over; the context's final free releases it."""
    handle = own_handles()
    before = _keys(fakewin)
    ctx = CertContext.from_der(fakewin.libraries.crypt32, cert_der)
    _set_78(ctx, handle.value)
    raw_value = handle.detach()  # the context owns it now
    assert ctx.ncrypt_key_handle() == raw_value
    raw = ctx.get_property(c32.CERT_NCRYPT_KEY_HANDLE_PROP_ID)
    assert raw is not None and len(raw) == 8  # two-pass read of a ULONG_PTR
    dup = CertContext(ctx._lib, ctx._lib.CertDuplicateCertificateContext(ctx.ptr))
    ctx.close()
    assert _keys(fakewin) == before  # a reference is left: the handle lives on
    dup.close()  # the final free releases the handle
    assert _keys(fakewin) == before - 1
    assert fakewin.prop78_sets() == 1


def test_property_78_frees_a_replaced_or_deleted_handle(fakewin: FakeWin, cert_der: bytes, own_handles: Any) -> None:
    first, second = own_handles(), own_handles()
    before = _keys(fakewin)
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        _set_78(ctx, first.value)
        first.detach()
        _set_78(ctx, second.value)  # replaced: the first handle is released
        second.detach()
        assert _keys(fakewin) == before - 1
        assert ctx.ncrypt_key_handle() is not None
        _set_78(ctx, None)  # pvData NULL deletes the property and releases the second
        assert _keys(fakewin) == before - 2
        assert ctx.ncrypt_key_handle() is None


def test_property_78_with_no_crypt_release_stays_the_callers(
    fakewin: FakeWin, cert_der: bytes, own_handles: Any
) -> None:
    handle = own_handles()
    before = _keys(fakewin)
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        _set_78(ctx, handle.value, CERT_STORE_NO_CRYPT_RELEASE_FLAG)
    assert _keys(fakewin) == before  # the fixture closes it: no double free


def test_attaching_a_keys_own_handle_would_free_it(fakewin: FakeWin, cert_der: bytes) -> None:
    """The bug property 78 would cause: the key object's handle dies with the context."""
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as provider:
        key = provider.get_key()
        ctx = CertContext.from_der(fakewin.libraries.crypt32, cert_der)
        _set_78(ctx, key.native_handle)
        ctx.close()
        with pytest.raises(MsiV2Error) as info:
            key.sign_pss_sha256(b"the handle is gone")
        assert "NTE_INVALID_HANDLE" in str(info.value)
        key._handle.detach()  # already freed by crypt32: do not free it twice


def test_the_key_object_is_not_referenced_by_the_context(key: KeyGuardKey, cert_der: bytes) -> None:
    ctx = CertContext.from_der(key.libraries.crypt32, cert_der)
    with ctx:
        ctx.bind_key_provider_info(key.provider_name, key.key_name)
        assert not hasattr(ctx, "bind_ncrypt_key")
        assert not hasattr(ctx, "_key_owner")
    key.public_key().verify(key.sign_pss_sha256(b"still usable"), b"still usable", PSS, hashes.SHA256())


def test_duplicate_is_reference_counted(fakewin: FakeWin, cert_der: bytes) -> None:
    """The Windows model the WinHTTP fake relies on: duplicate = same pointer, one more reference."""
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        lib = ctx._lib
        dup = lib.CertDuplicateCertificateContext(ctx.ptr)
        assert dup == ctx.ptr
        assert fakewin.ctl.FakeCrypt32_RefCount(ctx.ptr) == 2
        with CertContext(lib, dup):
            pass
        assert fakewin.ctl.FakeCrypt32_RefCount(ctx.ptr) == 1


# ---- CERT_KEY_PROV_INFO_PROP_ID: the key by name ------------------------------------------------


def _prov_infos(fakewin: FakeWin) -> int:
    return int(fakewin.ctl.FakeWin_LiveHandlesOfKind(b"crypt32.keyprovinfo"))


def _raw_prov_info(provider: str, name: str, key_spec: int = 0) -> tuple[Any, list[Any]]:
    """A CRYPT_KEY_PROV_INFO built by hand, plus the buffers it points to (keep them referenced)."""
    provider_buf = ffi.new("char16_t[]", provider)
    name_buf = ffi.new("char16_t[]", name)
    info = ffi.new("CRYPT_KEY_PROV_INFO *")
    info.pwszProvName = provider_buf
    info.pwszContainerName = name_buf
    info.dwKeySpec = key_spec
    return info, [provider_buf, name_buf]


def test_keyguard_key_names_are_exposed(key: KeyGuardKey) -> None:
    assert key.key_name == DEFAULT_KEY_NAME
    assert key.provider_name == "Microsoft Software Key Storage Provider"


def test_property_2_round_trip(fakewin: FakeWin, key: KeyGuardKey, cert_der: bytes) -> None:
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        assert ctx.key_provider_info() is None  # missing: CRYPT_E_NOT_FOUND -> None
        ctx.bind_key_provider_info(key.provider_name, key.key_name)
        info = ctx.key_provider_info()
        assert info == KeyProvInfo(
            container_name=key.key_name,
            provider_name=key.provider_name,
            provider_type=c32.KEY_PROV_TYPE_CNG,
            flags=c32.NCRYPT_SILENT_FLAG,  # opened by name without any UI
            key_spec=c32.KEY_SPEC_NONE,
            param_count=0,
        )
        assert info is not None and info.key_spec != c32.CERT_NCRYPT_KEY_SPEC
        assert ctx.ncrypt_key_handle() is None  # the names do not attach a handle
        assert fakewin.prop78_sets() == 0
        # two-pass read: the structure, then both strings (NUL-terminated UTF-16) after it
        raw = ctx.get_property(c32.CERT_KEY_PROV_INFO_PROP_ID)
        strings = 2 * (len(key.key_name) + 1) + 2 * (len(key.provider_name) + 1)
        assert raw is not None and len(raw) == ffi.sizeof("CRYPT_KEY_PROV_INFO") + strings


def test_property_2_non_ascii_names(fakewin: FakeWin, cert_der: bytes) -> None:
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        ctx.bind_key_provider_info("Ünïcode KSP", "ключ-\U0001f511")  # a surrogate pair in UTF-16
        info = ctx.key_provider_info()
        assert info is not None
        assert (info.provider_name, info.container_name) == ("Ünïcode KSP", "ключ-\U0001f511")


def test_property_2_is_copied_by_crypt32(fakewin: FakeWin, cert_der: bytes) -> None:
    """Our buffers need to live only for the call: overwriting them afterwards changes nothing."""
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        info, buffers = _raw_prov_info("Provider A", "Key A")
        assert ctx._lib.CertSetCertificateContextProperty(ctx.ptr, c32.CERT_KEY_PROV_INFO_PROP_ID, 0, info)
        for buf in buffers:
            ffi.memmove(buf, b"\xff" * ffi.sizeof(buf), ffi.sizeof(buf))
        info.dwKeySpec = 2
        del info, buffers
        read = ctx.key_provider_info()
        assert read is not None
        assert (read.provider_name, read.container_name, read.key_spec) == ("Provider A", "Key A", 0)


def test_property_2_is_freed_with_the_context(fakewin: FakeWin, cert_der: bytes) -> None:
    before = _prov_infos(fakewin)
    ctx = CertContext.from_der(fakewin.libraries.crypt32, cert_der)
    ctx.bind_key_provider_info("P", "K")
    assert _prov_infos(fakewin) == before + 1
    dup = CertContext(ctx._lib, ctx._lib.CertDuplicateCertificateContext(ctx.ptr))
    ctx.close()
    assert _prov_infos(fakewin) == before + 1  # a reference is left: the property lives on
    assert dup.key_provider_info() is not None
    dup.close()  # the final free frees the copy
    assert _prov_infos(fakewin) == before


def test_property_2_replaced_and_deleted(fakewin: FakeWin, cert_der: bytes) -> None:
    before = _prov_infos(fakewin)
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        ctx.bind_key_provider_info("P", "first")
        ctx.bind_key_provider_info("P", "second")  # "its old value is replaced"
        assert _prov_infos(fakewin) == before + 1
        info = ctx.key_provider_info()
        assert info is not None and info.container_name == "second"
        # pvData NULL deletes the property
        assert ctx._lib.CertSetCertificateContextProperty(ctx.ptr, c32.CERT_KEY_PROV_INFO_PROP_ID, 0, ffi.NULL)
        assert ctx.key_provider_info() is None
        assert _prov_infos(fakewin) == before


def test_property_2_short_buffer_is_more_data(fakewin: FakeWin, cert_der: bytes) -> None:
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        ctx.bind_key_provider_info("P", "K")
        size = ffi.new("uint32_t *", 8)
        buf = ffi.new("uint8_t[]", 8)
        assert not ctx._lib.CertGetCertificateContextProperty(ctx.ptr, c32.CERT_KEY_PROV_INFO_PROP_ID, buf, size)
        assert last_error() == c32.ERROR_MORE_DATA
        assert size[0] == ffi.sizeof("CRYPT_KEY_PROV_INFO") + 2 * 2 + 2 * 2


def test_property_2_cng_with_params_is_refused(fakewin: FakeWin, cert_der: bytes) -> None:
    """dwProvType 0: cProvParam "must be zero" and rgProvParam "must be NULL"."""
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        info, _buffers = _raw_prov_info("P", "K")
        param = ffi.new("CRYPT_KEY_PROV_PARAM *")
        info.cProvParam = 1
        info.rgProvParam = param
        assert not ctx._lib.CertSetCertificateContextProperty(ctx.ptr, c32.CERT_KEY_PROV_INFO_PROP_ID, 0, info)
        assert last_error() == c32.E_INVALIDARG
        assert ctx.key_provider_info() is None


@pytest.mark.parametrize(("provider", "name"), [("", "K"), ("P", ""), ("P", "K\0x")])
def test_bind_key_provider_info_refuses_bad_names(fakewin: FakeWin, cert_der: bytes, provider: str, name: str) -> None:
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx, pytest.raises(ValueError):
        ctx.bind_key_provider_info(provider, name)
