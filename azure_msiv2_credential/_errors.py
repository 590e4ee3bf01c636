"""MSI v2 errors: one exception family, split into *unavailable* (a chain may move on) and *failed*."""

from __future__ import annotations

from typing import Any, Optional

from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CredentialUnavailableError


class ErrorCode:
    """Stable ``MsiV2Error.error_code`` values; the README's troubleshooting table explains each."""

    # The seed's codes (PROTOCOL.md §9).
    ATTESTATION_REQUIRES_POP = "MSI_V2_ATTESTATION_REQUIRES_POP"
    KEYGUARD_UNAVAILABLE = "MSI_V2_KEYGUARD_UNAVAILABLE"
    ERROR = "MSI_V2_ERROR"
    # Ours: specific causes, each with one fix.
    UNAVAILABLE = "MSI_V2_UNAVAILABLE"
    IMDS_UNREACHABLE = "MSI_V2_IMDS_UNREACHABLE"
    DISABLED = "MSI_V2_DISABLED"
    INVALID_REQUEST = "MSI_V2_INVALID_REQUEST"
    IMDS_ERROR = "MSI_V2_IMDS_ERROR"
    IMDS_RESPONSE_INVALID = "MSI_V2_IMDS_RESPONSE_INVALID"
    ATTESTATION_REQUIRED = "MSI_V2_ATTESTATION_REQUIRED"
    ATTESTATION_FAILED = "MSI_V2_ATTESTATION_FAILED"
    ATTESTATION_LIBRARY_MISSING = "MSI_V2_ATTESTATION_LIBRARY_MISSING"
    KEY_ERROR = "MSI_V2_KEY_ERROR"
    CERTIFICATE_INVALID = "MSI_V2_CERTIFICATE_INVALID"
    TOKEN_REQUEST_FAILED = "MSI_V2_TOKEN_REQUEST_FAILED"
    TOKEN_RESPONSE_INVALID = "MSI_V2_TOKEN_RESPONSE_INVALID"
    TOKEN_BINDING_MISMATCH = "MSI_V2_TOKEN_BINDING_MISMATCH"
    BINDING_STRENGTH_UNMET = "MSI_V2_BINDING_STRENGTH_UNMET"


class MsiV2Error(ClientAuthenticationError):
    """Any MSI v2 failure. ``error_code`` is one of :class:`ErrorCode`; the message never holds secrets."""

    def __init__(
        self,
        message: str,
        *,
        error_code: str = ErrorCode.ERROR,
        correlation_id: Optional[str] = None,
        status_code: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        suffix = f" (correlation id {correlation_id})" if correlation_id else ""
        super().__init__(message=f"{error_code}: {message}{suffix}", **kwargs)
        self.error_code = error_code
        self.correlation_id = correlation_id
        self.description = message  # without the code and correlation id
        if status_code is not None:  # HttpResponseError takes it only from a response object
            self.status_code = status_code


class MsiV2UnavailableError(MsiV2Error, CredentialUnavailableError):
    """MSI v2 cannot run on this host; a ``ChainedTokenCredential`` moves on to its next credential."""

    def __init__(self, message: str, *, error_code: str = ErrorCode.UNAVAILABLE, **kwargs: Any) -> None:
        super().__init__(message, error_code=error_code, **kwargs)


class MsiV2ConfigurationError(MsiV2Error, ValueError):
    """The credential's options contradict each other; raised by the constructor before any I/O."""
