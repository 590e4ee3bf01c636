"""Helpers for the emulator tests: CSR builders (cryptography and a tiny DER writer) and the client flow."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID, ObjectIdentifier

from azure_msiv2_credential.emulator import Emulator, Identity

CUID_OID = ObjectIdentifier("1.3.6.1.4.1.311.90.2.10")
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
METADATA = {"Metadata": "true", "x-ms-client-request-id": str(uuid.uuid4())}
"""The headers both IMDS v2 calls need (one correlation id is enough for the emulator's checks)."""


# --- CSRs --------------------------------------------------------------------------------------


def cuid_json(emu: Emulator) -> str:
    return json.dumps({k: emu.cu_id[k] for k in ("vmId", "vmssId") if k in emu.cu_id}, separators=(",", ":"))


def build_csr(
    key: Any,
    *,
    cn: str,
    dc: str,
    cuid: str | None,
    cn_type: _ASN1Type = _ASN1Type.UTF8String,
    dc_type: _ASN1Type = _ASN1Type.IA5String,
    cuid_type: _ASN1Type = _ASN1Type.UTF8String,
    extra_name: list[Any] | None = None,
    extra_attributes: list[tuple[ObjectIdentifier, bytes]] | None = None,
    rsa_padding: Any = PSS,
    hash_algorithm: Any = None,
    subject: Callable[[x509.NameAttribute, x509.NameAttribute], x509.Name] | None = None,
) -> bytes:
    """DER of a CSR built with cryptography's builder (which can sign RSASSA-PSS).

    ``subject`` arranges the CN and DC attributes into a name of its own (order, RDN grouping).
    """
    cn_attr = x509.NameAttribute(NameOID.COMMON_NAME, cn, _type=cn_type)
    dc_attr = x509.NameAttribute(NameOID.DOMAIN_COMPONENT, dc, _type=dc_type)
    name = subject(cn_attr, dc_attr) if subject else x509.Name([cn_attr, dc_attr, *(extra_name or [])])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if cuid is not None:
        builder = builder.add_attribute(CUID_OID, cuid.encode(), _tag=cuid_type)
    for oid, value in extra_attributes or []:
        builder = builder.add_attribute(oid, value, _tag=_ASN1Type.UTF8String)
    if isinstance(key, rsa.RSAPrivateKey):
        csr = builder.sign(key, hash_algorithm or hashes.SHA256(), rsa_padding=rsa_padding)
    else:
        csr = builder.sign(key, hash_algorithm or hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def valid_csr(emu: Emulator, key: rsa.RSAPrivateKey, identity: Identity | None = None) -> bytes:
    identity = identity or emu.system_identity
    return build_csr(key, cn=identity.client_id, dc=emu.tenant_id, cuid=cuid_json(emu))


# A tiny DER writer, for CSRs the builder refuses to make (odd versions, PSS parameters, SPKI).


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([arcs[0] * 40 + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return der(0x06, bytes(body))


def der_int(value: int) -> bytes:
    return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


SHA256_ALG = der(0x30, der_oid("2.16.840.1.101.3.4.2.1") + der(0x05, b""))
PSS_ALG = der(
    0x30,
    der_oid("1.2.840.113549.1.1.10")
    + der(
        0x30,
        der(0xA0, SHA256_ALG)
        + der(0xA1, der(0x30, der_oid("1.2.840.113549.1.1.8") + SHA256_ALG))
        + der(0xA2, der_int(32)),
    ),
)


def hand_csr(
    emu: Emulator,
    key: rsa.RSAPrivateKey,
    *,
    version: int = 0,
    spki: bytes | None = None,
    sig_alg: bytes = PSS_ALG,
    pss: padding.PSS = PSS,
) -> bytes:
    """A CSR assembled by hand from a valid one's pieces, then signed with ``pss``."""
    parsed = x509.load_der_x509_csr(valid_csr(emu, key))
    good_info = parsed.tbs_certrequest_bytes
    # Re-split the valid info into its four elements to swap some of them.
    pieces = _split(good_info[_header_len(good_info) :])
    pieces[0] = der_int(version)
    if spki is not None:
        pieces[2] = spki
    info = der(0x30, b"".join(pieces))
    signature = key.sign(info, pss, hashes.SHA256())
    return der(0x30, info + sig_alg + der(0x03, b"\x00" + signature))


def _header_len(data: bytes) -> int:
    return 2 + (data[1] & 0x7F if data[1] & 0x80 else 0)


def _split(data: bytes) -> list[bytes]:
    out = []
    while data:
        head = _header_len(data)
        length = data[1] if data[1] < 0x80 else int.from_bytes(data[2:head], "big")
        out.append(data[: head + length])
        data = data[head + length :]
    return out


def fake_attestation(key: rsa.RSAPrivateKey, *, exp_in: float = 600, spki: str | None = None) -> str:
    def seg(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    if spki is None:
        spki_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        spki = base64.urlsafe_b64encode(hashlib.sha256(spki_der).digest()).rstrip(b"=").decode()
    payload = {"exp": int(time.time() + exp_in), "keyguard_spki_sha256": spki}
    return f"{seg({'alg': 'none'})}.{seg(payload)}.c2ln"


# --- the client side of the flow -----------------------------------------------------------------


def issue(
    emu: Emulator,
    csr_der: bytes,
    query: str = "",
    attestation_token: str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    body: dict[str, str] = {"csr": base64.b64encode(csr_der).decode()}
    if attestation_token is not None:
        body["attestation_token"] = attestation_token
    return requests.post(
        f"{emu.imds_url}/metadata/identity/issuecredential?cred-api-version=2.0{query}",
        json=body,
        headers=METADATA if headers is None else headers,
        timeout=10,
    )


@dataclass
class Minted:
    """A client certificate written to files for requests' ``cert=``, and what it was issued for."""

    identity: Identity
    certificate: x509.Certificate
    cert_path: str
    key_path: str
    response: dict[str, Any]

    @property
    def cert(self) -> tuple[str, str]:
        return (self.cert_path, self.key_path)


def write_pair(directory: Path, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> tuple[str, str]:
    """Test keys may touch the disk (the emulator's own key never does)."""
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def token_request(
    emu: Emulator,
    cert: tuple[str, str] | None,
    *,
    client_id: str,
    scope: str = "https://vault.azure.net/.default",
    tenant: str | None = None,
    extra: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "scope": scope,
        "token_type": "mtls_pop",
        **(extra or {}),
    }
    for name in drop:
        form.pop(name)
    return requests.post(
        f"{emu.token_service_url}/{tenant or emu.tenant_id}/oauth2/v2.0/token",
        data=form,
        cert=cert,
        verify=emu.ca_bundle_path,
        timeout=10,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Server-side bookkeeping of a rejected handshake may land just after the client sees the alert."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
