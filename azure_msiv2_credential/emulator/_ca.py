"""The emulator's private certificate authority.

One CA signs both the HTTPS server certificate (so clients trust the emulator through a CA bundle,
never by switching verification off) and the client certificates ``issuecredential`` hands out
(so the token service and the resource can require exactly "a certificate from this CA"). The CA
private key lives only in this object.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLOCK_SKEW = datetime.timedelta(seconds=60)
"""Issued certificates start this long in the past, so a client clock slightly behind still accepts them."""


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _serial() -> int:
    # RFC 5280: positive, at most 20 octets; 159 random bits keeps it positive and unique.
    return secrets.randbits(159) | 1


class CertificateAuthority:
    """A self-signed root that issues server and client certificates."""

    def __init__(self, common_name: str = "MSI v2 Emulator Root CA") -> None:
        self._key = new_rsa_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = utcnow()
        public_key = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    def _leaf(self, subject: x509.Name, public_key: rsa.RSAPublicKey) -> x509.CertificateBuilder:
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        )

    def issue_server_certificate(self, key: rsa.RSAPrivateKey) -> x509.Certificate:
        """A TLS server certificate for ``localhost`` and ``127.0.0.1``."""
        now = utcnow()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        san = x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        )
        return (
            self._leaf(subject, key.public_key())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(san, critical=False)
            .sign(self._key, hashes.SHA256())
        )

    def issue_client_certificate(
        self,
        subject: x509.Name,
        public_key: rsa.RSAPublicKey,
        not_before: datetime.datetime,
        not_after: datetime.datetime,
    ) -> x509.Certificate:
        """A TLS client certificate, as IMDS issues for a CSR."""
        return (
            self._leaf(subject, public_key)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
