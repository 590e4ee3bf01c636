"""The async MSI v2 credential: the same core, flow and rules as the sync one, awaited I/O."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.pipeline import AsyncPipeline
from azure.core.pipeline.policies import HttpLoggingPolicy, UserAgentPolicy
from azure.core.rest import AsyncHttpResponse, HttpRequest

from .. import _flow
from .._binding import Binding
from .._cache import TokenEntry
from .._core import CredentialCore, TokenRequest, check_gating, token_policies, token_transport_options, v1_only_options
from .._diagnose import Capabilities, Report, diagnose
from .._errors import MsiV2Error
from .._flow import Attestor
from .._imds import AsyncImdsRetryPolicy, WireResponse
from .._registry import BindingRegistry
from .._singleflight import AsyncSingleFlight
from .._version import USER_AGENT
from ..keys import KeyProvider
from ..transport._aiohttp import AsyncBindingTransport


class MsiV2ManagedIdentityCredential:
    """Async twin of :class:`azure_msiv2_credential.MsiV2ManagedIdentityCredential` (same options).

    Implements ``AsyncTokenCredential`` and ``AsyncSupportsTokenInfo``. Network I/O is awaited on
    azure-core's async pipeline (aiohttp); key generation, NCrypt signing and attestation run in a worker
    thread so the event loop never blocks.
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
            from azure.identity.aio import ManagedIdentityCredential

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
        self._flights = AsyncSingleFlight()
        self._imds = _imds_pipeline(kwargs, kwargs.pop("_sleep", None))
        self._token_transport = AsyncBindingTransport(**token_transport_options(kwargs))
        self._core.registry.add_retire_listener(self._token_transport.retire_soon)
        self._token_pipeline: AsyncPipeline[HttpRequest, AsyncHttpResponse] = AsyncPipeline(
            transport=self._token_transport,
            policies=token_policies(kwargs),
        )
        self._closed = False

    async def get_token(
        self,
        *scopes: str,
        claims: Optional[str] = None,
        tenant_id: Optional[str] = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """Request an access token for one scope (``<resource>/.default`` or a bare resource)."""
        if self._delegate is not None:
            return await self._delegate.get_token(  # type: ignore[no-any-return]
                *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs
            )
        if claims is None and len(scopes) == 1:  # cache hit: one dict lookup and one clock read
            entry = self._cache.by_scope.get(scopes[0])
            if entry is not None and self._clock() < entry.refresh_on:
                return entry.access_token
        return (await self._acquire(scopes, claims, tenant_id=tenant_id, enable_cae=enable_cae)).access_token

    async def get_token_info(self, *scopes: str, options: Optional[TokenRequestOptions] = None) -> AccessTokenInfo:
        """Request an access token for one scope; ``token_type`` is ``"mtls_pop"`` on the MSI v2 path."""
        if self._delegate is not None:
            return await self._delegate.get_token_info(*scopes, options=options)  # type: ignore[no-any-return]
        if len(scopes) == 1 and not (options and options.get("claims")):  # see the sync twin
            entry = self._cache.by_scope.get(scopes[0])
            if entry is not None and self._clock() < entry.refresh_on:
                return entry.info
        opts: Mapping[str, Any] = options or {}
        entry = await self._acquire(
            scopes, opts.get("claims"), tenant_id=opts.get("tenant_id"), enable_cae=opts.get("enable_cae")
        )
        return entry.info

    @property
    def binding_registry(self) -> BindingRegistry:
        """Token -> binding registry read by the async :class:`MtlsPopTransport` (MSI v2 path only)."""
        if self._delegate is not None:
            raise AttributeError("binding_registry exists only with mtls_proof_of_possession=True")
        return self._core.registry

    async def get_capabilities(self) -> Capabilities:
        """Async twin of the sync ``get_capabilities`` (the short, bounded probes run in a worker thread)."""
        probe = diagnose if self._delegate is not None else self._core.diagnose
        report: Report = await asyncio.get_running_loop().run_in_executor(None, probe)
        return report.capabilities

    async def close(self) -> None:
        if self._delegate is not None:
            await self._delegate.close()
            return
        if not self._closed:
            self._closed = True
            await self._imds.__aexit__()
            await self._token_pipeline.__aexit__()
            self._core.close()

    async def __aenter__(self) -> MsiV2ManagedIdentityCredential:
        if self._delegate is not None:
            await self._delegate.__aenter__()
        return self

    async def __aexit__(self, *args: Any) -> None:
        if self._delegate is not None:
            await self._delegate.__aexit__(*args)
        else:
            await self.close()

    def __repr__(self) -> str:
        if self._delegate is not None:
            return "aio.MsiV2ManagedIdentityCredential(mtls_proof_of_possession=False)"
        return (
            f"aio.MsiV2ManagedIdentityCredential(identity={str(self._core.selector)!r}, "
            f"mtls_proof_of_possession=True, with_attestation_support={self._core.attest})"
        )

    # --- slow path (mirrors the sync credential) ----------------------------------------------------------
    async def _acquire(self, scopes: tuple[str, ...], claims: Optional[str], **ignored: Any) -> TokenEntry:
        request = self._core.token_request(scopes, claims, **ignored)
        if request.claims:
            result = await self._fetch(request)
            self._cache.register_uncached(result)
            return TokenEntry(result)
        cache, now = self._cache, self._clock()
        entry = cache.token(request.resource)
        if entry is not None and cache.usable(entry, now):
            cache.index_scope(request.scope, request.resource)
            if now < entry.refresh_on or not cache.claim_refresh(entry, now):
                return entry
            try:
                return await self._flights.do(("token", request.resource), lambda: self._fetch_and_store(request))
            except MsiV2Error as error:
                self._core.log_served_stale(entry, error)
                return entry
        return await self._flights.do(("token", request.resource), lambda: self._fetch_and_store(request))

    async def _fetch_and_store(self, request: TokenRequest) -> TokenEntry:
        return self._cache.store_token(request.scope, request.resource, await self._fetch(request))

    async def _fetch(self, request: TokenRequest) -> _flow.TokenResult:
        correlation_id = self._core.new_correlation_id()
        try:
            config = self._core.config()
            result: _flow.TokenResult = await _run(
                _flow.acquire_token(config, request.resource, request.claims, correlation_id),
                lambda effect: self._handle(effect, correlation_id),
            )
        except Exception as error:
            self._core.log_failure(request, error, correlation_id)
            raise
        self._core.log_success(request, result, correlation_id)
        return result

    async def _handle(self, effect: _flow.Effect, correlation_id: str) -> Any:
        if isinstance(effect, _flow.SendImds):
            pipeline_response = await self._imds.run(effect.request, **self._core.imds_options(effect.metadata))
            self._core.imds_answered = True
            response = pipeline_response.http_response
            return WireResponse(response.status_code, response.headers, await response.read())
        if isinstance(effect, _flow.SendToken):
            pipeline_response = await self._token_pipeline.run(effect.request, msiv2_binding=effect.binding)
            response = pipeline_response.http_response
            return WireResponse(response.status_code, response.headers, await response.read())
        if isinstance(effect, _flow.Blocking):
            return await asyncio.get_running_loop().run_in_executor(None, effect.fn)
        return await self._binding(effect, correlation_id)

    async def _binding(self, effect: _flow.NeedBinding, correlation_id: str) -> Binding:
        if effect.rejected is not None:
            self._cache.drop_binding(effect.rejected)
        now = self._clock()
        binding = self._cache.fresh_binding(now)
        if binding is not None:
            return binding
        try:
            return await self._flights.do("binding", lambda: self._mint(correlation_id))
        except MsiV2Error:
            fallback = None if effect.rejected is not None else self._cache.fallback_binding(now)
            if fallback is None:
                raise
            return fallback

    async def _mint(self, correlation_id: str) -> Binding:
        binding: Binding = await _run(
            _flow.mint_binding(self._core.config(), correlation_id),
            lambda effect: self._handle(effect, correlation_id),
        )
        self._cache.store_binding(binding)
        self._core.log_binding(binding, correlation_id)
        return binding


async def _run(flow: _flow.Flow, handle: Callable[[_flow.Effect], Any]) -> Any:
    """Drive ``flow`` on the event loop, awaiting each effect (the async twin of ``_flow.run``)."""
    value: Any = None
    error: Optional[BaseException] = None
    while True:
        done, item = _flow.step(flow, value, error)
        if done:
            return item
        try:
            value, error = await handle(item), None
        except Exception as exc:
            value, error = None, exc


def _imds_pipeline(kwargs: dict[str, Any], sleep: Optional[Callable[[float], Any]]) -> AsyncPipeline[Any, Any]:
    transport = kwargs.get("transport")
    if transport is None:
        from azure.core.pipeline.transport import AioHttpTransport

        transport = AioHttpTransport(**kwargs)
    return AsyncPipeline(
        transport=transport,
        policies=[
            UserAgentPolicy(base_user_agent=USER_AGENT, **kwargs),
            AsyncImdsRetryPolicy(sleep),
            HttpLoggingPolicy(**kwargs),
        ],
    )
