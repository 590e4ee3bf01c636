"""KeyGuard bindings through WinHTTP, dressed as a ``requests`` adapter so azure-core needs nothing new.

OpenSSL cannot use a non-exportable CNG key, so a KeyGuard binding's TLS is WinHTTP's (``_winhttp``).
Rather than a second set of azure-core response classes, WinHTTP sits *under* ``requests``: this adapter
turns each ``PreparedRequest`` into one ``WinHttpClient.send`` and wraps the answer in a urllib3
``HTTPResponse``. ``RequestsTransport`` (sync) and ``AsyncioRequestsTransport`` (async, worker threads)
then give exactly the response objects, streaming, decoding, content-length checks and error mapping
they give for any other request.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional, Union

import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3 import HTTPResponse
from urllib3._collections import HTTPHeaderDict

from .._binding import Binding
from ._tls import Verify

if TYPE_CHECKING:
    from ._winhttp import WinHttpClient, WinHttpResponse

#: requests' default when no timeout is given; azure-core always passes its own (300 s by default).
_DEFAULT_TIMEOUT = 300.0


class _WinHttpBody(io.RawIOBase):
    """The response body as a file, read chunk by chunk from WinHTTP as urllib3 asks for it."""

    def __init__(self, response: WinHttpResponse) -> None:
        super().__init__()
        self._response = response
        self._chunks: Iterator[bytes] = iter(response.iter_bytes())
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

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
        self._clients: dict[Optional[str], WinHttpClient] = {}
        self._lock = threading.Lock()

    def _client(self, proxy: Optional[str]) -> WinHttpClient:
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
        url = request.url or ""
        connect_timeout, read_timeout = _timeouts(timeout)
        client = self._client(select_proxy(url, proxies) if proxies else None)
        body = _body_bytes(request.body)
        headers = dict(request.headers)
        if any(name.lower() == "transfer-encoding" for name in headers):
            # requests chunks bodies it cannot measure; WinHTTP sends the whole (now joined) body.
            headers = {k: v for k, v in headers.items() if k.lower() != "transfer-encoding"}
            headers["Content-Length"] = str(len(body or b""))
        try:
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
    """Map a WinHTTP failure onto the requests exception azure-core turns into the right Azure error."""
    is_timeout = getattr(exc, "is_timeout", None)
    if callable(is_timeout) and is_timeout():
        return requests.exceptions.ReadTimeout(exc, request=request)
    is_secure_failure = getattr(exc, "is_secure_failure", None)
    if callable(is_secure_failure) and is_secure_failure():
        return requests.exceptions.SSLError(exc, request=request)
    return requests.exceptions.ConnectionError(exc, request=request)


def winhttp_session(binding: Binding, verify: Verify, *, trust_env: bool = True) -> requests.Session:
    """A ``requests`` session whose HTTPS requests go through WinHTTP with ``binding``'s KeyGuard key."""
    session = requests.Session()
    session.trust_env = trust_env
    session.mount("https://", WinHttpAdapter(binding, verify))
    return session
