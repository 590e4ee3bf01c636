"""IMDS v2 wire contract (PROTOCOL.md §1, §2, §5): requests, response validation and the retry rule.

Pure functions plus two thin retry policies; the I/O itself happens in the sync/async drivers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import random
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import urlencode, urlsplit

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy, HTTPPolicy
from azure.core.rest import HttpRequest

from ._errors import ErrorCode, MsiV2Error, MsiV2UnavailableError
from ._lifetimes import IMDS_CONNECT_TIMEOUT, IMDS_PROBE_TIMEOUT, IMDS_READ_TIMEOUT

IMDS_DEFAULT_AUTHORITY = "http://169.254.169.254"
AUTHORITY_ENV = "AZURE_POD_IDENTITY_AUTHORITY_HOST"
METADATA_PATH = "/metadata/identity/getplatformmetadata"
ISSUE_CREDENTIAL_PATH = "/metadata/identity/issuecredential"
CRED_API_VERSION = "2.0"

#: Attestation is required but was not sent (PROTOCOL.md §5, "Known failure").
_ATTESTATION_MISSING_MARKER = "attestation token is missing"

# --- Retry rule (PROTOCOL.md §8) --------------------------------------------------------------------
#: Statuses IMDS answers while busy or (for 404) while the identity is still being provisioned.
RETRY_STATUSES = frozenset({404, 408, 410, 429, *range(500, 600)})
#: Three retries with exponential backoff of about 1, 2, 4 s (jittered +-20 %).
RETRY_BACKOFF = (1.0, 2.0, 4.0)
#: 410 means "IMDS is upgrading": keep trying for at least 70 s in total, at most 10 s apart.
GONE_MIN_TOTAL = 70.0
GONE_MAX_INTERVAL = 10.0
#: Retry-After is honoured up to this many seconds; beyond it we would rather fail than hang.
RETRY_AFTER_CAP = 30.0


def retry_delay(status: int, attempt: int, elapsed: float, retry_after: Optional[float]) -> Optional[float]:
    """Seconds to wait before retry number ``attempt`` (1-based), or ``None`` to stop retrying."""
    if status not in RETRY_STATUSES:
        return None
    if status == 410:
        if elapsed >= GONE_MIN_TOTAL:
            return None
        return min(GONE_MAX_INTERVAL, 2.0 ** (attempt - 1), GONE_MIN_TOTAL - elapsed)
    if attempt > len(RETRY_BACKOFF):
        return None
    delay = RETRY_BACKOFF[attempt - 1] * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay


#: Context option marking the chain probe: the first IMDS contact inside a ChainedTokenCredential. A probe
#: that finds no IMDS (404, or an answer without the IMDS ``Server`` header) gives up at once; one that
#: reaches IMDS retries by the rule above, with the normal timeouts.
PROBE_OPTION = "msiv2_imds_probe"


def call_options(*, probe: bool) -> dict[str, Any]:
    """Transport options for one IMDS call (timeouts from ``_lifetimes``)."""
    if probe:
        return {"connection_timeout": IMDS_PROBE_TIMEOUT, "read_timeout": IMDS_PROBE_TIMEOUT, PROBE_OPTION: True}
    return {"connection_timeout": IMDS_CONNECT_TIMEOUT, "read_timeout": IMDS_READ_TIMEOUT}


def _retry_after(headers: Mapping[str, str]) -> Optional[float]:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class _RetryState:
    """The retry decision for one request, shared by the sync and async policies (they differ in waiting)."""

    def __init__(self, request: PipelineRequest[Any], clock: Callable[[], float]) -> None:
        self._options = request.context.options
        self._probe = bool(self._options.pop(PROBE_OPTION, False))
        self._clock = clock
        self._start = clock()
        self._attempt = 0

    def delay(self, response: PipelineResponse[Any, Any]) -> Optional[float]:
        """Seconds to wait before sending again, or ``None`` to return ``response``."""
        self._attempt += 1
        http = response.http_response
        if self._probe:
            if http.status_code == 404 or "imds" not in (http.headers.get("Server") or "").lower():
                return None
            self._probe = False  # IMDS is there: retry as usual, with the usual patience
            self._options.update(call_options(probe=False))
        return retry_delay(http.status_code, self._attempt, self._clock() - self._start, _retry_after(http.headers))


class ImdsRetryPolicy(HTTPPolicy[Any, Any]):
    """Applies :func:`retry_delay` to IMDS responses; connection failures are not retried (IMDS is local)."""

    def __init__(self, sleep: Callable[[float], Any] = time.sleep, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._sleep, self._clock = sleep, clock

    def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        state = _RetryState(request, self._clock)
        while True:
            response = self.next.send(request)
            delay = state.delay(response)
            if delay is None:
                return response
            self._sleep(delay)


class AsyncImdsRetryPolicy(AsyncHTTPPolicy[Any, Any]):
    """The async twin of :class:`ImdsRetryPolicy` (same rule, awaited sleep)."""

    def __init__(
        self, sleep: Optional[Callable[[float], Awaitable[Any]]] = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._sleep, self._clock = sleep or asyncio.sleep, clock

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        state = _RetryState(request, self._clock)
        while True:
            response = await self.next.send(request)
            delay = state.delay(response)
            if delay is None:
                return response
            await self._sleep(delay)


# --- Identity selection (PROTOCOL.md §1) ---------------------------------------------------------------
@dataclass(frozen=True)
class IdentitySelector:
    """Which managed identity to use: ``kind`` is ``system``, ``client_id``, ``object_id`` or ``resource_id``."""

    kind: str = "system"
    value: str = ""

    @property
    def query(self) -> dict[str, str]:
        names = {"client_id": "client_id", "object_id": "object_id", "resource_id": "mi_res_id"}
        return {names[self.kind]: self.value} if self.kind != "system" else {}

    def __str__(self) -> str:
        return "system-assigned" if self.kind == "system" else f"user-assigned {self.kind}={self.value}"


def identity_selector(client_id: Optional[str], identity_config: Optional[Mapping[str, str]]) -> IdentitySelector:
    """Validate azure-identity's ``client_id``/``identity_config`` convention into one selector."""
    if identity_config is not None and not isinstance(identity_config, Mapping):
        kind = type(identity_config).__name__
        raise TypeError(f"identity_config must be a mapping such as {{'object_id': ...}}, not {kind}")
    chosen = {"client_id": client_id} if client_id is not None else {}
    for name, value in (identity_config or {}).items():
        if name not in ("client_id", "object_id", "resource_id"):
            raise ValueError(
                f"identity_config key {name!r} is not supported; use 'client_id', 'object_id' or 'resource_id'"
            )
        chosen[name] = value
    if len(chosen) > 1:
        raise ValueError(f"Specify at most one user-assigned identity; got {', '.join(sorted(chosen))}")
    if not chosen:
        return IdentitySelector()
    ((kind, value),) = chosen.items()
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{kind} must be a non-empty string without whitespace")
    if kind == "resource_id" and not value.lower().startswith("/subscriptions/"):
        raise ValueError("resource_id must be an ARM resource id starting with '/subscriptions/'")
    return IdentitySelector(kind, value)


