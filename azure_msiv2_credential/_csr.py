"""PKCS#10 CSR builder for a key we cannot hand to ``cryptography`` (PROTOCOL.md §3).

``cryptography`` signs CSRs only with keys it holds; a KeyGuard key signs through NCrypt. So we assemble the
DER ourselves over any :class:`BindingKey` — a dozen fixed structures, tested field by field with
``cryptography`` and ``openssl req -verify``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cryptography.hazmat.primitives import serialization

from .keys import BindingKey
from .keys._base import PSS_SALT_LENGTH

# Object identifiers, DER-encoded once.
_OID_COMMON_NAME = "2.5.4.3"
_OID_DOMAIN_COMPONENT = "0.9.2342.19200300.100.1.25"
_OID_CU_ID = "1.3.6.1.4.1.311.90.2.10"  # Microsoft attribute carrying the compute unit id JSON
_OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
_OID_MGF1 = "1.2.840.113549.1.1.8"
_OID_SHA256 = "2.16.840.1.101.3.4.2.1"

# Universal tags used below.
_INTEGER, _BIT_STRING, _NULL, _OID, _UTF8, _IA5 = 0x02, 0x03, 0x05, 0x06, 0x0C, 0x16
_SEQUENCE, _SET = 0x30, 0x31


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + length + content


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(arc) for arc in dotted.split("."))
    body = bytearray()
    for arc in (40 * first + second, *rest):
        chunk = [arc & 0x7F]
        remaining = arc >> 7
        while remaining:
            chunk.append(0x80 | (remaining & 0x7F))
            remaining >>= 7
        body.extend(reversed(chunk))
    return _tlv(_OID, bytes(body))


def _int(value: int) -> bytes:
    return _tlv(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _seq(*items: bytes) -> bytes:
    return _tlv(_SEQUENCE, b"".join(items))


def _rdn(oid: str, tag: int, value: str) -> bytes:
    encoded = value.encode("utf-8" if tag == _UTF8 else "ascii")
    return _tlv(_SET, _seq(_oid(oid), _tlv(tag, encoded)))


def _sha256_algorithm() -> bytes:
    return _seq(_oid(_OID_SHA256), _tlv(_NULL, b""))


#: AlgorithmIdentifier for RSASSA-PSS with SHA-256, MGF1-SHA-256 and salt 32 (RFC 4055 §3.1); trailer default.
PSS_SHA256_ALGORITHM = _seq(
    _oid(_OID_RSASSA_PSS),
    _seq(
        _tlv(0xA0, _sha256_algorithm()),
        _tlv(0xA1, _seq(_oid(_OID_MGF1), _sha256_algorithm())),
        _tlv(0xA2, _int(PSS_SALT_LENGTH)),
    ),
)


def cu_id_json(cu_id: Mapping[str, str]) -> str:
    """Compact JSON of the compute unit id: ``vmId`` then ``vmssId``, absent or empty members omitted."""
    ordered = {name: cu_id[name] for name in ("vmId", "vmssId") if cu_id.get(name)}
    return json.dumps(ordered, separators=(",", ":"))


def build_csr(key: BindingKey, *, client_id: str, tenant_id: str, cu_id: Mapping[str, str]) -> bytes:
    """Return the DER CSR: subject ``CN=client_id, DC=tenant_id``, the cuId attribute, PSS-signed by ``key``."""
    subject = _seq(
        _rdn(_OID_COMMON_NAME, _UTF8, client_id),
        _rdn(_OID_DOMAIN_COMPONENT, _IA5, tenant_id),
    )
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cu_id_attribute = _seq(_oid(_OID_CU_ID), _tlv(_SET, _tlv(_UTF8, cu_id_json(cu_id).encode("utf-8"))))
    info = _seq(_int(0), subject, spki, _tlv(0xA0, cu_id_attribute))
    signature = key.sign_pss_sha256(info)
    return _seq(info, PSS_SHA256_ALGORITHM, _tlv(_BIT_STRING, b"\x00" + signature))
