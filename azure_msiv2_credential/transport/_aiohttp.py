"""Asynchronous transports: :class:`AsyncBindingTransport` and the async :class:`MtlsPopTransport`.

The async twins of ``_requests``: one azure-core ``AioHttpTransport`` per binding over its own
``aiohttp.ClientSession`` whose connector holds the binding's ``SSLContext`` (aiohttp uses the connector's
context for direct and proxied TLS alike). A KeyGuard binding goes through WinHTTP, which blocks, so its
requests run on worker threads through azure-core's ``AsyncioRequestsTransport``.

Building a binding's ``SSLContext`` (loading the CA bundle, the certificate and the key) blocks for about as
long as a handshake, so it runs on the loop's default executor, never on the event loop itself.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import threading
from collections.abc import Iterable
from typing import Any, Optional

import aiohttp
from azure.core.pipeline.transport import AioHttpTransport, AsyncHttpTransport, AsyncioRequestsTransport
from azure.core.rest import AsyncHttpResponse, HttpRequest

from .._binding import Binding
from .._registry import HasBindingRegistry
from ._mtls_pop import BINDING_OPTION, bind_request, pop_binding, require_https
from ._requests import _PLAIN_ONLY
from ._tls import Verify, check_verify, plain_ssl_context, ssl_context_for

_Transport = AsyncHttpTransport[Any, Any]


async def _close(transport: _Transport) -> None:
    """Close either kind of pool: ``AioHttpTransport.close`` is a coroutine, ``AsyncioRequestsTransport``'s
    (inherited from ``RequestsTransport``) is a plain method."""
    result: Any = transport.close()
    if inspect.isawaitable(result):
        await result


class AsyncBindingTransport(AsyncHttpTransport[HttpRequest, AsyncHttpResponse]):
    """An async azure-core transport that sends a request over TLS with the binding it is given.

    ``await send(request, msiv2_binding=binding)`` presents ``binding``'s certificate; ``await
    send(request)`` uses a plain session without one. Accepts ``AioHttpTransport``'s options
    (``connection_verify``, ``connection_timeout``, ``read_timeout``, ``use_env_settings``, ``session`` for
    the plain path) and ``proxies`` (a default for every request). turning ``connection_verify`` off is refused.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._proxies: Optional[dict[str, str]] = kwargs.pop("proxies", None)
        self._verify = check_verify(kwargs.get("connection_verify", True))
        self._trust_env: bool = kwargs.get("use_env_settings", True)
        self._plain_kwargs = kwargs
        self._bound_kwargs = {k: v for k, v in kwargs.items() if k not in _PLAIN_ONLY}
        self._plain: Optional[_Transport] = None
        self._bound: dict[Binding, dict[Verify, _Transport]] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closing: set[asyncio.Future[Any]] = set()
        self._retired: list[_Transport] = []  # retired from a synchronous callback, not closed yet
        self._retired_lock = threading.Lock()
        self._closed = False

    async def __aenter__(self) -> AsyncBindingTransport:
        await self.open()
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.close()

    async def open(self) -> None:
        await self._plain_transport().open()

    async def close(self) -> None:
        """Close the plain session and every binding's sessions."""
        self._closed = True
        bound, self._bound = self._bound, {}
        plain, self._plain = self._plain, None
        transports = [t for pools in bound.values() for t in pools.values()]
        if plain is not None:
            transports.append(plain)
        await asyncio.gather(*(_close(t) for t in transports), *self._closing, self._drain_retired())

    async def retire(self, binding: Binding) -> None:
        """Close ``binding``'s sessions now; a later request with it would open new ones."""
        pools = self._bound.pop(binding, None)
        await asyncio.gather(*(_close(t) for t in (pools or {}).values()))

    @property
    def pooled_bindings(self) -> frozenset[Binding]:
        """The bindings that currently hold sessions (for diagnostics and tests)."""
        return frozenset(self._bound)

    async def send(
        self, request: HttpRequest, *, msiv2_binding: Optional[Binding] = None, **kwargs: Any
    ) -> AsyncHttpResponse:
        """Send ``request``, presenting ``msiv2_binding`` when given (then the URL must be https)."""
        if self._retired:
            await self._drain_retired()
        if self._proxies is not None:
            kwargs.setdefault("proxies", self._proxies)
        if msiv2_binding is None:
            return await self._plain_transport().send(request, **kwargs)  # type: ignore[no-any-return]
        transport = await self._transport_for(request, msiv2_binding, kwargs)
        return await transport.send(request, **kwargs)  # type: ignore[no-any-return]

    def _plain_transport(self) -> _Transport:
        transport = self._plain
        if transport is None:
            if self._closed:
                raise ValueError("the transport is closed")
            self._loop = asyncio.get_running_loop()
            if "session" in self._plain_kwargs:
                transport = AioHttpTransport(**self._plain_kwargs)
            else:
                transport = AioHttpTransport(
                    session=self._session(plain_ssl_context(self._verify)), **self._bound_kwargs
                )
            self._plain = transport
        return transport

    async def _transport_for(self, request: HttpRequest, binding: Binding, kwargs: dict[str, Any]) -> _Transport:
        require_https(request.url)
        if kwargs.pop("connection_cert", None) is not None:
            raise ValueError("connection_cert cannot be combined with a binding: the binding is the certificate")
        verify = kwargs.pop("connection_verify", self._verify)
        transport = self._pooled(binding, verify)
        if transport is None:
            loop = asyncio.get_running_loop()
            self._loop = loop
            checked = check_verify(verify)
            context: Optional[ssl.SSLContext] = None
            if binding.key.strength != "keyguard":
                # Off the loop: loading the bundle and the key blocks (ssl_context_for caches per binding).
                context = await loop.run_in_executor(None, ssl_context_for, binding, checked)
            # Another send may have opened this pool while we waited: use it rather than open a second one.
            transport = self._pooled(binding, verify)
            if transport is None:
                transport = self._open_pool(binding, checked, context)
                self._bound.setdefault(binding, {})[verify] = transport
        return transport

    def _pooled(self, binding: Binding, verify: Any) -> Optional[_Transport]:
        pools = self._bound.get(binding)
        transport = pools.get(verify) if pools is not None else None
        if transport is None and self._closed:
            raise ValueError("the transport is closed")
        return transport

    def _open_pool(self, binding: Binding, verify: Verify, context: Optional[ssl.SSLContext]) -> _Transport:
        if context is None:
            from ._keyguard import winhttp_session

            session = winhttp_session(binding, verify, trust_env=self._trust_env)
            threaded: _Transport = AsyncioRequestsTransport(session=session, session_owner=True, **self._bound_kwargs)
            return threaded
        transport: _Transport = AioHttpTransport(session=self._session(context), **self._bound_kwargs)
        return transport

    def _session(self, context: ssl.SSLContext) -> aiohttp.ClientSession:
        # The same session settings AioHttpTransport uses for its own, plus our connector.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            trust_env=self._trust_env,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    def retire_soon(self, binding: Binding) -> None:
        """:meth:`retire` for synchronous callers (the registry's retire listener): closes on the owning loop."""
        pools = self._bound.pop(binding, None)
        if pools:
            self._close_soon(pools.values())

    _retire_soon = retire_soon  # the name the credential first used

    def _close_soon(self, transports: Iterable[_Transport]) -> None:
        """Queue ``transports`` for closing and wake their loop to do it; if that loop is not running now,
        the next ``send`` or ``close`` on it does."""
        with self._retired_lock:
            self._retired.extend(transports)
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._schedule_drain()
        else:
            loop.call_soon_threadsafe(self._schedule_drain)

    def _schedule_drain(self) -> None:
        task: asyncio.Future[Any] = asyncio.ensure_future(self._drain_retired())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _drain_retired(self) -> None:
        with self._retired_lock:
            retired, self._retired = self._retired, []
        if retired:
            await asyncio.gather(*(_close(t) for t in retired))


