"""The MSI v2 steps (PROTOCOL.md §0), written once as generators over a handful of effects.

The flow never does I/O itself: it *yields* what it needs (an IMDS call, a token-leg call over a binding,
a blocking native call, the current binding) and the sync or async driver performs it. So the sync and the
async credential share every step and rule and differ only in how they wait.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Hashable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional, Union

from azure.core.exceptions import AzureError
from azure.core.rest import HttpRequest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import _imds
from ._attestation import Attestor
from ._binding import Binding, x5t_s256
from ._csr import build_csr
from ._errors import ErrorCode, MsiV2Error, MsiV2UnavailableError
from ._lifetimes import CERT_NOT_BEFORE_SKEW, TOKEN_LEG_5XX_RETRIES, certificate_rotation_time, token_refresh_time
from ._token_leg import CertificateRejected, parse_token_response, tls_failure, token_endpoint, token_request
from .keys import STRENGTH_ORDER, BindingKey, BindingStrength, KeyProvider

_LOGGER = logging.getLogger(__name__)


# --- Effects: what the flow asks its driver for -----------------------------------------------------------
@dataclass(frozen=True)
class SendImds:
    """Send a plain-HTTP IMDS request with these transport options (timeouts, the chain probe)."""

    request: HttpRequest
    options: Mapping[str, Any]


@dataclass(frozen=True)
class SendToken:
    """Send a request over mutual TLS presenting ``binding``."""

    request: HttpRequest
    binding: Binding


@dataclass(frozen=True)
class Blocking:
    """Run a blocking call (key generation, NCrypt signing, attestation); async drivers use a thread."""

    fn: Callable[[], Any]


@dataclass(frozen=True)
class Shared:
    """Run ``flow()`` once for all concurrent callers with the same ``key`` (single-flight); they share its
    result or its error, and a failure is not remembered."""

    key: Hashable
    flow: Callable[[], Flow]


Effect = Union[SendImds, SendToken, Blocking, Shared]
Flow = Generator[Effect, Any, Any]
#: Gives the binding to use: the cached one or a new one; the argument is one the token service rejected.
BindingSource = Callable[[Optional[Binding]], Flow]


@dataclass(frozen=True)
class FlowConfig:
    """Everything the steps depend on, fixed for a credential's lifetime."""

    authority: str
    selector: _imds.IdentitySelector
    key_provider: KeyProvider
    attest: bool
    attestor_factory: Callable[[BindingKey], Attestor]
    minimum_strength: BindingStrength
    clock: Callable[[], float]


@dataclass(frozen=True, repr=False)
class TokenResult:
    access_token: str
    expires_on: float
    refresh_on: float
    binding: Binding

    def __repr__(self) -> str:
        return f"TokenResult(expires_on={self.expires_on}, binding={self.binding!r})"


# --- Steps -------------------------------------------------------------------------------------------------
def fetch_metadata(cfg: FlowConfig, correlation_id: str, probe: bool) -> Flow:
    """Step 1: who am I. No answer, a v1-only host or a non-IMDS answer mean MSI v2 is *unavailable*."""
    request = _imds.metadata_request(cfg.authority, cfg.selector, correlation_id)
    try:
        response = yield SendImds(request, _imds.call_options(probe=probe))
    except AzureError as error:
        raise MsiV2UnavailableError(
            f"IMDS did not answer at {cfg.authority} ({type(error).__name__}); MSI v2 is not available here",
            error_code=ErrorCode.IMDS_UNREACHABLE,
            correlation_id=correlation_id,
        ) from None
    return _imds.parse_metadata(response, correlation_id)


def issue_binding(cfg: FlowConfig, metadata: _imds.PlatformMetadata, correlation_id: str) -> Flow:
    """Steps 2-6: key, CSR, optional attestation, issuecredential, certificate checks."""
    key: BindingKey = yield Blocking(cfg.key_provider.get_key)
    _check_strength(key, cfg, correlation_id)
    csr = yield Blocking(
        partial(build_csr, key, client_id=metadata.client_id, tenant_id=metadata.tenant_id, cu_id=metadata.cu_id)
    )
    attestation: Optional[str] = None
    if cfg.attest:
        attestor = cfg.attestor_factory(key)
        attestation = yield Blocking(partial(attestor.attest, metadata.attestation_endpoint, key, metadata.client_id))
        if not attestation:  # a failed attestation is fatal; never send a non-attested request instead
            raise MsiV2Error(
                "attestation returned no token", error_code=ErrorCode.ATTESTATION_FAILED, correlation_id=correlation_id
            )
    request = _imds.issue_credential_request(cfg.authority, cfg.selector, correlation_id, csr, attestation)
    try:
        response = yield SendImds(request, _imds.call_options(probe=False))
    except AzureError as error:
        raise MsiV2Error(
            f"issuecredential request failed: {type(error).__name__}: {error.message}",
            error_code=ErrorCode.IMDS_ERROR,
            correlation_id=correlation_id,
        ) from None
    issued = _imds.parse_issued_credential(response, correlation_id)
    return make_binding(issued, key, cfg.attest, cfg.clock(), correlation_id)


