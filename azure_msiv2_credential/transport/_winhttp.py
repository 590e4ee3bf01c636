"""A small blocking HTTPS client over WinHTTP, for bindings whose key cannot leave CNG (KeyGuard).

OpenSSL needs the private key in process memory; a KeyGuard key never is. WinHTTP (Schannel) signs the
handshake with the certificate context's private key, so this client is the one way a KeyGuard binding
speaks TLS, for the token leg and the SDK transports alike. The context names the key
(``CERT_KEY_PROV_INFO_PROP_ID``: provider + persisted key name) and Schannel opens it by name; the key's own
handle is never attached (``CERT_NCRYPT_KEY_HANDLE_PROP_ID`` would hand its ownership to the context, see
``_native/crypt32.py``), so closing a client never touches the key.

Shape: one WinHTTP session per client (its own keep-alive pool), one connect handle per host:port,
and the certificate context built once per client and bound to the key. Each :meth:`WinHttpClient.send`
opens a request handle that the returned :class:`WinHttpResponse` owns until its body is read or it is
closed. :meth:`WinHttpClient.close` may come from another thread while sends are in flight (a retire
listener): the session, connections and certificate context are then freed when the last send returns.

Proxies: ``None`` = the system's proxy settings, ``False`` = none (direct), or an ``http://host:port``
proxy (WinHTTP tunnels HTTPS through it with CONNECT; other proxy schemes are refused).

TLS verification is never switched off:

- ``verify=True``: WinHTTP checks the server against the machine's trusted roots, host name and dates.
  (Under the Linux fakes, the "machine root store" is the PEM file named by the environment variable
  ``FAKE_WINHTTP_TRUSTED_CA_FILE``.)
- ``verify="<CA bundle file or directory>"`` (azure-core's ``connection_verify``): the bundle *replaces*
  the machine roots, as it does for ``requests``/``ssl`` on the software path, so a private CA (the
  emulator's) works without touching the machine store. The documented hook for the application's own
  check, the ``WINHTTP_CALLBACK_STATUS_SENDING_REQUEST`` status callback, verifies the server's chain
  against the bundle with ``cryptography``'s X.509 verifier (path, host name, validity, key usages) and
  cancels the request by closing its handle on any failure; only once that callback is installed is
  WinHTTP told to accept an unknown root (``SECURITY_FLAG_IGNORE_UNKNOWN_CA``; it still checks host name
  and dates). An invocation that comes before TLS exists (the server certificate is not available yet,
  ``ERROR_WINHTTP_INCORRECT_HANDLE_STATE``: e.g. for a proxy's CONNECT) is skipped, and a response is
  accepted only if a check actually ran and passed; a rejection recorded by the callback raises
  :class:`ServerCertificateError` whatever ``WinHttpSendRequest`` returned.

  **Unverified on real Windows:** that closing the request handle from inside the synchronous
  SENDING_REQUEST callback cancels the send before a byte of the request is written, and whether that
  callback also fires for a proxy's CONNECT. Only the Linux fake shows this behaviour; the post-send checks
  above keep the outcome safe either way (a rejected or unchecked server never yields a response), but if
  the cancel does not work, the request may already have been written to that server.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Optional, Protocol, Union
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from .._native._closing import Closing
from .._native._winapi import ffi
from .._native.crypt32 import CertContext
from .._native.winhttp import (
    ERROR_WINHTTP_HEADER_NOT_FOUND,
    ERROR_WINHTTP_INCORRECT_HANDLE_STATE,
    ERROR_WINHTTP_SECURE_FAILURE,
    SECURITY_FLAG_IGNORE_UNKNOWN_CA,
    WINHTTP_CALLBACK_STATUS_FLAG_SECURITY_CHANNEL_ERROR,
    WINHTTP_CALLBACK_STATUS_SECURE_FAILURE,
    WINHTTP_CALLBACK_STATUS_SENDING_REQUEST,
    WINHTTP_DISABLE_AUTHENTICATION,
    WINHTTP_DISABLE_COOKIES,
    WINHTTP_DISABLE_REDIRECTS,
    WINHTTP_OPTION_DISABLE_FEATURE,
    WINHTTP_OPTION_SECURITY_FLAGS,
    WINHTTP_QUERY_RAW_HEADERS_CRLF,
    WINHTTP_QUERY_STATUS_TEXT,
    Connection,
    Request,
    Session,
    WinHttpError,
    read_dword,
    secure_failure_reason,
)

if TYPE_CHECKING:
    from .._native import NativeLibraries

__all__ = ["CngKey", "ServerCertificateError", "WinHttpClient", "WinHttpError", "WinHttpResponse"]

#: Largest single WinHttpReadData; bounds the per-response buffer.
_READ_CHUNK = 65536
#: Headers the client derives itself: WinHTTP writes Host from the URL and frames every body with
#: Content-Length (a whole body is sent at once, so a caller's ``Transfer-Encoding: chunked`` is moot).
_DERIVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
#: Headers WinHTTP may already hold from the session (the agent): set with replace semantics.
_REPLACED_HEADERS = frozenset({"user-agent"})

Headers = Union[Mapping[str, str], Iterable[tuple[str, str]]]


#: ``proxy`` argument: None = the system proxy settings, False = no proxy, else an ``http://`` proxy URL.
Proxy = Union[str, Literal[False], None]


class CngKey(Protocol):
    """What the client needs from the key (KeyGuardKey): the names under which Schannel opens the
    persisted key."""

    @property
    def key_name(self) -> str: ...

    @property
    def provider_name(self) -> str: ...


class ServerCertificateError(WinHttpError, ssl.SSLCertVerificationError):
    """The server's certificate was not trusted; nothing of the request was sent.

    ``code`` is ``ERROR_WINHTTP_SECURE_FAILURE`` (12175); ``verify_message`` says why. Also an
    ``ssl.SSLCertVerificationError``, so code written for ``ssl``/``requests`` recognises it.
    """

    def __init__(self, function: str, reason: str) -> None:
        WinHttpError.__init__(self, function, ERROR_WINHTTP_SECURE_FAILURE, f"server certificate rejected: {reason}")
        self.verify_code = ERROR_WINHTTP_SECURE_FAILURE
        self.verify_message = reason
        self.reason = reason


class _Target(NamedTuple):
    host: str  # as WinHTTP wants it: no brackets around IPv6
    port: int
    path: str  # path and query, sent as given


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise ValueError(f"WinHttpClient sends only https:// URLs, not {parts.scheme or 'relative'}:// ones")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not supported")
    host = parts.hostname
    if not host:
        raise ValueError("the URL has no host")
    port = parts.port or 443  # raises ValueError for a bad port
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return _Target(host, port, path)


def _format_headers(headers: Headers, body: Optional[bytes]) -> tuple[str, str]:
    """``(sent with the request, replacing WinHTTP's own)``, each CRLF-separated; refuses anything that
    would let a name or value inject another header, and a Content-Length that is not the body's."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    lines: list[str] = []
    replacing: list[str] = []
    for name, raw_value in pairs:
        value = str(raw_value)
        if not name or any(c in name for c in ":\r\n\0 \t"):
            raise ValueError(f"invalid header name {name!r}")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"invalid value for header {name!r}")  # not echoed: the value may be secret
        lower = name.lower()
        if lower == "content-length" and value.strip() != str(len(body or b"")):
            raise ValueError("the Content-Length header does not match the body")
        if lower in _DERIVED_HEADERS:
            continue
        (replacing if lower in _REPLACED_HEADERS else lines).append(f"{name}: {value}")
    return "\r\n".join(lines), "\r\n".join(replacing)


