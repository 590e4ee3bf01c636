"""CertContext against the fake crypt32.dll: creation, property 78 ownership, two-pass reads, leak-free."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID

from azure_msiv2_credential._native import NativeError
from azure_msiv2_credential._native import crypt32 as c32
from azure_msiv2_credential._native.crypt32 import CertContext, Crypt32Error
from azure_msiv2_credential.keys.keyguard import KeyGuardKey, KeyGuardKeyProvider

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


def test_property_78_binds_the_key(fakewin: FakeWin, key: KeyGuardKey, cert_der: bytes) -> None:
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        ctx.bind_ncrypt_key(key.native_handle, key)
        assert ctx.ncrypt_key_handle() == key.native_handle
        raw = ctx.get_property(c32.CERT_NCRYPT_KEY_HANDLE_PROP_ID)
        assert raw is not None and len(raw) == 8  # two-pass read of a ULONG_PTR


def test_freeing_the_context_does_not_free_the_key(fakewin: FakeWin, key: KeyGuardKey, cert_der: bytes) -> None:
    """CERT_NCRYPT_KEY_HANDLE_PROP_ID borrows the handle: the key object stays its only owner."""
    keys_before = int(fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.key"))
    bad_before = fakewin.bad_frees()
    ctx = CertContext.from_der(fakewin.libraries.crypt32, cert_der)
    ctx.bind_ncrypt_key(key.native_handle, key)
    ctx.close()
    assert int(fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.key")) == keys_before
    signature = key.sign_pss_sha256(b"still usable")
    key.public_key().verify(signature, b"still usable", PSS, hashes.SHA256())
    assert fakewin.bad_frees() == bad_before  # and closing the key later is not a double free


def test_context_keeps_the_key_owner_alive(fakewin: FakeWin, key: KeyGuardKey, cert_der: bytes) -> None:
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx:
        owner = object()
        ctx.bind_ncrypt_key(key.native_handle, owner)
        assert ctx._key_owner is owner
    assert ctx._key_owner is None


def test_bind_refuses_a_null_handle(fakewin: FakeWin, cert_der: bytes) -> None:
    with CertContext.from_der(fakewin.libraries.crypt32, cert_der) as ctx, pytest.raises(ValueError):
        ctx.bind_ncrypt_key(0, object())


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
