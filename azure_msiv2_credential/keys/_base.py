"""What the MSI v2 flow needs from a binding key, whatever holds it (software, KeyGuard, ...).

``keys/`` knows nothing of HTTP: a key signs, shows its public half and says how strong it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

#: How strongly a binding key is held; ordered weakest first (``"none"`` = no MSI v2 possible).
BindingStrength = Literal["none", "software", "keyguard"]
STRENGTH_ORDER: tuple[BindingStrength, ...] = ("none", "software", "keyguard")

#: PROTOCOL.md §3: RSA-2048 with e = 65537. The CSR signature is RSASSA-PSS/SHA-256/MGF1-SHA-256/salt 32.
RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
PSS_SALT_LENGTH = 32


@runtime_checkable
class BindingKey(Protocol):
    """An open RSA key that the certificate is bound to. The private half never leaves its holder."""

    @property
    def strength(self) -> BindingStrength:
        """``"software"`` or ``"keyguard"``."""

    @property
    def key_id(self) -> str:
        """A stable, non-secret id (e.g. the key name plus a public-key hash) for logs and cache keys."""

    def public_key(self) -> rsa.RSAPublicKey:
        """The public half, as a ``cryptography`` object."""

    def sign_pss_sha256(self, data: bytes) -> bytes:
        """Sign ``data`` with RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length 32."""


@runtime_checkable
class KeyProvider(Protocol):
    """Opens (or creates) the binding key. ``get_key`` is called once per certificate mint."""

    @property
    def strength(self) -> BindingStrength:
        """The strength of the keys this provider makes."""

    def get_key(self) -> BindingKey:
        """Return a usable key, creating it if needed; raise ``MsiV2Error`` when none can be had."""

    def close(self) -> None:
        """Release native handles; further ``get_key`` calls may reopen them."""
