"""Synchronous transports: :class:`BindingTransport` (TLS with a given binding) and :class:`MtlsPopTransport`.

Each binding gets its own azure-core ``RequestsTransport`` over its own ``requests`` session, so response
objects, streaming, timeouts and proxies behave exactly as azure-core's, and connections made with one
certificate are never reused for another (or for a request that must carry none). Requests without a
binding share one plain pool without a client certificate.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Optional

import requests
from azure.core.pipeline.transport import HttpTransport, RequestsTransport
from azure.core.rest import HttpRequest, HttpResponse
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .._binding import Binding
from .._registry import HasBindingRegistry
from ._mtls_pop import BINDING_OPTION, bind_request, pop_binding, require_https
from ._tls import Verify, check_verify, ssl_context_for

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs

# Connection options that belong to the plain pool only: a binding brings its own session and certificate.
_PLAIN_ONLY = ("session", "session_owner", "connection_cert", "connection_verify")


def no_retries() -> Retry:
    """urllib3 must neither retry nor follow redirects: azure-core's policies decide both."""
    return Retry(total=False, redirect=False, raise_on_status=False)


class _BindingAdapter(HTTPAdapter):
    """An adapter whose every TLS connection uses the binding's context, direct or tunnelled.

    ``requests`` normally builds TLS settings per request from ``verify``/``cert``; here they are fixed by
    the context (trust and client certificate), which is also handed to proxy managers so an
    ``HTTPS_PROXY`` tunnel cannot open a connection without the binding.
    """

    def __init__(self, ssl_context: Any, **kwargs: Any) -> None:
        self._ssl_context = ssl_context
        super().__init__(max_retries=no_retries(), **kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["ssl_context"] = self._ssl_context
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        host_params, _ = super().build_connection_pool_key_attributes(request, True, None)
        return host_params, {"cert_reqs": "CERT_REQUIRED"}  # trust and client certificate: the context's

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # Without this, urllib3 would reload a CA file into the shared context on every new connection.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = conn.ca_cert_dir = None
        conn.cert_file = conn.key_file = None


def binding_session(binding: Binding, verify: Verify, *, trust_env: bool = True) -> requests.Session:
    """A ``requests`` session that presents ``binding`` on every HTTPS connection it opens."""
    if binding.key.strength == "keyguard":
        from ._keyguard import winhttp_session

        return winhttp_session(binding, verify, trust_env=trust_env)
    session = requests.Session()
    session.trust_env = trust_env
    adapter = _BindingAdapter(ssl_context_for(binding, verify))
    session.mount("https://", adapter)  # http:// is refused for bindings before it gets here
    return session


class BindingTransport(HttpTransport[HttpRequest, HttpResponse]):
    """An azure-core transport that sends a request over TLS with the binding it is given.

    ``send(request, msiv2_binding=binding)`` presents ``binding``'s certificate (software keys through an
    ``SSLContext``, KeyGuard keys through WinHTTP); ``send(request)`` uses a plain pool without one.
    Accepts ``RequestsTransport``'s options (``connection_verify``, ``connection_timeout``,
    ``read_timeout``, ``use_env_settings``, ...) and ``proxies`` (a default for every request; the
    environment's proxies apply otherwise). turning ``connection_verify`` off is refused.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._proxies: Optional[dict[str, str]] = kwargs.pop("proxies", None)
        self._verify = check_verify(kwargs.get("connection_verify", True))
        self._trust_env: bool = kwargs.get("use_env_settings", True)
        self._bound_kwargs = {k: v for k, v in kwargs.items() if k not in _PLAIN_ONLY}
        self._plain = RequestsTransport(**kwargs)
        self._bound: dict[Binding, dict[Verify, RequestsTransport]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> BindingTransport:
        self.open()
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def open(self) -> None:
        self._plain.open()  # raises if closed, as azure-core transports do
        self._closed = False

    def close(self) -> None:
        """Close the plain pool and every binding's pools."""
        with self._lock:
            self._closed = True
            bound, self._bound = self._bound, {}
        for pools in bound.values():
            for transport in pools.values():
                transport.close()
        self._plain.close()

    def retire(self, binding: Binding) -> None:
        """Close ``binding``'s connections; a later request with it would open new ones."""
        with self._lock:
            pools = self._bound.pop(binding, None)
        for transport in (pools or {}).values():
            transport.close()

    @property
    def pooled_bindings(self) -> frozenset[Binding]:
        """The bindings that currently hold connection pools (for diagnostics and tests)."""
        return frozenset(self._bound)

    def send(self, request: HttpRequest, *, msiv2_binding: Optional[Binding] = None, **kwargs: Any) -> HttpResponse:
        """Send ``request``, presenting ``msiv2_binding`` when given (then the URL must be https)."""
        if self._proxies is not None:
            kwargs.setdefault("proxies", self._proxies)
        if msiv2_binding is None:
            return self._plain.send(request, **kwargs)  # type: ignore[no-any-return]
        require_https(request.url)
        if kwargs.pop("connection_cert", None) is not None:
            raise ValueError("connection_cert cannot be combined with a binding: the binding is the certificate")
        verify = kwargs.pop("connection_verify", self._verify)
        transport = self._pool(msiv2_binding, verify)
        if transport.session is None:  # retired by another thread since we looked it up: take a fresh pool
            transport = self._pool(msiv2_binding, verify)
        return transport.send(request, **kwargs)  # type: ignore[no-any-return]

    def _pool(self, binding: Binding, verify: Verify) -> RequestsTransport:
        pools = self._bound.get(binding)
        transport = pools.get(verify) if pools is not None else None
        return transport if transport is not None else self._open_pool(binding, check_verify(verify))

    def _open_pool(self, binding: Binding, verify: Verify) -> RequestsTransport:
        session = binding_session(binding, verify, trust_env=self._trust_env)
        transport = RequestsTransport(session=session, session_owner=True, **self._bound_kwargs)
        with self._lock:
            if self._closed:
                session.close()
                raise ValueError("the transport is closed")
            pools = self._bound.setdefault(binding, {})
            existing = pools.get(verify)
            if existing is None:
                pools[verify] = transport
                return transport
        session.close()  # another thread won the race
        return existing


class MtlsPopTransport(BindingTransport):
    """The transport to give an Azure SDK client so its MSI v2 tokens travel with their certificate.

    Per request: when ``Authorization`` carries a token ``credential`` issued (``Bearer <t>`` as SDK
    policies write it, or ``mtls_pop <t>``), the request goes over TLS with that token's binding and says
    ``Authorization: mtls_pop <t>`` (plus ``x-ms-tokenboundauth: true`` unless
    ``token_bound_auth_header=False``). Any other request passes through untouched, without a client
    certificate. Redirects are never followed here (azure-core's redirect policy decides and strips the
    token across hosts), so a certificate never follows a token-less request.

    :param credential: anything with a ``binding_registry`` (an ``MsiV2ManagedIdentityCredential``).
    :keyword transport_kwargs: ``RequestsTransport`` options, e.g. ``connection_verify=<CA bundle>``.
    """

    def __init__(self, credential: HasBindingRegistry, *, token_bound_auth_header: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self._registry = credential.binding_registry
        self._token_bound_auth_header = token_bound_auth_header
        self._registry.add_retire_listener(self._on_retire)  # held weakly by the registry

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        explicit = pop_binding(kwargs)
        found = bind_request(request.headers, self._registry, self._token_bound_auth_header)
        kwargs[BINDING_OPTION] = explicit or found
        return super().send(request, **kwargs)

    def _on_retire(self, binding: Binding) -> None:
        self.retire(binding)
