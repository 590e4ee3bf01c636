"""``MtlsPopAuthenticationPolicy``: mtls_pop authorization for pipelines built by hand.

SDK clients bring their own bearer policy, which :class:`MtlsPopTransport` rewrites on the way out. Code
that builds its own ``PipelineClient`` can instead use this policy: it is azure-core's bearer policy (token
caching, ``refresh_on``/expiry refresh with jitter, ``get_token_info`` with a ``get_token`` fallback,
CAE and claims challenges) whose header says ``mtls_pop`` and which hands the token's binding to the
transport as the ``msiv2_binding`` option. Pair it with a :class:`BindingTransport` (or
``MtlsPopTransport``); a plain transport would reject the unknown option rather than send the token
without its certificate.
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlsplit

from azure.core.credentials import TokenProvider
from azure.core.credentials_async import AsyncTokenProvider
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy, BearerTokenCredentialPolicy

from .._registry import BindingRegistry
from ._mtls_pop import AUTHORIZATION, BINDING_OPTION, TOKEN_BOUND_AUTH_HEADER, bind_request, require_https


def _registry_of(credential: object, binding_registry: Optional[BindingRegistry]) -> BindingRegistry:
    registry = binding_registry if binding_registry is not None else getattr(credential, "binding_registry", None)
    if not isinstance(registry, BindingRegistry):
        raise TypeError(
            "the credential has no binding_registry; pass the MSI v2 credential, or binding_registry= "
            "when it is wrapped (e.g. in a ChainedTokenCredential)"
        )
    return registry


#: Context key remembering the host a request was first authorized for (redirects reuse the context).
_ORIGIN = "msiv2_origin_host"


def _left_origin(request: PipelineRequest[Any]) -> bool:
    """True once a redirect has taken the request to another host than the one first authorized.

    Tracked here, not only through azure-core's ``insecure_domain_change`` flag: older azure-core releases
    do not set it on the sync path, and a token must never follow a cross-host redirect."""
    host = urlsplit(request.http_request.url).netloc.lower()
    origin = request.context.setdefault(_ORIGIN, host)
    flagged = request.context.get("insecure_domain_change") or request.context.options.get("insecure_domain_change")
    return bool(flagged) or origin != host


def _bind(request: PipelineRequest[Any], registry: BindingRegistry, token_bound_auth_header: bool) -> None:
    """Turn the bearer header into mtls_pop and route the request through the token's binding."""
    if _left_origin(request):
        # RedirectPolicy followed a redirect to another host: neither the token nor its certificate go there
        # (SensitiveHeaderCleanupPolicy would drop the header, but a hand-built pipeline may not have it).
        request.http_request.headers.pop(AUTHORIZATION, None)
        request.http_request.headers.pop(TOKEN_BOUND_AUTH_HEADER, None)
        request.context.options.pop(BINDING_OPTION, None)
        return
    binding = bind_request(request.http_request.headers, registry, token_bound_auth_header)
    if binding is None:
        request.context.options.pop(BINDING_OPTION, None)  # a foreign token: plain bearer, no certificate
        return
    require_https(request.http_request.url)
    request.context.options[BINDING_OPTION] = binding


class MtlsPopAuthenticationPolicy(BearerTokenCredentialPolicy[Any, Any]):
    """Authorizes requests with ``Authorization: mtls_pop <token>`` and the token's certificate.

    :param credential: the MSI v2 credential (``get_token_info`` or ``get_token``).
    :param scopes: the scopes to request, e.g. ``"https://vault.azure.net/.default"``.
    :keyword binding_registry: where to find a token's binding; default ``credential.binding_registry``.
    :keyword bool token_bound_auth_header: also send ``x-ms-tokenboundauth: true`` (default True).
    Other keywords (``enable_cae``) are azure-core's. A token the registry does not know (another
    credential's, from a chain) is sent as ``Bearer`` without a certificate. http:// URLs are refused.
    """

    def __init__(
        self,
        credential: TokenProvider,
        *scopes: str,
        binding_registry: Optional[BindingRegistry] = None,
        token_bound_auth_header: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(credential, *scopes, **kwargs)
        self._registry = _registry_of(credential, binding_registry)
        self._token_bound_auth_header = token_bound_auth_header

    def on_request(self, request: PipelineRequest[Any]) -> None:
        super().on_request(request)
        _bind(request, self._registry, self._token_bound_auth_header)

    def authorize_request(self, request: PipelineRequest[Any], *scopes: str, **kwargs: Any) -> None:
        super().authorize_request(request, *scopes, **kwargs)
        _bind(request, self._registry, self._token_bound_auth_header)


class AsyncMtlsPopAuthenticationPolicy(AsyncBearerTokenCredentialPolicy[Any, Any]):
    """Async twin of :class:`MtlsPopAuthenticationPolicy`; pair it with ``AsyncBindingTransport``."""

    def __init__(
        self,
        credential: AsyncTokenProvider,
        *scopes: str,
        binding_registry: Optional[BindingRegistry] = None,
        token_bound_auth_header: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(credential, *scopes, **kwargs)
        self._registry = _registry_of(credential, binding_registry)
        self._token_bound_auth_header = token_bound_auth_header

    async def on_request(self, request: PipelineRequest[Any]) -> None:
        await super().on_request(request)
        _bind(request, self._registry, self._token_bound_auth_header)

    async def authorize_request(self, request: PipelineRequest[Any], *scopes: str, **kwargs: Any) -> None:
        await super().authorize_request(request, *scopes, **kwargs)
        _bind(request, self._registry, self._token_bound_auth_header)