def _check_strength(key: BindingKey, cfg: FlowConfig, correlation_id: str) -> None:
    if cfg.attest and key.strength != "keyguard":
        raise MsiV2Error(
            "attestation needs a KeyGuard key, but the key provider made a "
            f"{key.strength} key; enable VBS (Trusted Launch VM) or drop with_attestation_support",
            error_code=ErrorCode.KEYGUARD_UNAVAILABLE,
            correlation_id=correlation_id,
        )
    if STRENGTH_ORDER.index(key.strength) < STRENGTH_ORDER.index(cfg.minimum_strength):
        raise MsiV2Error(
            f"the binding key is {key.strength}, below the configured minimum {cfg.minimum_strength!r}",
            error_code=ErrorCode.BINDING_STRENGTH_UNMET,
            correlation_id=correlation_id,
        )


def make_binding(
    issued: _imds.IssuedCredential, key: BindingKey, attested: bool, now: float, correlation_id: str
) -> Binding:
    """Step 6: the certificate parses, certifies *our* key and is valid now."""

    def invalid(reason: str) -> MsiV2Error:
        return MsiV2Error(
            f"the issued certificate {reason}", error_code=ErrorCode.CERTIFICATE_INVALID, correlation_id=correlation_id
        )

    try:
        certificate = x509.load_der_x509_certificate(issued.certificate_der)
    except ValueError:
        raise invalid("is not a DER X.509 certificate") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    if certificate.public_key().public_bytes(serialization.Encoding.DER, spki) != ours:
        raise invalid("certifies a different public key than our binding key")
    not_before = certificate.not_valid_before_utc.timestamp()
    not_after = certificate.not_valid_after_utc.timestamp()
    if not_after <= now:
        raise invalid(f"expired at {certificate.not_valid_after_utc.isoformat()}")
    if not_before > now + CERT_NOT_BEFORE_SKEW:
        raise invalid(f"is not valid before {certificate.not_valid_before_utc.isoformat()}")
    return Binding(
        certificate=certificate,
        certificate_der=issued.certificate_der,
        key=key,
        thumbprint=x5t_s256(issued.certificate_der),
        not_before=not_before,
        not_after=not_after,
        rotate_at=certificate_rotation_time(not_before, not_after),
        client_id=issued.client_id,
        tenant_id=issued.tenant_id,
        token_endpoint=token_endpoint(issued.mtls_authentication_endpoint, issued.tenant_id),
        identity_type=issued.identity_type,
        attested=attested,
    )


def acquire_token(
    cfg: FlowConfig, resource: str, claims: Optional[str], correlation_id: str, bindings: BindingSource
) -> Flow:
    """Step 7, with the certificate-rejected rule: drop the binding, mint a new one, retry **once** (§6)."""
    binding: Binding = yield from bindings(None)
    try:
        return (yield from _token_leg(cfg, binding, resource, claims, correlation_id))
    except CertificateRejected:
        _LOGGER.warning(
            "The token service did not accept certificate %s; minting a new one (correlation id %s)",
            binding.thumbprint,
            correlation_id,
        )
    binding = yield from bindings(binding)
    return (yield from _token_leg(cfg, binding, resource, claims, correlation_id))


def _token_leg(cfg: FlowConfig, binding: Binding, resource: str, claims: Optional[str], correlation_id: str) -> Flow:
    for attempt in range(TOKEN_LEG_5XX_RETRIES + 1):
        try:
            response = yield SendToken(token_request(binding, resource, claims, correlation_id), binding)
        except AzureError as error:
            failure = tls_failure(error)
            if failure is not None and failure.server_unverified:
                raise MsiV2Error(
                    f"the token service's TLS certificate did not verify ({failure.reason}); if a private CA "
                    "issues it (e.g. the emulator's), pass that CA bundle as connection_verify",
                    error_code=ErrorCode.TOKEN_REQUEST_FAILED,
                    correlation_id=correlation_id,
                ) from None
            if failure is not None:
                raise CertificateRejected(
                    f"TLS with the token service failed: {failure.reason}", correlation_id=correlation_id
                ) from None
            raise MsiV2Error(
                f"token request to {binding.token_endpoint} failed: {type(error).__name__}: {error.message}",
                error_code=ErrorCode.TOKEN_REQUEST_FAILED,
                correlation_id=correlation_id,
            ) from None
        if response.status < 500 or attempt == TOKEN_LEG_5XX_RETRIES:
            break
    issued_at = cfg.clock()
    parsed = parse_token_response(response, binding, correlation_id)
    # An mtls_pop token must never outlive its certificate (§8).
    expires_on = min(issued_at + parsed.expires_in, binding.not_after)
    refresh_on = token_refresh_time(issued_at, expires_on, parsed.refresh_in, binding.rotate_at)
    return TokenResult(parsed.access_token, expires_on, refresh_on, binding)


# --- Drivers' common loop ------------------------------------------------------------------------------------
def step(flow: Flow, value: Any, error: Optional[BaseException]) -> tuple[bool, Any]:
    """Advance ``flow`` by one effect: ``(False, effect)``, or ``(True, result)`` when it has finished."""
    try:
        effect = flow.throw(error) if error is not None else flow.send(value)
    except StopIteration as stop:
        return True, stop.value
    return False, effect


def run(flow: Flow, handle: Callable[[Effect], Any]) -> Any:
    """Drive ``flow`` synchronously, performing each effect with ``handle``."""
    value: Any = None
    error: Optional[BaseException] = None
    while True:
        done, item = step(flow, value, error)
        if done:
            return item
        try:
            value, error = handle(item), None
        except Exception as exc:  # handed back into the flow, which decides what it means
            value, error = None, exc
