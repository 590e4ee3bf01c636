"""The async MSI v2 credential: performs the shared core's effects by awaiting."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.pipeline import AsyncPipeline
from azure.core.rest import AsyncHttpResponse, HttpRequest

from .. import _flow
from .._cache import TokenEntry
from .._cache import lookup as _lookup
from .._credential_base import CredentialBase, imds_transport_options, pipeline_policies, token_transport_options
from .._diagnose import Capabilities, Report, diagnose
from .._imds import AsyncImdsRetryPolicy, WireResponse
from .._singleflight import AsyncSingleFlight
from ..transport._aiohttp import AsyncBindingTransport


class MsiV2ManagedIdentityCredential(CredentialBase):
    """Async twin of :class:`azure_msiv2_credential.MsiV2ManagedIdentityCredential` (same options).

    Implements ``AsyncTokenCredential`` and ``AsyncSupportsTokenInfo``. Network I/O is awaited on
    azure-core's async pipeline (aiohttp); key generation, NCrypt signing and attestation run in a worker
    thread so the event loop never blocks. Like aiohttp sessions, an instance belongs to the event loop it
    is first used on.
    """

    def _v1_credential(self, **kwargs: Any) -> Any:
        from azure.identity.aio import ManagedIdentityCredential

        return ManagedIdentityCredential(**kwargs)

    def _open(self, kwargs: dict[str, Any], sleep: Any) -> None:
        from azure.core.pipeline.transport import AioHttpTransport

        self._flights = AsyncSingleFlight()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._imds: AsyncPipeline[HttpRequest, AsyncHttpResponse] = AsyncPipeline(
            transport=kwargs.get("transport") or AioHttpTransport(**imds_transport_options(kwargs)),
            policies=pipeline_policies(kwargs, AsyncImdsRetryPolicy(sleep)),
        )
        self._token_transport = AsyncBindingTransport(**token_transport_options(kwargs))
        self._core.registry.add_retire_listener(self._token_transport.retire_soon)
        self._token_pipeline: AsyncPipeline[HttpRequest, AsyncHttpResponse] = AsyncPipeline(
            transport=self._token_transport, policies=pipeline_policies(kwargs)
        )
        self._hits = self._cache.by_scope  # the fast-path index itself: one attribute load per hit
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
            entry = _lookup(self._hits, scopes[0])
            if entry is not None and self._clock() < entry.refresh_on:
                return entry.access_token
        return (await self._acquire(scopes, claims, tenant_id=tenant_id, enable_cae=enable_cae)).access_token

    async def get_token_info(self, *scopes: str, options: Optional[TokenRequestOptions] = None) -> AccessTokenInfo:
        """Request an access token for one scope; ``token_type`` is ``"mtls_pop"`` on the MSI v2 path."""
        if self._delegate is not None:
            return await self._delegate.get_token_info(*scopes, options=options)  # type: ignore[no-any-return]
        claims = options.get("claims") if options else None
        if not claims and len(scopes) == 1:  # cache hit: one dict lookup and one clock read
            entry = _lookup(self._hits, scopes[0])
            if entry is not None and self._clock() < entry.refresh_on:
                return entry.info
        opts: Any = options or {}
        entry = await self._acquire(scopes, claims, tenant_id=opts.get("tenant_id"), enable_cae=opts.get("enable_cae"))
        return entry.info

    async def get_capabilities(self) -> Capabilities:
        """Async twin of the sync ``get_capabilities`` (the short, bounded probes run in a worker thread)."""
        probe = diagnose if self._delegate is not None else self._core.diagnose
        report: Report = await asyncio.get_running_loop().run_in_executor(None, probe)
        return report.capabilities

    async def close(self) -> None:
        """Close the pipelines and forget cached tokens and certificates (the v1 delegate: forwarded)."""
        if self._delegate is not None:
            await self._delegate.close()
            return
        if not self._closed:
            self._closed = True
            self._core.close()
            await self._imds.__aexit__()
            await self._token_pipeline.__aexit__()

    async def __aenter__(self) -> MsiV2ManagedIdentityCredential:
        if self._delegate is not None:
            await self._delegate.__aenter__()
        return self

    async def __aexit__(self, *args: Any) -> None:
        if self._delegate is not None:
            await self._delegate.__aexit__(*args)
        else:
            await self.close()

    # --- effects ----------------------------------------------------------------------------------------------
    async def _acquire(self, scopes: tuple[str, ...], claims: Optional[str], **ignored: Any) -> TokenEntry:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "this async credential was first used on another event loop; its connections belong to that "
                "loop. Create one credential per event loop."
            )
        entry: TokenEntry = await _run(self._core.acquire(scopes, claims, **ignored), self._perform)
        return entry

    async def _perform(self, effect: _flow.Effect) -> Any:
        if isinstance(effect, _flow.SendImds):
            pipeline_response = await self._imds.run(effect.request, **effect.options)
            response = pipeline_response.http_response
            return WireResponse(response.status_code, response.headers, await response.read())
        if isinstance(effect, _flow.SendToken):
            pipeline_response = await self._token_pipeline.run(effect.request, msiv2_binding=effect.binding)
            response = pipeline_response.http_response
            return WireResponse(response.status_code, response.headers, await response.read())
        if isinstance(effect, _flow.Blocking):
            return await asyncio.get_running_loop().run_in_executor(None, effect.fn)
        return await self._flights.do(effect.key, lambda: _run(effect.flow(), self._perform))


async def _run(flow: _flow.Flow, perform: Any) -> Any:
    """Drive ``flow`` on the event loop, awaiting each effect (the async twin of ``_flow.run``)."""
    value: Any = None
    error: Optional[BaseException] = None
    while True:
        done, item = _flow.step(flow, value, error)
        if done:
            return item
        try:
            value, error = await perform(item), None
        except Exception as exc:  # handed back into the flow, which decides what it means
            value, error = None, exc
