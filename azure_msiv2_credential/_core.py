"""What the sync and async credentials share besides the flow: options, gating, request rules, logging."""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from azure.core.pipeline.policies import HttpLoggingPolicy, UserAgentPolicy

from . import _imds
from ._cache import CredentialCache, TokenEntry
from ._errors import ErrorCode, MsiV2ConfigurationError, MsiV2Error, MsiV2UnavailableError
from ._flow import Attestor, FlowConfig, TokenResult
from ._registry import BindingRegistry
from ._version import USER_AGENT
from .keys import STRENGTH_ORDER, BindingKey, BindingStrength, KeyProvider

if TYPE_CHECKING:
    from ._diagnose import Report

_LOGGER = logging.getLogger("azure_msiv2_credential")

KILL_SWITCH_ENV = "MSAL_MI_DISABLE_IMDS_V2"

#: IMDS is link-local: it answers in milliseconds or not at all. Inside a ChainedTokenCredential the first
#: contact is a probe (about 1 s, no retries), as azure-identity does, so the chain moves on quickly.
IMDS_CONNECT_TIMEOUT = 2.0
IMDS_READ_TIMEOUT = 20.0
IMDS_PROBE_TIMEOUT = 1.0

_within_chain: Optional[ContextVar[bool]]
try:  # azure-identity marks calls made by ChainedTokenCredential with this context variable
    from azure.identity._internal.utils import within_credential_chain as _within_chain
except ImportError:  # pragma: no cover - older/newer azure-identity: behave as outside a chain
    _within_chain = None


def in_credential_chain() -> bool:
    return bool(_within_chain is not None and _within_chain.get())


def kill_switch_set() -> bool:
    return os.environ.get(KILL_SWITCH_ENV, "").strip().lower() in ("1", "true")


@dataclass(frozen=True)
class TokenRequest:
    scope: str
    resource: str
    claims: Optional[str]


def resource_for_scope(scopes: tuple[str, ...]) -> str:
    """Exactly one scope: a bare resource or ``<resource>/.default``; anything else is a ``ValueError``."""
    if len(scopes) != 1:
        raise ValueError(f"MSI v2 takes exactly one scope, got {len(scopes)}")
    scope = scopes[0]
    if not isinstance(scope, str) or not scope or any(c.isspace() for c in scope):
        raise ValueError("the scope must be a non-empty string without whitespace")
    resource = scope[: -len("/.default")] if scope.endswith("/.default") else scope
    if not resource or "/.default" in resource:
        raise ValueError(f"{scope!r} is not a resource or '<resource>/.default' scope")
    return resource


def default_key_provider() -> Optional[KeyProvider]:
    """KeyGuard on Windows; elsewhere there is no safe default and the caller passes one explicitly."""
    if sys.platform != "win32":
        return None
    from .keys.keyguard import KeyGuardKeyProvider

    return KeyGuardKeyProvider()


def _default_attestor(key: BindingKey) -> Attestor:
    from ._attestation import AttestationCache, NativeAttestor

    libraries = getattr(key, "libraries", None)
    if libraries is None:
        raise MsiV2Error("attestation needs a KeyGuard key", error_code=ErrorCode.KEYGUARD_UNAVAILABLE)
    return AttestationCache(NativeAttestor(libraries))  # type: ignore[return-value]