def _parse_raw_headers(raw: str) -> list[tuple[str, str]]:
    """``WINHTTP_QUERY_RAW_HEADERS_CRLF`` (status line first) -> ordered (name, value) pairs."""
    headers: list[tuple[str, str]] = []
    for line in raw.split("\r\n")[1:]:
        if not line:
            continue
        if line[0] in " \t" and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return headers


def _winhttp_proxy(proxy: str) -> str:
    """``http://host[:port]`` (or ``host[:port]``) as WinHTTP's named-proxy string ``http://host:port``.

    WinHTTP speaks only to an HTTP proxy (CONNECT for HTTPS); an ``https://``, ``socks5://``... proxy, or
    one with credentials, a path or several entries, is a ValueError (whose message never repeats the URL,
    which may hold a secret).
    """
    text = proxy.strip()
    if not text or any(c in text for c in "\r\n\0 \t;,"):
        raise ValueError("the proxy must be one http://host:port URL")
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme.lower() != "http":
        raise ValueError(f"the KeyGuard (WinHTTP) transport can use only an http:// proxy, not a {parts.scheme}:// one")
    if "@" in parts.netloc:
        raise ValueError("proxy credentials are not supported by the KeyGuard (WinHTTP) transport")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the proxy URL must be http://host:port, without a path or query")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError("the proxy URL has an invalid port") from None
    if not host:
        raise ValueError("the proxy URL has no host")
    return f"http://{f'[{host}]' if ':' in host else host}:{port or 80}"