def imds_authority() -> str:
    """IMDS base URL: ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` (scheme, host and port only) or the link-local one."""
    raw = os.environ.get(AUTHORITY_ENV, "").strip() or IMDS_DEFAULT_AUTHORITY

    def invalid(reason: str) -> MsiV2Error:
        shown = raw.split("@")[-1] if "@" in raw else raw  # never echo credentials embedded in a URL
        return MsiV2Error(f"{AUTHORITY_ENV}={shown!r} {reason}", error_code=ErrorCode.INVALID_REQUEST)

    try:
        parts = urlsplit(raw)
        port = parts.port  # validates the port
    except ValueError as error:
        raise invalid(f"is not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid("is not an http(s) URL")
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username or parts.password:
        raise invalid("must hold scheme, host and port only (the path is fixed by MSI v2)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _url(authority: str, path: str, selector: IdentitySelector) -> str:
    return f"{authority}{path}?" + urlencode({"cred-api-version": CRED_API_VERSION, **selector.query})


def metadata_request(authority: str, selector: IdentitySelector, correlation_id: str) -> HttpRequest:
    return HttpRequest(
        "GET",
        _url(authority, METADATA_PATH, selector),
        headers={"Metadata": "true", "x-ms-client-request-id": correlation_id},
    )


def probe_request(authority: str) -> HttpRequest:
    """The capability probe: the metadata GET *without* ``Metadata: true``; an IMDS v2 host answers 400."""
    return HttpRequest("GET", _url(authority, METADATA_PATH, IdentitySelector()))


def issue_credential_request(
    authority: str, selector: IdentitySelector, correlation_id: str, csr_der: bytes, attestation: Optional[str]
) -> HttpRequest:
    body: dict[str, str] = {"csr": base64.b64encode(csr_der).decode("ascii")}
    if attestation:  # omitted, never empty, when not attesting (PROTOCOL.md §5)
        body["attestation_token"] = attestation
    return HttpRequest(
        "POST",
        _url(authority, ISSUE_CREDENTIAL_PATH, selector),
        headers={
            "Metadata": "true",
            "x-ms-client-request-id": correlation_id,
            "Content-Type": "application/json",
        },
        content=json.dumps(body, separators=(",", ":")).encode("ascii"),
    )


# --- Responses -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WireResponse:
    """A fully read HTTP response, independent of the transport that fetched it."""

    status: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)  # may hold a token, a certificate or a CSR

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name)


