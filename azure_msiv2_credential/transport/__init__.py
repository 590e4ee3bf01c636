"""TLS with a binding, and the azure-core pieces that carry mtls_pop tokens to Azure services.

- :func:`ssl_context_for`: the one ``SSLContext`` per software binding (token leg and SDK calls alike).
- :class:`BindingTransport`: ``send(request, msiv2_binding=...)`` presents a given binding.
- :class:`MtlsPopTransport`: finds the binding from the request's token; give it to SDK clients.
- :class:`MtlsPopAuthenticationPolicy`: for hand-built pipelines; pairs with a binding transport.

The async twins (``AsyncBindingTransport``, ``AsyncMtlsPopTransport``,
``AsyncMtlsPopAuthenticationPolicy``) live here too and are re-exported by ``azure_msiv2_credential.aio``
under the sync names. aiohttp is imported only when they are first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._mtls_pop import BINDING_OPTION, TOKEN_BOUND_AUTH_HEADER, InsecureBindingError
from ._policy import AsyncMtlsPopAuthenticationPolicy, MtlsPopAuthenticationPolicy
from ._requests import BindingTransport, MtlsPopTransport
from ._tls import plain_ssl_context, ssl_context_for

if TYPE_CHECKING:
    from ._aiohttp import AsyncBindingTransport
    from ._aiohttp import MtlsPopTransport as AsyncMtlsPopTransport

__all__ = [
    "BINDING_OPTION",
    "TOKEN_BOUND_AUTH_HEADER",
    "AsyncBindingTransport",
    "AsyncMtlsPopAuthenticationPolicy",
    "AsyncMtlsPopTransport",
    "BindingTransport",
    "InsecureBindingError",
    "MtlsPopAuthenticationPolicy",
    "MtlsPopTransport",
    "plain_ssl_context",
    "ssl_context_for",
]

_ASYNC = {
    "AsyncBindingTransport": ("._aiohttp", "AsyncBindingTransport"),
    "AsyncMtlsPopTransport": ("._aiohttp", "MtlsPopTransport"),
}


def __getattr__(name: str) -> Any:
    """Import the aiohttp-based classes on first use: aiohttp is an optional dependency."""
    if name in _ASYNC:
        import importlib

        module, attribute = _ASYNC[name]
        return getattr(importlib.import_module(module, __name__), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
