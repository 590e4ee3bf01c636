"""Strict validation of the PKCS#10 CSR sent to ``issuecredential`` (PROTOCOL.md section 3).

The emulator is stricter than it needs to be on purpose: every deviation from the contract that a
real IMDS might reject, or silently accept today and reject tomorrow, fails here with a reason.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from . import _der

CUID_ATTRIBUTE_OID = "1.3.6.1.4.1.311.90.2.10"
_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_RSASSA_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
_SHA256 = "2.16.840.1.101.3.4.2.1"
_COMMON_NAME = "2.5.4.3"
_DOMAIN_COMPONENT = "0.9.2342.19200300.100.1.25"


class CsrRejected(ValueError):
    """The CSR breaks the contract; ``str(exc)`` is the reason returned to the client."""


def validate_csr(
    der: bytes, *, client_id: str, tenant_id: str, cuid_json: str
) -> tuple[x509.CertificateSigningRequest, rsa.RSAPublicKey]:
    """Check ``der`` against the contract; return the parsed CSR and its public key."""
    try:
        _check_structure(der, client_id=client_id, tenant_id=tenant_id, cuid_json=cuid_json)
    except _der.DerError as exc:
        raise CsrRejected(f"csr is not a valid DER PKCS#10 request: {exc}") from exc
    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CsrRejected("csr is not a valid DER PKCS#10 request") from exc
    key = csr.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CsrRejected("csr key must be RSA")
    if key.key_size != 2048 or key.public_numbers().e != 65537:
        raise CsrRejected("csr key must be RSA 2048 with public exponent 65537")
    if not isinstance(csr.signature_hash_algorithm, hashes.SHA256):
        raise CsrRejected("csr signature hash must be SHA-256")
    if not csr.is_signature_valid:
        raise CsrRejected("csr signature is invalid")
    return csr, key


def _check_structure(der: bytes, *, client_id: str, tenant_id: str, cuid_json: str) -> None:
    outer = _der.parse_single(der).expect(_der.SEQUENCE, "CertificationRequest").children()
    if len(outer) != 3:
        raise CsrRejected("csr must hold certificationRequestInfo, signatureAlgorithm and signature")
    info, sig_alg, signature = outer
    signature.expect(_der.BIT_STRING, "signature")
    _check_signature_algorithm(sig_alg.expect(_der.SEQUENCE, "signatureAlgorithm"))

    fields = info.expect(_der.SEQUENCE, "certificationRequestInfo").children()
    if len(fields) != 4:
        raise CsrRejected("certificationRequestInfo must hold version, subject, key and attributes")
    version, subject, spki, attributes = fields
    if _der.decode_int(version) != 0:
        raise CsrRejected("csr version must be 0 (v1)")
    _check_subject(subject.expect(_der.SEQUENCE, "subject"), client_id, tenant_id)
    _check_spki(spki.expect(_der.SEQUENCE, "subjectPublicKeyInfo"))
    _check_attributes(attributes.expect(0xA0, "attributes"), cuid_json)


def _algorithm(tlv: _der.Tlv, what: str) -> tuple[str, list[_der.Tlv]]:
    parts = tlv.expect(_der.SEQUENCE, what).children()
    if not parts:
        raise CsrRejected(f"{what} is empty")
    return _der.decode_oid(parts[0]), parts[1:]


def _check_hash_algorithm(tlv: _der.Tlv, what: str) -> None:
    oid, params = _algorithm(tlv, what)
    if oid != _SHA256:
        raise CsrRejected(f"{what} must be SHA-256")
    # Both absent parameters and NULL are seen in the wild for SHA-2 identifiers.
    if params and (len(params) != 1 or params[0].tag != _der.NULL or params[0].content):
        raise CsrRejected(f"{what} has unexpected parameters")


def _check_signature_algorithm(sig_alg: _der.Tlv) -> None:
    oid, params = _algorithm(sig_alg, "signatureAlgorithm")
    if oid != _RSASSA_PSS:
        raise CsrRejected(f"signature algorithm must be RSASSA-PSS ({_RSASSA_PSS}), got {oid}")
    if len(params) != 1:
        raise CsrRejected("RSASSA-PSS parameters are missing")
    # Absent fields take the RFC 4055 defaults (SHA-1, MGF1-SHA-1, salt 20), all of which are wrong here.
    explicit = {item.tag: item for item in params[0].expect(_der.SEQUENCE, "RSASSA-PSS-params").children()}
    if set(explicit) - {0xA0, 0xA1, 0xA2, 0xA3}:
        raise CsrRejected("RSASSA-PSS parameters hold unknown fields")
    if 0xA0 not in explicit:
        raise CsrRejected("RSASSA-PSS hash must be SHA-256 (found the SHA-1 default)")
    _check_hash_algorithm(_der.parse_single(explicit[0xA0].content), "RSASSA-PSS hash")
    if 0xA1 not in explicit:
        raise CsrRejected("RSASSA-PSS mask generation must be MGF1-SHA-256 (found the SHA-1 default)")
    mgf_oid, mgf_params = _algorithm(_der.parse_single(explicit[0xA1].content), "RSASSA-PSS mgf")
    if mgf_oid != _MGF1 or len(mgf_params) != 1:
        raise CsrRejected("RSASSA-PSS mask generation must be MGF1")
    _check_hash_algorithm(mgf_params[0], "RSASSA-PSS MGF1 hash")
    if 0xA2 not in explicit:
        raise CsrRejected("RSASSA-PSS salt length must be 32 (found the default 20)")
    salt = _der.decode_int(_der.parse_single(explicit[0xA2].content))
    if salt != 32:
        raise CsrRejected(f"RSASSA-PSS salt length must be 32, got {salt}")
    if 0xA3 in explicit and _der.decode_int(_der.parse_single(explicit[0xA3].content)) != 1:
        raise CsrRejected("RSASSA-PSS trailer field must be 1")


def _check_subject(subject: _der.Tlv, client_id: str, tenant_id: str) -> None:
    rdns = subject.children()
    if len(rdns) != 2:
        raise CsrRejected("subject must be exactly two RDNs: CN=<clientId> then DC=<tenantId>")
    seen: dict[str, tuple[int, bytes]] = {}
    for rdn, wanted in zip(rdns, (_COMMON_NAME, _DOMAIN_COMPONENT)):
        atvs = rdn.expect(_der.SET, "relative distinguished name").children()
        if len(atvs) != 1:
            raise CsrRejected("each subject RDN must hold exactly one attribute (no multi-valued RDNs)")
        parts = atvs[0].expect(_der.SEQUENCE, "attribute type and value").children()
        if len(parts) != 2:
            raise CsrRejected("subject attribute must be a type and a value")
        oid = _der.decode_oid(parts[0])
        if oid != wanted:
            raise CsrRejected("subject must be exactly CN=<clientId> then DC=<tenantId>, in that order")
        seen[oid] = (parts[1].tag, parts[1].content)
    cn_tag, cn_value = seen[_COMMON_NAME]
    if cn_tag != _der.UTF8_STRING:
        raise CsrRejected("subject CN must be a UTF8String")
    if cn_value != client_id.encode():
        raise CsrRejected("subject CN must equal the clientId of the selected identity")
    dc_tag, dc_value = seen[_DOMAIN_COMPONENT]
    if dc_tag != _der.IA5_STRING:
        raise CsrRejected("subject DC must be an IA5String")
    if dc_value != tenant_id.encode():
        raise CsrRejected("subject DC must equal the tenantId")


def _check_spki(spki: _der.Tlv) -> None:
    parts = spki.children()
    if len(parts) != 2:
        raise CsrRejected("subjectPublicKeyInfo is malformed")
    oid, params = _algorithm(parts[0], "subjectPublicKeyInfo algorithm")
    if oid != _RSA_ENCRYPTION:
        raise CsrRejected(f"key algorithm must be rsaEncryption ({_RSA_ENCRYPTION})")
    if len(params) != 1 or params[0].tag != _der.NULL or params[0].content:
        raise CsrRejected("rsaEncryption key parameters must be NULL")


def _check_attributes(attributes: _der.Tlv, cuid_json: str) -> None:
    items = attributes.children()
    if len(items) != 1:
        raise CsrRejected(f"csr must hold exactly one attribute ({CUID_ATTRIBUTE_OID}), found {len(items)}")
    parts = items[0].expect(_der.SEQUENCE, "attribute").children()
    if len(parts) != 2:
        raise CsrRejected("attribute must be a type and a set of values")
    oid = _der.decode_oid(parts[0])
    if oid != CUID_ATTRIBUTE_OID:
        raise CsrRejected(f"csr attribute must be {CUID_ATTRIBUTE_OID}, got {oid}")
    values = parts[1].expect(_der.SET, "attribute values").children()
    if len(values) != 1:
        raise CsrRejected("cuId attribute must hold exactly one value")
    if values[0].tag != _der.UTF8_STRING:
        raise CsrRejected("cuId attribute value must be a UTF8String")
    if values[0].content != cuid_json.encode():
        raise CsrRejected(f"cuId attribute value must be exactly {cuid_json}")
