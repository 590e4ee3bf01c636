"""IMDS v2 endpoints: getplatformmetadata, issuecredential (strict CSR checks, attestation)."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any
from urllib.parse import quote

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from azure_msiv2_credential.emulator import Emulator

from ._helpers import (
    CUID_OID,
    METADATA,
    PSS_ALG,
    SHA256_ALG,
    build_csr,
    cuid_json,
    der,
    der_int,
    der_oid,
    fake_attestation,
    hand_csr,
    issue,
    valid_csr,
)

IMDS_SERVER = "IMDS/150.870.65.1854"
SHA1_ALG = der(0x30, der_oid("1.3.14.3.2.26") + der(0x05, b""))
ATTESTATION_MISSING = "Attestation Token is missing / empty in the issue credential request"


def metadata(emu: Emulator, query: str = "", headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(
        f"{emu.imds_url}/metadata/identity/getplatformmetadata?cred-api-version=2.0{query}",
        headers=METADATA if headers is None else headers,
        timeout=10,
    )


def error_of(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body["error_description"]


# --- getplatformmetadata ---------------------------------------------------------------------


def test_metadata_without_selector_is_the_system_identity(emu: Emulator) -> None:
    response = metadata(emu)
    assert response.status_code == 200
    assert response.headers["Server"] == IMDS_SERVER
    assert response.json() == {
        "clientId": emu.system_identity.client_id,
        "tenantId": emu.tenant_id,
        "cuId": emu.cu_id,
        "attestationEndpoint": "https://sharedeus2.eus2.attest.azure.net",
    }
    assert emu.calls["getplatformmetadata"] == 1


@pytest.mark.parametrize("selector", ["client_id", "object_id", "mi_res_id"])
def test_metadata_selectors_pick_the_user_assigned_identity(emu: Emulator, selector: str) -> None:
    uami = emu.identities[2]
    value = {"client_id": uami.client_id, "object_id": uami.object_id, "mi_res_id": uami.resource_id}[selector]
    response = metadata(emu, f"&{selector}={quote(value, safe='')}")
    assert response.status_code == 200
    assert response.json()["clientId"] == uami.client_id


def test_metadata_rejects_msi_res_id(emu: Emulator) -> None:
    response = metadata(emu, f"&msi_res_id={emu.identities[1].resource_id}")
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": "Unsupported query variables"}
    assert response.headers["Server"] == IMDS_SERVER


def test_metadata_unknown_identity(emu: Emulator) -> None:
    response = metadata(emu, "&client_id=00000000-0000-0000-0000-000000000000")
    assert error_of(response) == (400, "invalid_request", "Identity not found")


def test_metadata_two_selectors(emu: Emulator) -> None:
    uami = emu.identities[1]
    response = metadata(emu, f"&client_id={uami.client_id}&object_id={uami.object_id}")
    assert response.status_code == 400
    assert "Only one of" in response.json()["error_description"]


def test_probe_without_metadata_header_gets_400(emu: Emulator) -> None:
    response = metadata(emu, headers={})
    assert error_of(response) == (400, "invalid_request", "Required metadata header not specified")
    assert response.headers["Server"] == IMDS_SERVER


@pytest.mark.parametrize("query", ["", "?cred-api-version=1.0"])
def test_metadata_requires_cred_api_version_2(emu: Emulator, query: str) -> None:
    response = requests.get(
        f"{emu.imds_url}/metadata/identity/getplatformmetadata{query}", headers=METADATA, timeout=10
    )
    assert error_of(response) == (400, "invalid_request", "cred-api-version must be 2.0")


def test_v1_only_host_answers_404(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    emu.v1_only = True
    assert metadata(emu).status_code == 404
    assert metadata(emu, headers={}).status_code == 404  # the probe sees no IMDSv2 either
    assert issue(emu, valid_csr(emu, key)).status_code == 404
    emu.v1_only = False
    assert metadata(emu).status_code == 200


def test_unknown_path_and_wrong_method(emu: Emulator) -> None:
    assert requests.get(f"{emu.imds_url}/metadata/instance", headers=METADATA, timeout=10).status_code == 404
    response = requests.post(
        f"{emu.imds_url}/metadata/identity/getplatformmetadata?cred-api-version=2.0", headers=METADATA, timeout=10
    )
    assert response.status_code == 405


def test_cu_id_without_vmss(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    emu.cu_id = {"vmId": emu.cu_id["vmId"]}
    assert metadata(emu).json()["cuId"] == emu.cu_id
    assert issue(emu, valid_csr(emu, key)).status_code == 200


# --- issuecredential: the happy path -----------------------------------------------------------


def test_issue_credential_system_assigned(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    emu.cert_lifetime = 3 * 3600
    csr_der = valid_csr(emu, key)
    before = datetime.datetime.now(datetime.timezone.utc)
    response = issue(emu, csr_der)
    assert response.status_code == 200, response.text
    assert response.headers["Server"] == IMDS_SERVER
    body = response.json()
    assert set(body) == {"client_id", "tenant_id", "certificate", "identity_type", "mtls_authentication_endpoint"}
    assert body["client_id"] == emu.system_identity.client_id
    assert body["tenant_id"] == emu.tenant_id
    assert body["identity_type"] == "SystemAssigned"
    assert body["mtls_authentication_endpoint"] == emu.token_service_url

    cert = x509.load_der_x509_certificate(base64.b64decode(body["certificate"]))
    assert cert.issuer == emu.ca_certificate.subject
    assert cert.subject == x509.load_der_x509_csr(csr_der).subject
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(emu.ca_certificate)
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha256"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    not_before = cert.not_valid_before_utc
    assert abs((before - not_before).total_seconds() - 60) < 5
    assert (cert.not_valid_after_utc - not_before).total_seconds() == pytest.approx(3 * 3600, abs=1)
    assert emu.issued_certificates[-1] == cert
    assert emu.calls["issuecredential"] == 1


def test_issue_credential_user_assigned(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    uami = emu.identities[1]
    response = issue(emu, valid_csr(emu, key, uami), f"&object_id={uami.object_id}")
    assert response.status_code == 200, response.text
    assert response.json()["identity_type"] == "UserAssigned"
    assert response.json()["client_id"] == uami.client_id


def test_issue_credential_serials_are_unique(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    csr_der = valid_csr(emu, key)
    assert issue(emu, csr_der).status_code == 200
    assert issue(emu, csr_der).status_code == 200
    assert emu.issued_certificates[-1].serial_number != emu.issued_certificates[-2].serial_number


# --- issuecredential: request validation --------------------------------------------------------


def test_issue_requires_metadata_header(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    response = issue(emu, valid_csr(emu, key), headers={})
    assert error_of(response) == (400, "invalid_request", "Required metadata header not specified")


def test_issue_rejects_msi_res_id(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    uami = emu.identities[1]
    response = issue(emu, valid_csr(emu, key, uami), f"&msi_res_id={uami.resource_id}")
    assert error_of(response) == (400, "invalid_request", "Unsupported query variables")


def test_issue_csr_for_another_identity(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    # CN names the system identity, the selector names a user-assigned one.
    response = issue(emu, valid_csr(emu, key), f"&client_id={emu.identities[1].client_id}")
    assert error_of(response) == (
        400,
        "invalid_request",
        "subject CN must equal the clientId of the selected identity",
    )


def post_raw(emu: Emulator, body: bytes, content_type: str = "application/json") -> requests.Response:
    return requests.post(
        f"{emu.imds_url}/metadata/identity/issuecredential?cred-api-version=2.0",
        data=body,
        headers={**METADATA, "Content-Type": content_type},
        timeout=10,
    )


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{}", "application/json", "csr is missing"),
        (b'{"csr": ""}', "application/json", "csr is missing"),
        (b"not json", "application/json", "request body is not JSON"),
        (b"[]", "application/json", "request body must be a JSON object"),
        (b'{"csr": "abc"}', "text/plain", "Content-Type must be application/json"),
        (b'{"csr": "-----BEGIN CERTIFICATE REQUEST-----"}', "application/json", "csr is not valid base64"),
        (b'{"csr": "AAAA", "extra": 1}', "application/json", "unexpected field(s) in request body: extra"),
        (b'{"csr": "AAAA"}', "application/json", "csr is not a valid DER PKCS#10 request"),
        (b'{"csr": "AAAA", "attestation_token": 5}', "application/json", "attestation_token must be a string"),
    ],
)
def test_issue_body_validation(emu: Emulator, body: bytes, content_type: str, reason: str) -> None:
    status, error, description = error_of(post_raw(emu, body, content_type))
    assert (status, error) == (400, "invalid_request")
    assert description.startswith(reason)


def _bad(emu: Emulator, key: rsa.RSAPrivateKey, **kwargs: Any) -> bytes:
    args: dict[str, Any] = {"cn": emu.system_identity.client_id, "dc": emu.tenant_id, "cuid": cuid_json(emu)}
    args.update(kwargs)
    return build_csr(key, **args)


def _pss(hash_algorithm: hashes.HashAlgorithm, salt: int) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=salt)


CSR_CASES: dict[str, tuple[Any, str]] = {
    "pkcs1v15 signature": (
        lambda emu, key: _bad(emu, key, rsa_padding=padding.PKCS1v15()),
        "signature algorithm must be RSASSA-PSS",
    ),
    "pss salt 20 (DER omits the default)": (
        lambda emu, key: _bad(emu, key, rsa_padding=_pss(hashes.SHA256(), 20)),
        "RSASSA-PSS salt length must be 32 (found the default 20)",
    ),
    "pss salt 64": (
        lambda emu, key: _bad(emu, key, rsa_padding=_pss(hashes.SHA256(), 64)),
        "RSASSA-PSS salt length must be 32, got 64",
    ),
    "pss sha384": (
        lambda emu, key: _bad(emu, key, rsa_padding=_pss(hashes.SHA384(), 32), hash_algorithm=hashes.SHA384()),
        "RSASSA-PSS hash must be SHA-256",
    ),
    "pss mgf1 sha1": (
        # cryptography's builder refuses SHA-1 anywhere, so this one is assembled by hand.
        lambda emu, key: hand_csr(
            emu,
            key,
            sig_alg=der(
                0x30,
                der_oid("1.2.840.113549.1.1.10")
                + der(
                    0x30,
                    der(0xA0, SHA256_ALG)
                    + der(0xA1, der(0x30, der_oid("1.2.840.113549.1.1.8") + SHA1_ALG))
                    + der(0xA2, der_int(32)),
                ),
            ),
            pss=_pss(hashes.SHA1(), 32),
        ),
        "RSASSA-PSS MGF1 hash must be SHA-256",
    ),
    "wrong cn": (lambda emu, key: _bad(emu, key, cn="someone-else"), "subject CN must equal the clientId"),
    "cn printable": (
        lambda emu, key: _bad(emu, key, cn_type=_ASN1Type.PrintableString),
        "subject CN must be a UTF8String",
    ),
    "dc utf8": (lambda emu, key: _bad(emu, key, dc_type=_ASN1Type.UTF8String), "subject DC must be an IA5String"),
    "wrong dc": (lambda emu, key: _bad(emu, key, dc="other-tenant"), "subject DC must equal the tenantId"),
    "extra ou": (
        lambda emu, key: _bad(emu, key, extra_name=[x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x")]),
        "subject must be exactly two RDNs",
    ),
    "dc before cn": (
        lambda emu, key: _bad(emu, key, subject=lambda cn, dc: x509.Name([dc, cn])),
        "subject must be exactly CN=<clientId> then DC=<tenantId>, in that order",
    ),
    "cn and dc in one rdn": (
        lambda emu, key: _bad(
            emu,
            key,
            subject=lambda cn, dc: x509.Name(
                [x509.RelativeDistinguishedName([cn, dc]), x509.RelativeDistinguishedName([dc])]
            ),
        ),
        "each subject RDN must hold exactly one attribute",
    ),
    "multi-valued rdn only": (
        lambda emu, key: _bad(emu, key, subject=lambda cn, dc: x509.Name([x509.RelativeDistinguishedName([cn, dc])])),
        "subject must be exactly two RDNs",
    ),
    "cn twice": (
        lambda emu, key: _bad(emu, key, subject=lambda cn, dc: x509.Name([cn, cn])),
        "subject must be exactly CN=<clientId> then DC=<tenantId>, in that order",
    ),
    "no attribute": (lambda emu, key: _bad(emu, key, cuid=None), "csr must hold exactly one attribute"),
    "two attributes": (
        lambda emu, key: _bad(emu, key, extra_attributes=[(ObjectIdentifier("1.2.3.4"), b"x")]),
        "csr must hold exactly one attribute",
    ),
    "attribute printable": (
        lambda emu, key: _bad(emu, key, cuid_type=_ASN1Type.PrintableString),
        "cuId attribute value must be a UTF8String",
    ),
    "attribute with spaces": (
        lambda emu, key: _bad(emu, key, cuid=json.dumps(emu.cu_id)),
        "cuId attribute value must be exactly",
    ),
    "attribute reordered": (
        lambda emu, key: _bad(emu, key, cuid=json.dumps(dict(reversed(emu.cu_id.items())), separators=(",", ":"))),
        "cuId attribute value must be exactly",
    ),
    "attribute vmId only": (
        lambda emu, key: _bad(emu, key, cuid=json.dumps({"vmId": emu.cu_id["vmId"]}, separators=(",", ":"))),
        "cuId attribute value must be exactly",
    ),
    "version 1": (lambda emu, key: hand_csr(emu, key, version=1), "csr version must be 0"),
    "pss parameters defaulted": (
        lambda emu, key: hand_csr(emu, key, sig_alg=der(0x30, der_oid("1.2.840.113549.1.1.10") + der(0x30, b""))),
        "RSASSA-PSS hash must be SHA-256 (found the SHA-1 default)",
    ),
    "pss salt defaulted": (
        lambda emu, key: hand_csr(
            emu,
            key,
            sig_alg=der(
                0x30,
                der_oid("1.2.840.113549.1.1.10")
                + der(
                    0x30,
                    der(0xA0, SHA256_ALG) + der(0xA1, der(0x30, der_oid("1.2.840.113549.1.1.8") + SHA256_ALG)),
                ),
            ),
        ),
        "RSASSA-PSS salt length must be 32 (found the default 20)",
    ),
    "spki without null": (
        lambda emu, key: hand_csr(
            emu,
            key,
            spki=der(
                0x30,
                der(0x30, der_oid("1.2.840.113549.1.1.1"))
                + der(
                    0x03,
                    b"\x00"
                    + key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1),
                ),
            ),
        ),
        "rsaEncryption key parameters must be NULL",
    ),
    "bad signature": (
        lambda emu, key: hand_csr(emu, key, pss=_pss(hashes.SHA256(), 20)),
        "csr signature is invalid",
    ),
    "trailing bytes": (lambda emu, key: valid_csr(emu, key) + b"\x00", "csr is"),
}


@pytest.mark.parametrize("case", list(CSR_CASES))
def test_csr_validation_is_strict(emu: Emulator, key: rsa.RSAPrivateKey, case: str) -> None:
    make, reason = CSR_CASES[case]
    issued_before = len(emu.issued_certificates)
    response = issue(emu, make(emu, key))
    status, error, description = error_of(response)
    assert (status, error) == (400, "invalid_request"), description
    assert description.startswith(reason), description
    assert len(emu.issued_certificates) == issued_before


def test_hand_built_csr_matches_builder_output(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    """The DER writer used for the negative cases builds an acceptable CSR when left alone."""
    assert PSS_ALG in valid_csr(emu, key)
    assert issue(emu, hand_csr(emu, key)).status_code == 200
    assert der_int(32) == b"\x02\x01\x20"


@pytest.mark.parametrize(
    ("make_key", "reason"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "csr key must be RSA 2048"),
        (lambda: rsa.generate_private_key(public_exponent=3, key_size=2048), "csr key must be RSA 2048"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "signature algorithm must be RSASSA-PSS"),
    ],
)
def test_csr_key_must_be_rsa_2048_f4(emu: Emulator, make_key: Any, reason: str) -> None:
    response = issue(emu, _bad(emu, make_key()))
    status, _, description = error_of(response)
    assert status == 400
    assert description.startswith(reason), description


# --- attestation -------------------------------------------------------------------------------


def test_require_attestation_rejects_missing_token(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    emu.require_attestation = True
    assert error_of(issue(emu, valid_csr(emu, key))) == (400, "invalid_request", ATTESTATION_MISSING)
    assert error_of(issue(emu, valid_csr(emu, key), attestation_token="")) == (
        400,
        "invalid_request",
        ATTESTATION_MISSING,
    )


def test_require_attestation_accepts_valid_token(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    emu.require_attestation = True
    response = issue(emu, valid_csr(emu, key), attestation_token=fake_attestation(key))
    assert response.status_code == 200, response.text


def test_attestation_is_optional_by_default(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    assert issue(emu, valid_csr(emu, key)).status_code == 200
    assert issue(emu, valid_csr(emu, key), attestation_token=fake_attestation(key)).status_code == 200


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda key, other: fake_attestation(key, exp_in=-5), "attestation token invalid: expired"),
        (lambda key, other: fake_attestation(other), "attestation token invalid: keyguard_spki_sha256"),
        (lambda key, other: fake_attestation(key, spki=""), "attestation token invalid: keyguard_spki_sha256"),
        (lambda key, other: "not-a-jwt", "attestation token invalid: a JWT has three"),
        (lambda key, other: "a.bm90IGpzb24.c", "attestation token invalid: JWT payload is not JSON"),
        (lambda key, other: "a.e30.c", "attestation token invalid: exp is missing"),
        (lambda key, other: "", "attestation token invalid: empty"),
    ],
)
def test_attestation_token_is_checked(
    emu: Emulator, key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, make_token: Any, reason: str
) -> None:
    response = issue(emu, valid_csr(emu, key), attestation_token=make_token(key, other_key))
    status, error, description = error_of(response)
    assert (status, error) == (400, "invalid_request")
    assert description.startswith(reason), description


def test_csr_builder_really_signs_pss(key: rsa.RSAPrivateKey) -> None:
    """Guard for the tests above: cryptography's builder emits the PSS parameters we expect."""
    csr = x509.load_der_x509_csr(build_csr(key, cn="c", dc="d", cuid='{"vmId":"v"}'))
    assert csr.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.10"
    assert csr.attributes.get_attribute_for_oid(CUID_OID).value == b'{"vmId":"v"}'
