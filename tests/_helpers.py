"""Shared helpers for the credential tests: a controllable clock, credential factories, certificate facts.

Import as ``from ._helpers import ...`` (``tests`` is a package).
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional, Union

from azure.core.credentials import AccessToken, AccessTokenInfo
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from azure_msiv2_credential import MsiV2ManagedIdentityCredential, SoftwareKeyProvider
from azure_msiv2_credential.aio import MsiV2ManagedIdentityCredential as AsyncMsiV2ManagedIdentityCredential
from azure_msiv2_credential.emulator import Emulator

DAY = 24 * 3600.0
HOUR = 3600.0
SCOPE = "https://vault.azure.net/.default"
RESOURCE = "https://vault.azure.net"
OTHER_SCOPE = "https://storage.azure.com/.default"
METHODS = ("get_token", "get_token_info")
#: The ``make`` fixture: builds a (sync or async) MSI v2 credential against the emulator.
Factory = Callable[..., Any]
#: A claims challenge as a resource would send it (the emulator echoes it into the token as ``xms_claims``).
CLAIMS_CHALLENGE = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'

Token = Union[AccessToken, AccessTokenInfo]


class FakeClock:
    """A ``() -> float`` epoch clock that only moves when told; starts at the real time (the emulator's)."""

    def __init__(self, start: Optional[float] = None) -> None:
        self.now = float(int(time.time())) if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, when: float) -> None:
        self.now = when


def credential(emu: Emulator, clock: Optional[FakeClock] = None, **kwargs: Any) -> MsiV2ManagedIdentityCredential:
    """A sync MSI v2 credential for ``emu`` (software key, the emulator's CA, the given clock)."""
    kwargs.setdefault("key_provider", SoftwareKeyProvider())
    kwargs.setdefault("connection_verify", emu.ca_bundle_path)
    if clock is not None:
        kwargs["_clock"] = clock
    return MsiV2ManagedIdentityCredential(mtls_proof_of_possession=True, **kwargs)


def async_credential(
    emu: Emulator, clock: Optional[FakeClock] = None, **kwargs: Any
) -> AsyncMsiV2ManagedIdentityCredential:
    """The async twin of :func:`credential`."""
    kwargs.setdefault("key_provider", SoftwareKeyProvider())
    kwargs.setdefault("connection_verify", emu.ca_bundle_path)
    if clock is not None:
        kwargs["_clock"] = clock
    return AsyncMsiV2ManagedIdentityCredential(mtls_proof_of_possession=True, **kwargs)


def _split(method: str, claims: Optional[str], options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """kwargs for ``get_token`` or ``{"options": ...}`` for ``get_token_info``, carrying the same request."""
    if method == "get_token":
        return ({"claims": claims, **options} if claims is not None else dict(options)), {}
    merged = {**options, **({"claims": claims} if claims is not None else {})}
    return {}, ({"options": merged} if merged else {})


def acquire(cred: Any, method: str, *scopes: str, claims: Optional[str] = None, **options: Any) -> Token:
    """Call ``cred.get_token`` or ``cred.get_token_info`` with the same request (claims, options)."""
    as_kwargs, as_options = _split(method, claims, options)
    return getattr(cred, method)(*scopes, **as_kwargs, **as_options)  # type: ignore[no-any-return]


async def aacquire(cred: Any, method: str, *scopes: str, claims: Optional[str] = None, **options: Any) -> Token:
    """The async twin of :func:`acquire`."""
    as_kwargs, as_options = _split(method, claims, options)
    return await getattr(cred, method)(*scopes, **as_kwargs, **as_options)  # type: ignore[no-any-return]


def calls(emu: Emulator) -> dict[str, int]:
    """The emulator's non-zero call counts."""
    return {name: count for name, count in emu.calls.items() if count}


def latest_certificate(emu: Emulator) -> x509.Certificate:
    return emu.issued_certificates[-1]


def cert_window(cert: x509.Certificate) -> tuple[float, float]:
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def expected_rotation(cert: x509.Certificate) -> float:
    """``max(notAfter - 24 h, notBefore + lifetime / 2)`` computed from the certificate itself."""
    not_before, not_after = cert_window(cert)
    return max(not_after - DAY, not_before + (not_after - not_before) / 2)


def thumbprint(cert: x509.Certificate) -> str:
    """x5t#S256 of ``cert``."""
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (connection refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class StaticCredential:
    """A second credential for a chain: returns a fixed Bearer token and counts its calls."""

    TOKEN = "static-fallback-token"

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.TOKEN, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.calls += 1
        return AccessTokenInfo(self.TOKEN, int(time.time()) + 3600)

    def close(self) -> None:
        pass

    def __enter__(self) -> StaticCredential:
        return self

    def __exit__(self, *args: Any) -> None:
        pass


class AsyncStaticCredential:
    """The async twin of :class:`StaticCredential`."""

    TOKEN = StaticCredential.TOKEN

    def __init__(self) -> None:
        self.calls = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.TOKEN, int(time.time()) + 3600)

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.calls += 1
        return AccessTokenInfo(self.TOKEN, int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> AsyncStaticCredential:
        return self

    async def __aexit__(self, *args: Any) -> None:
        pass


def refresh_on_of(token: Token) -> Optional[int]:
    """``refresh_on`` when the method returns it (``get_token_info``), else None."""
    return getattr(token, "refresh_on", None)


#: 200+ characters of base64/base64url: a token segment, a CSR, a key or a certificate, never a log message.
_LONG_BASE64 = re.compile(r"[A-Za-z0-9+/_=-]{200,}")
#: A JWT's header and payload (both JSON objects, so both start with ``eyJ``).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")


def secret_leaks(texts: list[str], secrets: list[str]) -> list[str]:
    """Descriptions of every text that holds one of ``secrets``, a JWT, or a long base64 run (empty = clean)."""
    leaks = []
    for index, text in enumerate(texts):
        for secret in secrets:
            if secret and secret in text:
                leaks.append(f"text {index} contains secret {secret[:12]}...: {text[:200]!r}")
        for pattern in (_LONG_BASE64, _JWT):
            match = pattern.search(text)
            if match:
                leaks.append(f"text {index} matches {pattern.pattern[:20]!r} at {match.start()}: {text[:200]!r}")
    return leaks
