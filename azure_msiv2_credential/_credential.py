"""The synchronous MSI v2 credential: gating, routing (v1 delegate / v2), caches and single-flight."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.pipeline import Pipeline
from azure.core.pipeline.policies import HttpLoggingPolicy, UserAgentPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest, HttpResponse

from . import _flow
from ._binding import Binding
from ._cache import TokenEntry
from ._core import CredentialCore, TokenRequest, check_gating, token_policies, token_transport_options, v1_only_options
from ._diagnose import Capabilities, diagnose
from ._errors import MsiV2Error
from ._flow import Attestor
from ._imds import ImdsRetryPolicy, WireResponse
from ._registry import BindingRegistry
from ._singleflight import SingleFlight
from ._version import USER_AGENT
from .keys import KeyProvider
from .transport._requests import BindingTransport


class MsiV2ManagedIdentityCredential:
    """Authenticates as an Azure managed identity with MSI v2 mTLS proof-of-possession tokens.

    With ``mtls_proof_of_possession=False`` (the default) it is azure-identity's ``ManagedIdentityCredential``
    (MSI v1 bearer tokens). With ``True`` it acquires ``mtls_pop`` tokens bound to a short-lived certificate
    for a non-exportable key; pair it with :class:`MtlsPopTransport` so SDK clients present that certificate.

    :keyword str client_id: a user-assigned identity's client id.
    :keyword dict identity_config: ``{"object_id": ...}`` or ``{"resource_id": ...}`` (azure-identity's convention).
    :keyword bool mtls_proof_of_possession: request MSI v2 ``mtls_pop`` tokens.
    :keyword bool with_attestation_support: attest the KeyGuard key (requires ``mtls_proof_of_possession``).
    :keyword key_provider: where the binding key lives; default KeyGuard on Windows, required elsewhere.
    :keyword str minimum_binding_strength: ``"software"`` (default) or ``"keyguard"``: refuse weaker keys.
    :keyword connection_verify: CA bundle path for the token leg (and the SDK transport); never ``False``.
    """

    def __init__(
        self,
        *,
        client_id: Optional[str] = None,
        identity_config: Optional[Mapping[str, str]] = None,
        mtls_proof_of_possession: bool = False,
        with_attestation_support: bool = False,
        key_provider: Optional[KeyProvider] = None,
        minimum_binding_strength: Optional[str] = None,
        attestor: Optional[Attestor] = None,
        **kwargs: Any,
    ) -> None:
        check_gating(mtls_proof_of_possession, with_attestation_support)
        self._delegate: Any = None
        if not mtls_proof_of_possession:
            v1_only_options(key_provider, minimum_binding_strength, attestor)
            from azure.identity import ManagedIdentityCredential

            self._delegate = ManagedIdentityCredential(client_id=client_id, identity_config=identity_config, **kwargs)
            return
        clock: Callable[[], float] = kwargs.pop("_clock", time.time)
        self._clock = clock
        self._core = CredentialCore(
            client_id=client_id,
            identity_config=identity_config,
            with_attestation_support=with_attestation_support,
            key_provider=key_provider,
            minimum_binding_strength=minimum_binding_strength,
            attestor=attestor,
            clock=clock,
        )
        self._cache = self._core.cache
        self._flights = SingleFlight()
        self._imds = _imds_pipeline(kwargs, kwargs.pop("_sleep", None))
        self._token_transport = BindingTransport(**token_transport_options(kwargs))
        self._core.registry.add_retire_listener(self._token_transport.retire)
        self._token_pipeline: Pipeline[HttpRequest, HttpResponse] = Pipeline(
            transport=self._token_transport,
            policies=token_policies(kwargs),
        )
        self._closed = False

    # --- azure-core protocols -------------------------------------------------------------------------------
    def get_token(
        self,
        *scopes: str,
        claims: Optional[str] = None,
        tenant_id: Optional[str] = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """Request an access token for one scope (``<resource>/.default`` or a bare resource)."""
        if self._delegate is not None:
            return self._delegate.get_token(  # type: ignore[no-any-return]
                *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs
            )
        if claims is None and len(scopes) == 1:  # cache hit: one dict lookup and one clock read
            entry = self._cache.by_scope.get(scopes[0])
            if entry is not None and self._clock() < entry.refresh_on:
                return entry.access_token
        return self._acquire(scopes, claims, tenant_id=tenant_id, enable_cae=enable_cae).access_token

    def get_token_info(self, *scopes: str, options: Optional[TokenRequestOptions] = None) -> AccessTokenInfo:
        """Request an access token for one scope; ``token_type`` is ``"mtls_pop"`` on the MSI v2 path."""
        if self._delegate is not None:
            return self._delegate.get_token_info(*scopes, options=options)  # type: ignore[no-any-return]
        # cache hit: one dict lookup and one clock read. Only claims bypass the cache; SDK clients pass
        # options={"enable_cae": True}, which MSI v2 ignores, so it must not cost the slow path.
        if len(scopes) == 1 and not (options and options.get("claims")):
            entry = self._cache.by_scope.get(scopes[0])
            if entry is not None and self._clock() < entry.refresh_on:
                return entry.info
        opts: Mapping[str, Any] = options or {}
        return self._acquire(
            scopes, opts.get("claims"), tenant_id=opts.get("tenant_id"), enable_cae=opts.get("enable_cae")
        ).info

    @property
    def binding_registry(self) -> BindingRegistry:
        """Token -> binding registry read by :class:`MtlsPopTransport` (MSI v2 path only)."""
        if self._delegate is not None:
            raise AttributeError("binding_registry exists only with mtls_proof_of_possession=True")
        return self._core.registry

    def get_capabilities(self) -> Capabilities:
        """Probe what this host offers MSI v2 (IMDS v2, KeyGuard, attestation library, kill switch) without
        minting anything; ``max_binding_strength`` is ``"none"``, ``"software"`` or ``"keyguard"``."""
        if self._delegate is not None:
            return diagnose().capabilities
        return self._core.diagnose().capabilities

    def close(self) -> None:
        if self._delegate is not None:
            self._delegate.close()
            return
        if not self._closed:
            self._closed = True
            self._imds.__exit__()
            self._token_pipeline.__exit__()
            self._core.close()

    def __enter__(self) -> MsiV2ManagedIdentityCredential:
        if self._delegate is not None:
            self._delegate.__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        if self._delegate is not None:
            self._delegate.__exit__(*args)
        else:
            self.close()

    def __repr__(self) -> str:
        if self._delegate is not None:
            return "MsiV2ManagedIdentityCredential(mtls_proof_of_possession=False)"
        return (
            f"MsiV2ManagedIdentityCredential(identity={str(self._core.selector)!r}, mtls_proof_of_possession=True, "
            f"with_attestation_support={self._core.attest})"
        )

    # --- slow path ------------------------------------------------------------------------------------------
    def _acquire(self, scopes: tuple[str, ...], claims: Optional[str], **ignored: Any) -> TokenEntry:
        request = self._core.token_request(scopes, claims, **ignored)
        if request.claims:  # bypasses the token cache, reuses a valid certificate
            result = self._fetch(request)
            self._cache.register_uncached(result)
            return TokenEntry(result)
        cache, now = self._cache, self._clock()
        entry = cache.token(request.resource)
        if cache.usable(entry, now):
            assert entry is not None
            cache.index_scope(request.scope, request.resource)
            if now < entry.refresh_on or not cache.claim_refresh(entry, now):
                return entry
            try:
                return self._flights.do(("token", request.resource), lambda: self._fetch_and_store(request))
            except MsiV2Error as error:
                self._core.log_served_stale(entry, error)
                return entry
        return self._flights.do(("token", request.resource), lambda: self._fetch_and_store(request))

    def _fetch_and_store(self, request: TokenRequest) -> TokenEntry:
        return self._cache.store_token(request.scope, request.resource, self._fetch(request))

    def _fetch(self, request: TokenRequest) -> _flow.TokenResult:
        correlation_id = self._core.new_correlation_id()
        try:
            config = self._core.config()
            result: _flow.TokenResult = _flow.run(
                _flow.acquire_token(config, request.resource, request.claims, correlation_id),
                lambda effect: self._handle(effect, correlation_id),
            )
        except Exception as error:
            self._core.log_failure(request, error, correlation_id)
            raise
        self._core.log_success(request, result, correlation_id)
        return result

    # --- effects ----------------------------------------------------------------------------------------------
    def _handle(self, effect: _flow.Effect, correlation_id: str) -> Any:
        if isinstance(effect, _flow.SendImds):
            response = self._imds.run(effect.request, **self._core.imds_options(effect.metadata)).http_response
            self._core.imds_answered = True
            return WireResponse(response.status_code, response.headers, response.read())
        if isinstance(effect, _flow.SendToken):
            response = self._token_pipeline.run(effect.request, msiv2_binding=effect.binding).http_response
            return WireResponse(response.status_code, response.headers, response.read())
        if isinstance(effect, _flow.Blocking):
            return effect.fn()
        return self._binding(effect, correlation_id)

    def _binding(self, effect: _flow.NeedBinding, correlation_id: str) -> Binding:
        if effect.rejected is not None:
            self._cache.drop_binding(effect.rejected)
        now = self._clock()
        binding = self._cache.fresh_binding(now)
        if binding is not None:
            return binding
        try:
            return self._flights.do("binding", lambda: self._mint(correlation_id))
        except MsiV2Error:
            fallback = None if effect.rejected is not None else self._cache.fallback_binding(now)
            if fallback is None:
                raise
            return fallback

    def _mint(self, correlation_id: str) -> Binding:
        binding: Binding = _flow.run(
            _flow.mint_binding(self._core.config(), correlation_id),
            lambda effect: self._handle(effect, correlation_id),
        )
        self._cache.store_binding(binding)
        self._core.log_binding(binding, correlation_id)
        return binding


def _imds_pipeline(kwargs: dict[str, Any], sleep: Optional[Callable[[float], None]]) -> Pipeline[Any, Any]:
    transport = kwargs.get("transport") or RequestsTransport(**kwargs)
    return Pipeline(
        transport=transport,
        policies=[
            UserAgentPolicy(base_user_agent=USER_AGENT, **kwargs),
            ImdsRetryPolicy(sleep or time.sleep),
            HttpLoggingPolicy(**kwargs),
        ],
    )