@dataclass(frozen=True)
class PlatformMetadata:
    client_id: str
    tenant_id: str
    cu_id: dict[str, str]
    attestation_endpoint: str


@dataclass(frozen=True)
class IssuedCredential:
    client_id: str
    tenant_id: str
    certificate_der: bytes = field(repr=False)
    identity_type: str
    mtls_authentication_endpoint: str


def _error_text(response: WireResponse) -> str:
    """A short, secret-free description of an IMDS error body (IMDS error bodies carry no secrets)."""
    try:
        payload = json.loads(response.body)
    except ValueError:
        return f"HTTP {response.status}"
    if isinstance(payload, dict):
        error = payload.get("error")
        description = payload.get("error_description") or payload.get("message")
        text = ": ".join(str(p) for p in (error, description) if p)
        return f"HTTP {response.status} {text[:300]}".strip()
    return f"HTTP {response.status}"


def _is_from_imds(response: WireResponse) -> bool:
    return "imds" in (response.header("Server") or "").lower()


def _json_object(response: WireResponse, what: str, correlation_id: str) -> dict[str, Any]:
    try:
        payload = json.loads(response.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise MsiV2Error(
            f"IMDS {what} answered 200 with a body that is not a JSON object",
            error_code=ErrorCode.IMDS_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    return payload


def _required_str(payload: Mapping[str, Any], name: str, what: str, correlation_id: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip():
        raise MsiV2Error(
            f"IMDS {what} response lacks a non-empty '{name}'",
            error_code=ErrorCode.IMDS_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    return value.strip()


def parse_metadata(response: WireResponse, correlation_id: str) -> PlatformMetadata:
    """Validate a ``getplatformmetadata`` answer; "not IMDS" and "v1-only host" are *unavailable*."""
    if not _is_from_imds(response):
        raise MsiV2UnavailableError(
            f"the metadata endpoint answered HTTP {response.status} without an IMDS 'Server' header; "
            "this host has no Azure IMDS",
            correlation_id=correlation_id,
        )
    if response.status == 404:
        raise MsiV2UnavailableError(
            "IMDS answered 404 to getplatformmetadata: this host supports Managed Identity v1 only",
            correlation_id=correlation_id,
        )
    if response.status != 200:
        raise MsiV2Error(
            f"getplatformmetadata failed: {_error_text(response)}",
            error_code=ErrorCode.IMDS_ERROR,
            correlation_id=correlation_id,
            status_code=response.status,
        )
    payload = _json_object(response, "getplatformmetadata", correlation_id)
    what = "getplatformmetadata"
    client_id = _required_str(payload, "clientId", what, correlation_id)
    tenant_id = _required_str(payload, "tenantId", what, correlation_id)
    if not tenant_id.isascii() or any(c.isspace() for c in tenant_id):
        raise MsiV2Error(  # it becomes an IA5String in the CSR and a path segment of the token URL
            "IMDS tenantId is not a printable ASCII identifier",
            error_code=ErrorCode.IMDS_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    attestation_endpoint = _required_str(payload, "attestationEndpoint", what, correlation_id)
    cu_raw = payload.get("cuId")
    cu_id = {
        name: cu_raw[name]
        for name in ("vmId", "vmssId")
        if isinstance(cu_raw, dict) and isinstance(cu_raw.get(name), str) and cu_raw[name]
    }
    if not cu_id:
        raise MsiV2Error(
            "IMDS getplatformmetadata response lacks cuId.vmId/vmssId",
            error_code=ErrorCode.IMDS_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    endpoint = urlsplit(attestation_endpoint)
    if endpoint.scheme != "https" or not endpoint.netloc:
        raise MsiV2Error(
            "IMDS attestationEndpoint is not an absolute https URL",
            error_code=ErrorCode.IMDS_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    return PlatformMetadata(client_id, tenant_id, cu_id, attestation_endpoint)


def parse_issued_credential(response: WireResponse, correlation_id: str) -> IssuedCredential:
    """Validate an ``issuecredential`` answer (shape only; the certificate is checked by the flow)."""
    if not _is_from_imds(response):
        raise MsiV2Error(
            f"issuecredential answered HTTP {response.status} without an IMDS 'Server' header",
            error_code=ErrorCode.IMDS_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    if response.status != 200:
        text = _error_text(response)
        if response.status == 400 and _ATTESTATION_MISSING_MARKER in text.lower():
            raise MsiV2Error(
                "this host requires an attested KeyGuard key; create the credential with "
                "with_attestation_support=True (and mtls_proof_of_possession=True)",
                error_code=ErrorCode.ATTESTATION_REQUIRED,
                correlation_id=correlation_id,
                status_code=400,
            )
        raise MsiV2Error(
            f"issuecredential failed: {text}",
            error_code=ErrorCode.IMDS_ERROR,
            correlation_id=correlation_id,
            status_code=response.status,
        )
    payload = _json_object(response, "issuecredential", correlation_id)
    what = "issuecredential"
    fields = {
        name: _required_str(payload, name, what, correlation_id)
        for name in ("client_id", "tenant_id", "certificate", "identity_type", "mtls_authentication_endpoint")
    }
    try:
        der = base64.b64decode("".join(fields["certificate"].split()), validate=True)
    except (binascii.Error, ValueError):
        raise MsiV2Error(
            "issuecredential 'certificate' is not base64",
            error_code=ErrorCode.CERTIFICATE_INVALID,
            correlation_id=correlation_id,
        ) from None
    endpoint = urlsplit(fields["mtls_authentication_endpoint"])
    if endpoint.scheme != "https" or not endpoint.netloc:
        raise MsiV2Error(
            "issuecredential mtls_authentication_endpoint is not an https URL; refusing to send the "
            "token request anywhere else",
            error_code=ErrorCode.IMDS_RESPONSE_INVALID,
            correlation_id=correlation_id,
        )
    return IssuedCredential(
        fields["client_id"], fields["tenant_id"], der, fields["identity_type"], fields["mtls_authentication_endpoint"]
    )
