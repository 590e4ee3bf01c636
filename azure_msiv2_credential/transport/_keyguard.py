"""KeyGuard bindings through WinHTTP, dressed as a ``requests`` adapter so azure-core needs nothing new.

OpenSSL cannot use a non-exportable CNG key, so a KeyGuard binding's TLS is WinHTTP's (``_winhttp``).
Rather than a second set of azure-core response classes, WinHTTP sits *under* ``requests``: this adapter
turns each ``PreparedRequest`` into one ``WinHttpClient.send`` and wraps the answer in a urllib3
``HTTPResponse``. ``RequestsTransport`` (sync) and ``AsyncioRequestsTransport`` (async, worker threads)
then give exactly the response objects, streaming, decoding, content-length checks and error mapping
they give for any other request.

Proxies follow ``requests``: the proxy ``requests`` selects for the URL (``proxies=``, and with
``trust_env`` the environment, honouring ``NO_PROXY``) is the one WinHTTP uses; when it selects none,
WinHTTP goes direct (``WINHTTP_ACCESS_TYPE_NO_PROXY``), never through the system's WinHTTP proxy settings.
WinHTTP can use only an ``http://`` proxy: any other is refused with :class:`UnsupportedProxyError` (a
``requests`` ``InvalidProxyURL`` and ``ProxyError``; azure-core's ``ServiceRequestError``).

Errors map by the WinHTTP function that failed, so azure-core tells "not sent" from "sent, no answer": a
timeout while connecting or sending is ``ConnectTimeout``, while waiting for or reading the response
``ReadTimeout``; a connection error while waiting for the response is a ``ConnectionError`` around a
urllib3 ``ProtocolError`` (azure-core's ``ServiceResponseError``); body read failures surface through
urllib3 as for any socket (``ReadTimeoutError`` / ``ProtocolError``).
"""

from __future__ import annotations

import io
import socket
import threading
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3 import HTTPResponse
from urllib3._collections import HTTPHeaderDict
from urllib3.exceptions import ProtocolError

from .._binding import Binding
from ._tls import Verify

if TYPE_CHECKING:
    from ._winhttp import WinHttpClient, WinHttpResponse

#: WinHTTP functions that fail after the request was sent (any other failed before or while sending it).
_RECEIVING = frozenset(
    {"WinHttpReceiveResponse", "WinHttpQueryHeaders", "WinHttpQueryDataAvailable", "WinHttpReadData"}
)
_ERROR_WINHTTP_CONNECTION_ERROR = 12030

#: requests' default when no timeout is given; azure-core always passes its own (300 s by default).
_DEFAULT_TIMEOUT = 300.0


class UnsupportedProxyError(requests.exceptions.InvalidProxyURL, requests.exceptions.ProxyError):
    """The proxy ``requests`` selected cannot be used by WinHTTP (only ``http://`` proxies can).

    An ``InvalidProxyURL`` for ``requests`` callers, and a ``ProxyError`` (a ``ConnectionError``) so that
    azure-core reports it as a ``ServiceRequestError``: nothing was sent.
    """


