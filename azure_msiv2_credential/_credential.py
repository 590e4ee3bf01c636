"""The synchronous MSI v2 credential: performs the shared core's effects by blocking."""

from __future__ import annotations

import time
from typing import Any, Optional

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.pipeline import Pipeline
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest, HttpResponse

from . import _flow
from ._cache import TokenEntry
from ._cache import lookup as _lookup
from ._credential_base import CredentialBase, imds_transport_options, pipeline_policies, token_transport_options
from ._diagnose import Capabilities, diagnose
from ._imds import ImdsRetryPolicy, WireResponse
from ._singleflight import SingleFlight
from .transport._requests import BindingTransport


class MsiV2ManagedIdentityCredential(CredentialBase):
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
    :keyword transport: an azure-core transport for the IMDS calls (the token leg always uses TLS with the
        binding); other azure-core pipeline options (timeouts, ``user_agent``, logging) apply as usual.
    """

    def _v1_credential(self, **kwargs: Any) -> Any:
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(**kwargs)

    def _open(self, kwargs: dict[str, Any], sleep: Any) -> None:
        self._flights = SingleFlight()
        self._imds: Pipeline[HttpRequest, HttpResponse] = Pipeline(
            transport=kwargs.get("transport") or RequestsTransport(**imds_transport_options(kwargs)),
            policies=pipeline_policies(kwargs, ImdsRetryPolicy(sleep or time.sleep)),
        )
        self._token_transport = BindingTransport(**token_transport_options(kwargs))
        self._core.registry.add_retire_listener(self._token_transport.retire)
        self._token_pipeline: Pipeline[HttpRequest, HttpResponse] = Pipeline(
            transport=self._token_transport, policies=pipeline_policies(kwargs)
        )
        self._hits = self._cache.by_scope  # the fast-path index itself: one attribute load per hit
        self._closed = False

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
            entry = _lookup(self._hits, scopes[0])
            if entry is not None and self._clock() < entry.refresh_on:
                return entry.access_token
        return self._acquire(scopes, claims, tenant_id=tenant_id, enable_cae=enable_cae).access_token

    def get_token_info(self, *scopes: str, options: Optional[TokenRequestOptions] = None) -> AccessTokenInfo:
        """Request an access token for one scope; ``token_type`` is ``"mtls_pop"`` on the MSI v2 path."""
        if self._delegate is not None:
            return self._delegate.get_token_info(*scopes, options=options)  # type: ignore[no-any-return]
        claims = options.get("claims") if options else None
        if not claims and len(scopes) == 1:  # cache hit: one dict lookup and one clock read
            entry = _lookup(self._hits, scopes[0])
            if entry is not None and self._clock() < entry.refresh_on:
                return entry.info
        opts: Any = options or {}
        return self._acquire(scopes, claims, tenant_id=opts.get("tenant_id"), enable_cae=opts.get("enable_cae")).info

    def get_capabilities(self) -> Capabilities:
        """Probe what this host offers MSI v2 (IMDS v2, KeyGuard, attestation library, kill switch) without
        minting anything; ``max_binding_strength`` is ``"none"``, ``"software"`` or ``"keyguard"``."""
        report = diagnose() if self._delegate is not None else self._core.diagnose()
        return report.capabilities

    def close(self) -> None:
        """Close the pipelines and forget cached tokens and certificates (the v1 delegate: forwarded)."""
        if self._delegate is not None:
            self._delegate.close()
            return
        if not self._closed:
            self._closed = True
            self._core.close()
            self._imds.__exit__()
            self._token_pipeline.__exit__()

    def __enter__(self) -> MsiV2ManagedIdentityCredential:
        if self._delegate is not None:
            self._delegate.__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        if self._delegate is not None:
            self._delegate.__exit__(*args)
        else:
            self.close()

    # --- effects ----------------------------------------------------------------------------------------------
    def _acquire(self, scopes: tuple[str, ...], claims: Optional[str], **ignored: Any) -> TokenEntry:
        entry: TokenEntry = _flow.run(self._core.acquire(scopes, claims, **ignored), self._perform)
        return entry

    def _perform(self, effect: _flow.Effect) -> Any:
        if isinstance(effect, _flow.SendImds):
            response = self._imds.run(effect.request, **effect.options).http_response
            return WireResponse(response.status_code, response.headers, response.read())
        if isinstance(effect, _flow.SendToken):
            response = self._token_pipeline.run(effect.request, msiv2_binding=effect.binding).http_response
            return WireResponse(response.status_code, response.headers, response.read())
        if isinstance(effect, _flow.Blocking):
            return effect.fn()
        return self._flights.do(effect.key, lambda: _flow.run(effect.flow(), self._perform))