class CredentialCore:
    """Options, caches and rules of one MSI v2 credential; the drivers add I/O and waiting."""

    def __init__(
        self,
        *,
        client_id: Optional[str],
        identity_config: Optional[Mapping[str, str]],
        with_attestation_support: bool,
        key_provider: Optional[KeyProvider],
        minimum_binding_strength: Optional[str],
        attestor: Optional[Attestor],
        clock: Callable[[], float],
    ) -> None:
        self.selector = _imds.identity_selector(client_id, identity_config)
        self.attest = bool(with_attestation_support)
        floor = minimum_binding_strength or "software"
        if floor not in STRENGTH_ORDER[1:]:
            raise ValueError("minimum_binding_strength must be 'software' or 'keyguard'")
        self.minimum_strength: BindingStrength = floor
        if key_provider is not None and self.attest and key_provider.strength != "keyguard":
            raise MsiV2ConfigurationError(
                f"with_attestation_support needs a KeyGuard key, but key_provider makes {key_provider.strength} keys",
                error_code=ErrorCode.KEYGUARD_UNAVAILABLE,
            )
        self.key_provider = key_provider if key_provider is not None else default_key_provider()
        self._owns_key_provider = key_provider is None  # a caller's provider is the caller's to close
        self.clock = clock
        self.registry = BindingRegistry(clock)
        self.cache = CredentialCache(self.registry, clock)
        self._attestor = attestor
        self._attestor_cache: Optional[Attestor] = None
        self._config: Optional[FlowConfig] = None
        self.imds_answered = False

    # --- per acquisition ----------------------------------------------------------------------------------
    def token_request(self, scopes: tuple[str, ...], claims: Optional[str], **ignored: Any) -> TokenRequest:
        resource = resource_for_scope(scopes)
        for name in ("tenant_id", "enable_cae"):
            if ignored.get(name):
                _LOGGER.debug("MSI v2 ignores %s: a managed identity has one tenant and no CAE", name)
        return TokenRequest(scopes[0], resource, claims or None)

    def config(self) -> FlowConfig:
        """Checks that MSI v2 can run now (kill switch, key provider) and returns the flow's configuration."""
        if kill_switch_set():
            raise MsiV2UnavailableError(
                f"MSI v2 is disabled by the environment variable {KILL_SWITCH_ENV}", error_code=ErrorCode.DISABLED
            )
        if self._config is None:
            if self.key_provider is None:
                raise MsiV2UnavailableError(
                    "KeyGuard keys need Windows; pass key_provider=SoftwareKeyProvider() to use a software key",
                    error_code=ErrorCode.KEYGUARD_UNAVAILABLE,
                )
            self._config = FlowConfig(
                authority=_imds.imds_authority(),
                selector=self.selector,
                key_provider=self.key_provider,
                attest=self.attest,
                attestor_factory=self._attestor_for,
                minimum_strength=self.minimum_strength,
                clock=self.clock,
            )
        return self._config

    def diagnose(self) -> Report:
        """The ``diagnose`` report for this credential's options (``get_capabilities`` reads it)."""
        from ._diagnose import diagnose

        return diagnose(
            client_id=self.selector.value if self.selector.kind == "client_id" else None,
            identity_config={self.selector.kind: self.selector.value}
            if self.selector.kind in ("object_id", "resource_id")
            else None,
            with_attestation_support=self.attest,
            minimum_binding_strength=self.minimum_strength,
            key_provider=self.key_provider,
        )

    def close(self) -> None:
        """Forget cached tokens and bindings; release the key provider if the credential made it."""
        self.cache.clear()
        if self._owns_key_provider and self.key_provider is not None:
            self.key_provider.close()

    def _attestor_for(self, key: BindingKey) -> Attestor:
        if self._attestor is not None:
            return self._attestor
        if self._attestor_cache is None:
            self._attestor_cache = _default_attestor(key)
        return self._attestor_cache

    def imds_options(self, metadata: bool) -> dict[str, Any]:
        """Transport options for an IMDS call: the chain probe on first contact, generous timeouts after."""
        if metadata and not self.imds_answered and in_credential_chain():
            return {
                "connection_timeout": IMDS_PROBE_TIMEOUT,
                "read_timeout": IMDS_PROBE_TIMEOUT,
                _imds.NO_RETRY_OPTION: True,
            }
        return {"connection_timeout": IMDS_CONNECT_TIMEOUT, "read_timeout": IMDS_READ_TIMEOUT}

    @staticmethod
    def new_correlation_id() -> str:
        return str(uuid.uuid4())

    # --- logging (never tokens, JWTs, CSRs or keys) ---------------------------------------------------------
    def log_success(self, request: TokenRequest, result: TokenResult, correlation_id: str) -> None:
        level = logging.DEBUG if in_credential_chain() else logging.INFO
        if _LOGGER.isEnabledFor(level):
            binding = result.binding
            _LOGGER.log(
                level,
                "MsiV2ManagedIdentityCredential acquired an mtls_pop token for %s: identity %s (client id %s), "
                "certificate %s expires %s, token expires %s, correlation id %s",
                request.resource,
                self.selector,
                binding.client_id,
                binding.thumbprint,
                binding.expires_at_iso,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result.expires_on)),
                correlation_id,
            )

    def log_failure(self, request: TokenRequest, error: BaseException, correlation_id: str) -> None:
        unavailable = isinstance(error, MsiV2UnavailableError)
        level = logging.DEBUG if unavailable and in_credential_chain() else logging.WARNING
        _LOGGER.log(
            level,
            "MsiV2ManagedIdentityCredential could not acquire a token for %s (identity %s, correlation id %s): %s",
            request.resource,
            self.selector,
            correlation_id,
            error,
        )

    def log_served_stale(self, entry: TokenEntry, error: BaseException) -> None:
        _LOGGER.warning("Token refresh failed; serving the cached token until it expires: %s", error)

    def log_binding(self, binding: Any, correlation_id: str) -> None:
        _LOGGER.log(
            logging.DEBUG if in_credential_chain() else logging.INFO,
            "MSI v2 certificate %s issued for client id %s (%s key%s), valid until %s, rotates at %s, "
            "correlation id %s",
            binding.thumbprint,
            binding.client_id,
            binding.strength,
            ", attested" if binding.attested else "",
            binding.expires_at_iso,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(binding.rotate_at)),
            correlation_id,
        )


def check_gating(mtls_proof_of_possession: bool, with_attestation_support: bool) -> None:
    """DESIGN.md §2: attestation without PoP is a configuration error, raised before any I/O."""
    if with_attestation_support and not mtls_proof_of_possession:
        raise MsiV2ConfigurationError(
            "with_attestation_support=True requires mtls_proof_of_possession=True",
            error_code=ErrorCode.ATTESTATION_REQUIRES_POP,
        )


def v1_only_options(key_provider: Any, minimum_binding_strength: Any, attestor: Any) -> None:
    """MSI v2 options on the v1 path would be silently ignored: refuse them instead."""
    given = [
        n
        for n, v in (
            ("key_provider", key_provider),
            ("minimum_binding_strength", minimum_binding_strength),
            ("attestor", attestor),
        )
        if v is not None
    ]
    if given:
        raise ValueError(f"{', '.join(given)} applies to MSI v2 only; pass mtls_proof_of_possession=True")


def token_transport_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    verify = kwargs.get("connection_verify", True)
    if verify is False:
        raise ValueError("connection_verify=False is not supported: MSI v2 never switches TLS verification off")
    options = {"connection_verify": verify}
    for name in ("connection_timeout", "read_timeout", "proxies"):
        if name in kwargs:
            options[name] = kwargs[name]
    return options


def token_policies(kwargs: Mapping[str, Any]) -> list[Any]:
    """Token-leg policies. No NetworkTraceLoggingPolicy: it would log token responses; HttpLoggingPolicy
    redacts every header not on its allow-list."""
    return [UserAgentPolicy(base_user_agent=USER_AGENT, **kwargs), HttpLoggingPolicy(**kwargs)]