class _WinHttpBody(io.RawIOBase):
    """The response body as a file, read from WinHTTP as urllib3 asks for it.

    Failures look like a socket's to urllib3: a WinHTTP timeout is ``socket.timeout`` (urllib3's
    ``ReadTimeoutError``), any other WinHTTP failure stays an ``OSError`` (``ProtocolError``), and reading
    a response that was closed under us (its client retired) is a ``ConnectionAbortedError``.
    """

    def __init__(self, response: WinHttpResponse) -> None:
        super().__init__()
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        try:
            chunk = self._response.read1(len(view))
        except ValueError as exc:  # closed meanwhile (client closed on rotation, or by the caller)
            raise ConnectionAbortedError(f"the WinHTTP response was closed while its body was read ({exc})") from exc
        except OSError as exc:
            is_timeout = getattr(exc, "is_timeout", None)
            if callable(is_timeout) and is_timeout():
                raise socket.timeout(str(exc)) from exc
            raise
        view[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()


def _timeouts(timeout: Any) -> tuple[float, float]:
    """requests' ``timeout`` (None, a number, a (connect, read) pair or urllib3 Timeout) as two floats."""
    if timeout is None:
        return _DEFAULT_TIMEOUT, _DEFAULT_TIMEOUT
    if isinstance(timeout, tuple):
        connect, read = timeout
    elif hasattr(timeout, "connect_timeout"):  # urllib3.Timeout (requests' TimeoutSauce)
        connect, read = timeout.connect_timeout, timeout.read_timeout
    else:
        connect = read = timeout
    return (
        float(connect) if isinstance(connect, (int, float)) else _DEFAULT_TIMEOUT,
        float(read) if isinstance(read, (int, float)) else _DEFAULT_TIMEOUT,
    )


def _body_bytes(body: Any) -> Optional[bytes]:
    """WinHTTP sends a body in one piece; requests may hold it as str, bytes, a file or an iterable."""
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if hasattr(body, "read"):
        data = body.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return b"".join(part.encode("utf-8") if isinstance(part, str) else bytes(part) for part in body)


class WinHttpAdapter(HTTPAdapter):
    """Sends each request through a WinHTTP client that presents the KeyGuard binding.

    One client per proxy (requests resolves proxies per request, from ``HTTPS_PROXY`` and friends).
    """

    def __init__(self, binding: Binding, verify: Verify) -> None:
        super().__init__(max_retries=0)
        self._binding = binding
        self._verify = verify
        self._clients: dict[Union[str, Literal[False]], WinHttpClient] = {}
        self._lock = threading.Lock()

    def _client(self, proxy: Union[str, Literal[False]]) -> WinHttpClient:
        """The client for ``proxy`` (an ``http://`` proxy, or False = direct), made on first use."""
        client = self._clients.get(proxy)
        if client is None:
            from ._winhttp import WinHttpClient

            key: Any = self._binding.key
            with self._lock:
                client = self._clients.get(proxy)
                if client is None:
                    client = WinHttpClient(
                        self._binding.certificate_der,
                        key,
                        libraries=key.libraries,
                        verify=self._verify,
                        proxy=proxy,
                    )
                    self._clients[proxy] = client
        return client

    def send(  # noqa: PLR0917 - requests' adapter signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Union[bool, str, None] = True,
        cert: Any = None,
        proxies: Optional[Any] = None,
    ) -> requests.Response:
        from ._winhttp import _winhttp_proxy

        url = request.url or ""
        connect_timeout, read_timeout = _timeouts(timeout)
        selected = select_proxy(url, proxies) if proxies else None
        proxy: Union[str, Literal[False]] = False if selected is None else selected  # none selected: direct
        if proxy is not False:
            try:
                _winhttp_proxy(proxy)
            except ValueError as exc:
                raise UnsupportedProxyError(str(exc), request=request) from exc
        body = _body_bytes(request.body)
        headers = dict(request.headers)
        if any(name.lower() == "transfer-encoding" for name in headers):
            # requests chunks bodies it cannot measure; WinHTTP sends the whole (now joined) body.
            headers = {k: v for k, v in headers.items() if k.lower() != "transfer-encoding"}
            headers["Content-Length"] = str(len(body or b""))
        try:
            client = self._client(proxy)
            answer = client.send(
                request.method or "GET",
                url,
                headers,
                body,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
        except OSError as exc:
            raise _requests_error(exc, request) from exc
        raw = HTTPResponse(
            body=_WinHttpBody(answer),
            headers=HTTPHeaderDict(answer.headers),
            status=answer.status,
            reason=answer.reason,
            preload_content=False,
            decode_content=False,
            request_method=request.method,
            request_url=url,
        )
        return self.build_response(request, raw)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()
        super().close()


def _requests_error(exc: OSError, request: requests.PreparedRequest) -> requests.RequestException:
    """Map a WinHTTP failure onto the requests exception azure-core turns into the right Azure error.

    By the failing function: before the request was sent (open, connect, send) a timeout is
    ``ConnectTimeout`` (azure-core: ServiceRequestTimeoutError, safe to retry); while waiting for or reading
    the response it is ``ReadTimeout``, and a broken connection there is ``ConnectionError(ProtocolError)``
    (azure-core: ServiceResponseError, the request may have been processed).
    """
    function = getattr(exc, "function", None)
    is_timeout = getattr(exc, "is_timeout", None)
    if callable(is_timeout) and is_timeout():
        if function in _RECEIVING:
            return requests.exceptions.ReadTimeout(exc, request=request)
        return requests.exceptions.ConnectTimeout(exc, request=request)
    is_secure_failure = getattr(exc, "is_secure_failure", None)
    if callable(is_secure_failure) and is_secure_failure():
        return requests.exceptions.SSLError(exc, request=request)
    if function in _RECEIVING and getattr(exc, "code", None) == _ERROR_WINHTTP_CONNECTION_ERROR:
        return requests.exceptions.ConnectionError(ProtocolError("Connection aborted.", exc), request=request)
    return requests.exceptions.ConnectionError(exc, request=request)


def winhttp_session(binding: Binding, verify: Verify, *, trust_env: bool = True) -> requests.Session:
    """A ``requests`` session whose HTTPS requests go through WinHTTP with ``binding``'s KeyGuard key."""
    session = requests.Session()
    session.trust_env = trust_env
    session.mount("https://", WinHttpAdapter(binding, verify))
    return session