class MtlsPopTransport(AsyncBindingTransport):
    """Async twin of :class:`azure_msiv2_credential.MtlsPopTransport`, for ``azure.*.aio`` SDK clients.

    Bound tokens (``Bearer <t>`` or ``mtls_pop <t>`` that ``credential`` issued) go over TLS with their
    certificate as ``mtls_pop <t>`` (+ ``x-ms-tokenboundauth: true`` unless disabled); anything else passes
    through untouched without a client certificate.

    :param credential: anything with a ``binding_registry`` (the async ``MsiV2ManagedIdentityCredential``).
    :keyword transport_kwargs: ``AioHttpTransport`` options, e.g. ``connection_verify=<CA bundle>``.
    """

    def __init__(self, credential: HasBindingRegistry, *, token_bound_auth_header: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self._registry = credential.binding_registry
        self._token_bound_auth_header = token_bound_auth_header
        self._registry.add_retire_listener(self.retire_soon)  # held weakly by the registry

    async def send(self, request: HttpRequest, **kwargs: Any) -> AsyncHttpResponse:
        explicit = pop_binding(kwargs)
        found = bind_request(request.headers, self._registry, self._token_bound_auth_header)
        kwargs[BINDING_OPTION] = explicit or found
        return await super().send(request, **kwargs)