def _milliseconds(seconds: Optional[float], what: str) -> int:
    """WinHTTP timeouts are int milliseconds; None = no timeout (0)."""
    if seconds is None:
        return 0
    if seconds <= 0:
        raise ValueError(f"{what} must be positive (or None for no timeout)")
    return max(1, min(int(seconds * 1000), 0x7FFFFFFF))


def _load_bundle(path: str) -> list[x509.Certificate]:
    """The CA certificates of a PEM bundle file, or of every PEM/DER file in a directory."""
    files = [os.path.join(path, name) for name in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    roots: list[x509.Certificate] = []
    for name in files:
        if not os.path.isfile(name):
            continue
        with open(name, "rb") as f:
            data = f.read()
        try:
            roots.extend(
                x509.load_pem_x509_certificates(data)
                if b"-----BEGIN" in data
                else [x509.load_der_x509_certificate(data)]
            )
        except ValueError:
            if not os.path.isdir(path):
                raise ValueError(f"{path} is not a PEM CA bundle") from None
    if not roots:
        raise ValueError(f"no CA certificate found in {path}")
    return roots


def _verify_server_chain(leaf_der: bytes, sent: list[bytes], host: str, store: Store) -> None:
    """Path from the leaf to a bundle root, host name, validity and key usages, or VerificationError."""
    leaf = x509.load_der_x509_certificate(leaf_der)
    intermediates = [x509.load_der_x509_certificate(der) for der in sent if der != leaf_der]
    subject: Union[x509.DNSName, x509.IPAddress]
    try:
        subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host.encode("idna").decode("ascii"))
    verifier = PolicyBuilder().store(store).build_server_verifier(subject)
    verifier.verify(leaf, intermediates)


