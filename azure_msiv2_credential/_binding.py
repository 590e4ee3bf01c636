"""A binding: the issued certificate, the key it certifies and what the token leg needs to use them."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509

from .keys import BindingKey, BindingStrength


def x5t_s256(certificate_der: bytes) -> str:
    """``cnf.x5t#S256`` of a certificate: base64url(SHA-256(DER)) without padding (RFC 8705)."""
    return base64.urlsafe_b64encode(hashlib.sha256(certificate_der).digest()).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, eq=False, repr=False)
class Binding:
    """An IMDS-issued client certificate bound to ``key``; compared by identity.

    Holds no TLS state of its own: transports keep per-binding contexts and pools keyed by the object.
    """

    certificate: x509.Certificate
    certificate_der: bytes
    key: BindingKey
    thumbprint: str  # x5t#S256
    not_before: float
    not_after: float
    rotate_at: float
    client_id: str
    tenant_id: str
    token_endpoint: str
    identity_type: str
    attested: bool

    @property
    def strength(self) -> BindingStrength:
        return self.key.strength

    @property
    def expires_at_iso(self) -> str:
        return datetime.fromtimestamp(self.not_after, timezone.utc).isoformat(timespec="seconds")

    def __repr__(self) -> str:
        return (
            f"Binding(client_id={self.client_id!r}, thumbprint={self.thumbprint!r}, "
            f"not_after={self.expires_at_iso!r}, strength={self.strength!r}, attested={self.attested})"
        )
