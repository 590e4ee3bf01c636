"""The hand-built CSR, checked field by field with cryptography and, when present, openssl."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import NameOID

from azure_msiv2_credential._csr import build_csr, cu_id_json
from azure_msiv2_credential.keys import SoftwareKeyProvider

CLIENT_ID = "0b5c6f8e-1111-4a2b-9c3d-123456789abc"
TENANT_ID = "7a1f0c2d-2222-4e3f-8a9b-abcdef012345"
CU_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.90.2.10")


@pytest.fixture(scope="module")
def key():  # type: ignore[no-untyped-def]
    return SoftwareKeyProvider().get_key()


@pytest.fixture(scope="module")
def csr_der(key) -> bytes:  # type: ignore[no-untyped-def]
    return build_csr(key, client_id=CLIENT_ID, tenant_id=TENANT_ID, cu_id={"vmId": "vm-1", "vmssId": "ss-2"})


def test_subject_and_string_types(csr_der: bytes) -> None:
    csr = x509.load_der_x509_csr(csr_der)
    rdns = list(csr.subject.rdns)
    assert [rdn._attributes[0].oid for rdn in rdns] == [NameOID.COMMON_NAME, NameOID.DOMAIN_COMPONENT]
    cn, dc = (rdn._attributes[0] for rdn in rdns)
    assert (cn.value, dc.value) == (CLIENT_ID, TENANT_ID)
    assert cn._type == x509.name._ASN1Type.UTF8String
    assert dc._type == x509.name._ASN1Type.IA5String


def test_version_key_and_attribute_bytes(csr_der: bytes, key) -> None:  # type: ignore[no-untyped-def]
    csr = x509.load_der_x509_csr(csr_der)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert csr.public_key().public_bytes(serialization.Encoding.DER, spki) == key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )
    # rsaEncryption with NULL parameters
    assert bytes.fromhex("300d06092a864886f70d0101010500") in csr_der
    attributes = list(csr.attributes)
    assert len(attributes) == 1
    assert attributes[0].oid == CU_OID
    assert attributes[0].value == b'{"vmId":"vm-1","vmssId":"ss-2"}'
    assert attributes[0]._type == 12  # UTF8String
    # version 0 is the first element of CertificationRequestInfo
    assert b"\x02\x01\x00" in csr_der[:12]


def test_pss_parameters_and_signature(csr_der: bytes, key) -> None:  # type: ignore[no-untyped-def]
    csr = x509.load_der_x509_csr(csr_der)
    assert csr.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.10"
    params = csr.signature_algorithm_parameters
    assert isinstance(params, padding.PSS)
    assert isinstance(params.mgf, padding.MGF1)
    assert params._salt_length == 32
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    assert csr.is_signature_valid
    key.public_key().verify(
        csr.signature,
        csr.tbs_certrequest_bytes,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )


def test_tampered_csr_fails_verification(csr_der: bytes) -> None:
    tampered = bytearray(csr_der)
    index = tampered.index(CLIENT_ID.encode())
    tampered[index] ^= 0x01
    assert not x509.load_der_x509_csr(bytes(tampered)).is_signature_valid


@pytest.mark.parametrize(
    ("cu_id", "expected"),
    [
        ({"vmId": "a"}, '{"vmId":"a"}'),
        ({"vmssId": "b", "vmId": "a"}, '{"vmId":"a","vmssId":"b"}'),
        ({"vmId": "a", "vmssId": "", "other": "x"}, '{"vmId":"a"}'),
    ],
)
def test_cu_id_json_is_compact_and_ordered(cu_id: dict[str, str], expected: str) -> None:
    assert cu_id_json(cu_id) == expected


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_req_verify(csr_der: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "req.der")
        path.write_bytes(csr_der)
        result = subprocess.run(
            ["openssl", "req", "-in", str(path), "-inform", "DER", "-verify", "-noout", "-text"],
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "verify OK" in result.stdout + result.stderr
    assert "rsassaPss" in result.stdout or "RSASSA-PSS" in result.stdout
    assert "Salt Length: 0x20" in result.stdout