class _ServerCheck:
    """The request's status callback: records TLS failure flags and, with a CA bundle, verifies the
    server chain before anything is sent. Never lets an exception reach WinHTTP."""

    def __init__(self, request: Request, host: str, store: Optional[Store], crypt32_path: str) -> None:
        self._request = request
        self._host = host
        self._store = store
        self._crypt32_path = crypt32_path
        self.rejection: Optional[str] = None
        self.verified = False  # a check against the bundle ran after the handshake and passed
        self.failure_flags = 0

    def __call__(self, handle: Any, context: int, status: int, info: Any, length: int) -> None:
        try:
            if status == WINHTTP_CALLBACK_STATUS_SECURE_FAILURE:
                self.failure_flags |= read_dword(info)
            elif status == WINHTTP_CALLBACK_STATUS_SENDING_REQUEST and self._store is not None:
                self._check_chain()
        except BaseException as exc:
            self._reject(f"the server certificate could not be checked ({type(exc).__name__})")

    def _reject(self, reason: str) -> None:
        if self.rejection is None:
            self.rejection = reason
        self.verified = False
        self._request.close()  # the documented way to stop the request before it is sent

    def _check_chain(self) -> None:
        assert self._store is not None
        try:
            server = self._request.server_certificate(self._crypt32_path)
        except WinHttpError as exc:
            if exc.code == ERROR_WINHTTP_INCORRECT_HANDLE_STATE:
                return  # before TLS (a proxy's CONNECT): nothing to check yet; the one after the handshake checks
            raise
        with server:
            leaf, sent = server.der, server.store_certificates()
        try:
            _verify_server_chain(leaf, sent, self._host, self._store)
        except (VerificationError, ValueError) as exc:
            self._reject(f"it does not chain to the configured CA bundle for {self._host!r} ({exc})")
            return
        if self.rejection is None:
            self.verified = True

    def translate(self, error: WinHttpError) -> WinHttpError:
        """The error to raise for a failed send: ours whenever the callback rejected the server."""
        if self.rejection is not None:
            return ServerCertificateError(error.function, self.rejection)
        if error.code == ERROR_WINHTTP_SECURE_FAILURE and self.failure_flags:
            reason = secure_failure_reason(self.failure_flags)
            if self.failure_flags & ~WINHTTP_CALLBACK_STATUS_FLAG_SECURITY_CHANNEL_ERROR:
                return ServerCertificateError(error.function, reason)
            return WinHttpError(error.function, error.code, reason)
        return error

    def after_send(self) -> None:
        """``WinHttpSendRequest`` returned success: still refuse a server the callback rejected or, with a
        CA bundle, one that was never checked."""
        if self.rejection is not None:
            raise ServerCertificateError("WinHttpSendRequest", self.rejection)
        if self._store is not None and not self.verified:
            raise ServerCertificateError(
                "WinHttpSendRequest",
                "could not verify the server certificate against connection_verify (the check did not run "
                "after the TLS handshake)",
            )


