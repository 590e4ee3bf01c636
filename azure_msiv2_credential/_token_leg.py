"""The mTLS token request (PROTOCOL.md §6): request, response validation and the cnf binding check."""

from __future__ import annotations

import base64
import json
import math
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote, urlencode

from azure.core.rest import HttpRequest

from ._binding import Binding
from ._errors import ErrorCode, MsiV2Error
from ._imds import WireResponse
from ._lifetimes import TOKEN_EXPIRY_SKEW

#: AAD answers these when it does not accept the certificate: re-mint and retry once (§6).
_CERTIFICATE_REJECTED = frozenset({"invalid_client"})


class CertificateRejected(MsiV2Error):
    """The token service did not accept the certificate (``invalid_client`` or a TLS failure): re-mint once."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, error_code=ErrorCode.TOKEN_REQUEST_FAILED, **kwargs)


def token_endpoint(mtls_authentication_endpoint: str, tenant_id: str) -> str:
    """PROTOCOL.md §6; the tenant id comes from IMDS and is quoted so it can only ever be one path segment."""
    return f"{mtls_authentication_endpoint.rstrip('/')}/{quote(tenant_id, safe='')}/oauth2/v2.0/token"


def token_request(binding: Binding, resource: str, claims: Optional[str], correlation_id: str) -> HttpRequest:
    form = {
        "grant_type": "client_credentials",
        "client_id": binding.client_id,
        "scope": f"{resource}/.default",
        "token_type": "mtls_pop",
    }
    if claims:
        form["claims"] = claims
    return HttpRequest(
        "POST",
        binding.token_endpoint,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "client-request-id": correlation_id,
            "return-client-request-id": "true",
        },
        content=urlencode(form).encode("ascii"),
    )


@dataclass(frozen=True, repr=False)
class TokenResponse:
    access_token: str
    expires_in: float
    refresh_in: Optional[float]

    def __repr__(self) -> str:
        return f"TokenResponse(expires_in={self.expires_in}, refresh_in={self.refresh_in})"


def _number(value: Any) -> Optional[float]:
    """A finite number from a JSON number or numeric string; ``None`` for anything else (bool, NaN, 1e400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def parse_token_response(response: WireResponse, binding: Binding, correlation_id: str) -> TokenResponse:
    try:
        payload = json.loads(response.body)
    except ValueError:
        payload = None
    if response.status != 200:
        error = description = ""
        if isinstance(payload, dict):
            error = str(payload.get("error") or "")
            description = str(payload.get("error_description") or "")[:300]
        message = f"token request to {binding.token_endpoint} failed: HTTP {response.status} {error}: {description}"
        if response.status in (400, 401) and error in _CERTIFICATE_REJECTED:
            raise CertificateRejected(message, correlation_id=correlation_id, status_code=response.status)
        raise MsiV2Error(
            message,
            error_code=ErrorCode.TOKEN_REQUEST_FAILED,
            correlation_id=correlation_id,
            status_code=response.status,
        )
    if not isinstance(payload, dict):
        raise MsiV2Error(
            "the token service answered 200 with a body that is not a JSON object",
            error_code=ErrorCode.TOKEN_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    token = payload.get("access_token")
    token_type = payload.get("token_type")
    expires_in = _number(payload.get("expires_in"))
    refresh_in = _number(payload.get("refresh_in"))
    if not isinstance(token, str) or not token:
        raise MsiV2Error(
            "the token response has no access_token",
            error_code=ErrorCode.TOKEN_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    if not isinstance(token_type, str) or token_type.lower() != "mtls_pop":
        raise MsiV2Error(
            f"the token service returned token_type {token_type!r} instead of 'mtls_pop'; "
            "a non-bound token is never accepted for MSI v2",
            error_code=ErrorCode.TOKEN_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    if expires_in is None or expires_in <= TOKEN_EXPIRY_SKEW:
        raise MsiV2Error(
            f"the token response has no numeric expires_in above {TOKEN_EXPIRY_SKEW:.0f} s",
            error_code=ErrorCode.TOKEN_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    check_cnf(token, binding, correlation_id)
    return TokenResponse(token, expires_in, refresh_in)


def _jwt_payload(token: str) -> Optional[dict[str, Any]]:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def check_cnf(token: str, binding: Binding, correlation_id: str) -> None:
    """When the token is a JWT, its ``cnf.x5t#S256`` must be our certificate's thumbprint (ours, §6)."""
    payload = _jwt_payload(token)
    if payload is None:
        return
    cnf = payload.get("cnf")
    bound_to = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    if bound_to != binding.thumbprint:
        raise MsiV2Error(
            f"the access token is bound to {bound_to!r}, not to our certificate {binding.thumbprint!r}",
            error_code=ErrorCode.TOKEN_BINDING_MISMATCH,
            correlation_id=correlation_id,
        )


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[Optional[BaseException]] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = getattr(current, "inner_exception", None)
        stack.extend([current.__cause__, current.__context__, inner if isinstance(inner, BaseException) else None])
        stack.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))


@dataclass(frozen=True)
class TlsFailure:
    """A token-leg TLS failure: ``server_unverified`` when *their* certificate did not verify (a trust
    problem to report, e.g. ``connection_verify``), else possibly *ours* refused (re-mint once, §6)."""

    server_unverified: bool
    reason: str


def tls_failure(error: BaseException) -> Optional[TlsFailure]:
    """Classify a transport error from the token leg; ``None`` when it was not a TLS failure."""
    causes = list(_causes(error))
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError) or type(cause).__name__ in (
            "ClientConnectorCertificateError",  # aiohttp
            "ServerCertificateError",  # our WinHTTP client
        ):
            detail = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or cause
            return TlsFailure(server_unverified=True, reason=str(detail))
    for cause in causes:
        winhttp_secure_failure = getattr(cause, "is_secure_failure", None)  # our WinHTTP client's errors
        if (
            isinstance(cause, ssl.SSLError)
            or (callable(winhttp_secure_failure) and winhttp_secure_failure())
            or type(cause).__name__ in ("ClientSSLError", "ClientConnectorSSLError")  # aiohttp
        ):
            return TlsFailure(server_unverified=False, reason=str(getattr(cause, "reason", None) or cause))
    return None
