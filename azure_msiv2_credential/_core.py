"""What the sync and async credentials share: options, request rules, caches, and the acquisition itself.

The acquisition (cache lookup, proactive refresh, single-flight, binding rotation, logging) is written here
once, as generators over the effects of ``_flow``; the two credentials only perform the effects — one
blocking, one awaiting — and keep their own lock-free cache-hit path.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import _imds
from ._attestation import Attestor
from ._binding import Binding
from ._cache import CredentialCache, TokenEntry
from ._errors import ErrorCode, MsiV2ConfigurationError, MsiV2Error, MsiV2UnavailableError
from ._flow import Flow, FlowConfig, Shared, TokenResult, acquire_token, fetch_metadata, issue_binding
from ._lifetimes import UNAVAILABLE_RECHECK_INTERVAL
from ._registry import BindingRegistry
from .keys import STRENGTH_ORDER, BindingKey, BindingStrength, KeyProvider

if TYPE_CHECKING:
    from ._diagnose import Report

_LOGGER = logging.getLogger("azure_msiv2_credential")

KILL_SWITCH_ENV = "MSAL_MI_DISABLE_IMDS_V2"

_within_chain: Optional[ContextVar[bool]]
try:  # azure-identity marks calls made by ChainedTokenCredential with this context variable
    from azure.identity._internal.utils import within_credential_chain as _within_chain
except ImportError:  # pragma: no cover - older/newer azure-identity: behave as outside a chain
    _within_chain = None


def in_credential_chain() -> bool:
    return bool(_within_chain is not None and _within_chain.get())


def kill_switch_set() -> bool:
    return os.environ.get(KILL_SWITCH_ENV, "").strip().lower() in ("1", "true")


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


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
        self._client_id, self._identity_config = client_id, identity_config
        self.attest = with_attestation_support
        floor = minimum_binding_strength or "software"
        if floor not in STRENGTH_ORDER[1:]:
            raise ValueError("minimum_binding_strength must be 'software' or 'keyguard'")
        self.minimum_strength: BindingStrength = floor
        if key_provider is not None and not isinstance(key_provider, KeyProvider):
            raise TypeError("key_provider must be a KeyProvider such as SoftwareKeyProvider()")
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
        self._config: Optional[FlowConfig] = None
        self._imds_seen = False  # an IMDS v2 host has answered: no more chain probes
        self._unavailable: Optional[tuple[MsiV2UnavailableError, float]] = None  # remembered verdict, until

    # --- the acquisition, as a flow the drivers run ------------------------------------------------------
    def acquire(self, scopes: tuple[str, ...], claims: Optional[str], **ignored: Any) -> Flow:
        """The slow path of ``get_token``/``get_token_info``; returns a :class:`TokenEntry`."""
        if self.cache.closed:
            raise MsiV2Error("the credential is closed")
        request = self._token_request(scopes, claims, **ignored)
        if request.claims:  # bypasses the token cache, reuses a valid certificate
            result = yield from self._fetch(request)
            self.cache.register_uncached(result)
            return TokenEntry(result)
        cache, now = self.cache, self.clock()
        entry = cache.token(request.resource)
        if entry is not None and cache.usable(entry, now):
            cache.index_scope(request.scope, request.resource)
            if now < entry.refresh_on or not cache.claim_refresh(entry, now):
                return entry
            try:
                return (yield Shared(("token", request.resource), partial(self._fetch_and_store, request)))
            except MsiV2Error as error:
                _LOGGER.warning("Token refresh failed; serving the cached token until it expires: %s", error)
                return entry
        return (yield Shared(("token", request.resource), partial(self._fetch_and_store, request)))

    def _token_request(self, scopes: tuple[str, ...], claims: Optional[str], **ignored: Any) -> TokenRequest:
        resource = resource_for_scope(scopes)
        for name in ("tenant_id", "enable_cae"):
            if ignored.get(name):
                _LOGGER.debug("MSI v2 ignores %s: a managed identity has one tenant and no CAE", name)
        return TokenRequest(scopes[0], resource, claims or None)

    def _fetch_and_store(self, request: TokenRequest) -> Flow:
        # A caller that missed just as the previous flight landed finds its token here: no second fetch.
        entry = self.cache.token(request.resource)
        if entry is not None and self.clock() < entry.refresh_on:
            return entry
        result = yield from self._fetch(request)
        return self.cache.store_token(request.scope, request.resource, result)

    def _fetch(self, request: TokenRequest) -> Flow:
        correlation_id = str(uuid.uuid4())
        try:
            config = self.config()
            result: TokenResult = yield from acquire_token(
                config, request.resource, request.claims, correlation_id, partial(self._binding, correlation_id)
            )
        except Exception as error:
            self._log_failure(request, error, correlation_id)
            raise
        self._log_success(request, result, correlation_id)
        return result

    def _binding(self, correlation_id: str, rejected: Optional[Binding]) -> Flow:
        """The binding for the token leg: the cached one, a new one (single-flight), or after a failed
        rotation the still-valid old one; ``rejected`` is one the token service refused (re-mint, §6)."""
        if rejected is not None:
            self.cache.drop_binding(rejected)
        now = self.clock()
        binding = self.cache.fresh_binding(now)
        if binding is not None:
            return binding
        try:
            return (yield Shared("binding", partial(self._mint, correlation_id)))
        except MsiV2Error as error:
            fallback = None if rejected is not None else self.cache.mint_failed(now)
            if fallback is None:
                raise
            _LOGGER.warning(
                "Certificate rotation failed; using certificate %s until %s and retrying the rotation later: %s",
                fallback.thumbprint,
                fallback.expires_at_iso,
                error,
            )
            return fallback

    def _mint(self, correlation_id: str) -> Flow:
        binding = self.cache.fresh_binding(self.clock())
        if binding is not None:  # minted by the flight that just landed
            return binding
        config = self.config()
        self._raise_if_known_unavailable(correlation_id)
        probe = not self._imds_seen and in_credential_chain()
        try:
            metadata = yield from fetch_metadata(config, correlation_id, probe=probe)
        except MsiV2UnavailableError as error:
            # Host facts (v1 only, not IMDS) always; "no answer" only inside a chain, as azure-identity's probe.
            if error.error_code != ErrorCode.IMDS_UNREACHABLE or probe:
                self._unavailable = (error, self.clock() + UNAVAILABLE_RECHECK_INTERVAL)
            raise
        self._imds_seen = True
        binding = yield from issue_binding(config, metadata, correlation_id)
        self.cache.store_binding(binding)
        self._log_binding(binding, correlation_id)
        return binding

    def _raise_if_known_unavailable(self, correlation_id: str) -> None:
        if self._unavailable is None:
            return
        error, until = self._unavailable
        if self.clock() >= until:
            self._unavailable = None
            return
        raise MsiV2UnavailableError(
            f"{error.description} (remembered; IMDS is asked again after {_iso(until)})",
            error_code=error.error_code,
            correlation_id=correlation_id,
        )

    # --- configuration --------------------------------------------------------------------------------------
    def config(self) -> FlowConfig:
        """Checks that MSI v2 can run now (kill switch, key provider) and returns the flow's configuration.

        The IMDS authority is read once per credential; the kill switch on every acquisition."""
        if kill_switch_set():
            raise MsiV2UnavailableError(
                f"MSI v2 is disabled by the environment variable {KILL_SWITCH_ENV}", error_code=ErrorCode.DISABLED
            )
        if self._config is None:
            if self.key_provider is None:
                raise MsiV2UnavailableError(
                    "KeyGuard keys need Windows; pass key_provider=SoftwareKeyProvider() to use a software key "
                    "(command line: --software-key)",
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

    def _attestor_for(self, key: BindingKey) -> Attestor:
        if self._attestor is None:
            from ._attestation import AttestationCache, NativeAttestor

            self._attestor = AttestationCache(NativeAttestor())  # the key's own libraries
        return self._attestor

    def diagnose(self) -> Report:
        """The ``diagnose`` report for this credential's options (``get_capabilities`` reads it)."""
        from ._diagnose import diagnose

        return diagnose(
            client_id=self._client_id,
            identity_config=self._identity_config,
            with_attestation_support=self.attest,
            minimum_binding_strength=self.minimum_strength,
            key_provider=self.key_provider,
        )

    def close(self) -> None:
        """Forget cached tokens and bindings; release the key provider if the credential made it."""
        self.cache.close()
        if self._owns_key_provider and self.key_provider is not None:
            self.key_provider.close()

    # --- logging (never tokens, JWTs, CSRs or keys) ---------------------------------------------------------
    def _log_success(self, request: TokenRequest, result: TokenResult, correlation_id: str) -> None:
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
                _iso(result.expires_on),
                correlation_id,
            )

    def _log_failure(self, request: TokenRequest, error: BaseException, correlation_id: str) -> None:
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

    def _log_binding(self, binding: Binding, correlation_id: str) -> None:
        _LOGGER.log(
            logging.DEBUG if in_credential_chain() else logging.INFO,
            "MSI v2 certificate %s issued for client id %s (%s key%s), valid until %s, rotates at %s, "
            "correlation id %s",
            binding.thumbprint,
            binding.client_id,
            binding.strength,
            ", attested" if binding.attested else "",
            binding.expires_at_iso,
            _iso(binding.rotate_at),
            correlation_id,
        )