class WinHttpResponse(Closing):
    """A response whose body streams from WinHTTP. Owns the request handle until the body has been read
    to the end (the connection then returns to the keep-alive pool) or :meth:`close` is called."""

    def __init__(
        self, request: Request, status: int, reason: str, headers: list[tuple[str, str]], client: WinHttpClient
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._request = request
        self._client = client
        self._buffer: Any = None
        self._eof = False
        self._lock = threading.Lock()
        # A response dropped unread must not leak its handle (or its pooled connection).
        self._finalizer = weakref.finalize(self, request.close)

    @property
    def closed(self) -> bool:
        return self._request.closed

    def read1(self, limit: int = _READ_CHUNK) -> bytes:
        """Up to ``limit`` bytes, blocking until at least one arrives; b"" at the end of the body.
        Raises ``ValueError`` once the response is closed and :class:`WinHttpError` when reading fails."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        with self._lock:
            return self._read_some(limit)

    def _read_some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes, blocking until at least one arrives; b"" at the end of the body."""
        if self._eof:
            return b""
        if self._request.closed:
            raise ValueError("the response is closed")
        try:
            available = self._request.query_data_available()
            if available == 0:
                self._finish()
                return b""
            if self._buffer is None:
                self._buffer = ffi.new("uint8_t[]", _READ_CHUNK)
            size = min(available, limit, _READ_CHUNK)
            got = self._request.read_into(self._buffer, size)
            if got == 0:
                self._finish()
                return b""
            return bytes(ffi.buffer(self._buffer, got))
        except BaseException:
            self.close()
            raise

    def _finish(self) -> None:
        self._eof = True
        self.close()

    def read(self, amt: int = -1) -> bytes:
        """The rest of the body (``amt < 0``), or exactly ``amt`` bytes unless the body ends first."""
        with self._lock:
            chunks: list[bytes] = []
            remaining = amt
            while amt < 0 or remaining > 0:
                chunk = self._read_some(_READ_CHUNK if amt < 0 else remaining)
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks)

    def iter_bytes(self, chunk_size: int = _READ_CHUNK) -> Iterator[bytes]:
        """The body as it arrives, in pieces of at most ``chunk_size`` bytes; closes at the end."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        try:
            while True:
                with self._lock:
                    chunk = self._read_some(chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            if not self._eof:
                self.close()

    def close(self) -> None:
        """Release the request handle; an unread body aborts its connection (it cannot be reused)."""
        self._finalizer.detach()
        self._request.close()
        self._client._forget(self)

    def __repr__(self) -> str:
        return f"WinHttpResponse({self.status} {self.reason!r})"


class WinHttpClient(Closing):
    """Blocking HTTPS presenting ``certificate_der`` with the persisted CNG ``key`` (used by name only).

    ``verify``: ``True`` = the machine's trusted roots; a CA bundle path = that bundle instead (see the
    module docstring); ``False`` is refused. ``proxy``: None = the system proxy settings, ``False`` = no
    proxy, else an ``http://host:port`` proxy (``host:port`` too; no credentials, no other scheme).
    """

    def __init__(
        self,
        certificate_der: bytes,
        key: CngKey,
        *,
        libraries: NativeLibraries,
        verify: Union[bool, str] = True,
        proxy: Proxy = None,
        user_agent: str = "azure-msiv2-credential",
    ) -> None:
        if verify is True:
            self._store: Optional[Store] = None
        elif isinstance(verify, (str, os.PathLike)) and not isinstance(verify, bool):
            self._store = Store(_load_bundle(os.fspath(verify)))
        else:
            raise ValueError("TLS verification cannot be switched off: pass verify=True or the path of a CA bundle")
        named_proxy = _winhttp_proxy(proxy) if isinstance(proxy, str) else None
        if proxy is not None and proxy is not False and named_proxy is None:
            raise ValueError("proxy must be None, False or an http://host:port URL")
        self._crypt32_path = libraries.crypt32
        self._lock = threading.Lock()
        self._connections: dict[tuple[str, int], Connection] = {}
        self._responses: weakref.WeakSet[WinHttpResponse] = weakref.WeakSet()
        self._closed = False
        self._sending = 0  # sends in flight: close() leaves the native handles to the last of them
        self._released = False
        self._cert = CertContext.from_der(libraries.crypt32, certificate_der)
        try:
            self._cert.bind_key_provider_info(key.provider_name, key.key_name)
            self._session = Session.open(libraries.winhttp, user_agent, named_proxy, direct=proxy is False)
        except BaseException:
            self._cert.close()
            raise

    def _connection(self, host: str, port: int) -> Connection:
        with self._lock:
            if self._closed:
                raise ValueError("the WinHttpClient is closed")
            connection = self._connections.get((host, port))
            if connection is None:
                connection = self._connections[(host, port)] = self._session.connect(host, port)
            return connection

    def send(
        self,
        method: str,
        url: str,
        headers: Headers,
        body: Optional[bytes] = None,
        *,
        connect_timeout: Optional[float] = 10,
        read_timeout: Optional[float] = 30,
    ) -> WinHttpResponse:
        """Send one request; returns once the status line and headers are in (the body streams).

        ``headers``: a mapping or (name, value) pairs (duplicates kept, in order). Host, Content-Length
        and Transfer-Encoding are derived from the URL and ``body`` (a Content-Length that disagrees
        with ``body`` is an error); User-Agent replaces the client's ``user_agent``. Timeouts are in
        seconds, None = none: ``connect_timeout`` bounds name resolution and the TCP connect,
        ``read_timeout`` each send and each wait for response bytes (WinHTTP's per-phase timeouts).

        Raises ``ValueError`` for a non-https URL, a malformed header or a closed client,
        :class:`ServerCertificateError` when the server is not trusted, :class:`WinHttpError` for any other
        failure (``code`` 12002 timeout, 12007 name not resolved, 12029 cannot connect, 12030 connection
        error, ...; ``function`` says whether it failed sending or receiving). A send already in flight when
        another thread closes the client completes, and its response is the caller's to close.
        """
        target = _parse_url(url)
        if not method or not method.isascii() or not method.isalpha():
            raise ValueError(f"invalid HTTP method {method!r}")
        payload = bytes(body) if body else None
        header_block, replacing = _format_headers(headers, payload)
        connect_ms = _milliseconds(connect_timeout, "connect_timeout")
        read_ms = _milliseconds(read_timeout, "read_timeout")

        with self._lock:
            if self._closed:
                raise ValueError("the WinHttpClient is closed")
            self._sending += 1
        try:
            return self._send(method.upper(), target, header_block, replacing, payload, connect_ms, read_ms)
        finally:
            self._end_send()

    def _send(  # noqa: PLR0917
        self,
        method: str,
        target: _Target,
        header_block: str,
        replacing: str,
        payload: Optional[bytes],
        connect_ms: int,
        read_ms: int,
    ) -> WinHttpResponse:
        request = self._connection(target.host, target.port).open_request(method, target.path)
        try:
            # resolve and connect share the connect budget; send and receive the read budget
            request.set_timeouts(connect_ms, connect_ms, read_ms, read_ms)
            request.set_dword_option(
                WINHTTP_OPTION_DISABLE_FEATURE,
                WINHTTP_DISABLE_COOKIES | WINHTTP_DISABLE_REDIRECTS | WINHTTP_DISABLE_AUTHENTICATION,
            )
            if replacing:
                request.add_headers(replacing)
            request.set_client_certificate(self._cert)
            check = _ServerCheck(request, target.host, self._store, self._crypt32_path)
            notifications = WINHTTP_CALLBACK_STATUS_SECURE_FAILURE
            if self._store is not None:
                notifications |= WINHTTP_CALLBACK_STATUS_SENDING_REQUEST
            request.set_status_callback(check, notifications)
            if self._store is not None:
                # Only now that our own check is installed may WinHTTP stop insisting on a machine root.
                request.set_dword_option(WINHTTP_OPTION_SECURITY_FLAGS, SECURITY_FLAG_IGNORE_UNKNOWN_CA)
            try:
                request.send(header_block, payload)
            except WinHttpError as exc:
                translated = check.translate(exc)
                if translated is exc:
                    raise
                raise translated from exc
            check.after_send()
            request.receive_response()
            status = request.query_status_code()
            try:
                reason = request.query_header_text(WINHTTP_QUERY_STATUS_TEXT)
            except WinHttpError as exc:
                if exc.code != ERROR_WINHTTP_HEADER_NOT_FOUND:  # none, e.g. over HTTP/2
                    raise
                reason = ""
            headers_out = _parse_raw_headers(request.query_header_text(WINHTTP_QUERY_RAW_HEADERS_CRLF))
            response = WinHttpResponse(request, status, reason, headers_out, self)
        except BaseException:
            request.close()
            raise
        with self._lock:
            self._responses.add(response)
        return response

    def _end_send(self) -> None:
        with self._lock:
            self._sending -= 1
            release = self._closed and self._sending == 0 and not self._released
            if release:
                self._released = True
        if release:
            self._release()

    def _forget(self, response: WinHttpResponse) -> None:
        with self._lock:
            self._responses.discard(response)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close open responses now; the connections, the session and the certificate context (never the key)
        now too, or, while sends are in flight on other threads, when the last of them returns."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            responses = list(self._responses)
            release = self._sending == 0
            if release:
                self._released = True
        try:
            for response in responses:
                response.close()
        finally:
            if release:
                self._release()

    def _release(self) -> None:
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        try:
            for connection in connections:
                connection.close()
            self._session.close()
        finally:
            self._cert.close()
