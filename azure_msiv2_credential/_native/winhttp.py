"""winhttp.dll: synchronous HTTPS whose TLS client key is a CNG key (OpenSSL cannot use KeyGuard keys).

Thin and leak-free: a session, a connection and a request are each a :class:`_Handle` with one owner
that closes it once (``with`` or ``close()``), also when a call fails half-way. A failing call raises
:class:`WinHttpError` with the ``ERROR_WINHTTP_*`` name. Last errors come from cffi's per-call saved
value (``GetLastError()`` on Windows; ``errno`` under the Linux fakes), so no kernel32 binding is needed.

Status callbacks go through **one** module-level cffi trampoline, created on first use and never freed
(WinHTTP may call it for as long as any handle exists): WinHTTP hands each callback the ``dwContext`` given
to ``WinHttpSendRequest``, and :class:`Request` registers its Python callback under a context value of its
own, so no per-request native callback is created or has to outlive its request.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Optional, TypeVar

from ._closing import Closing
from ._errors import NativeCallError, NativeError
from ._loader import last_error, load
from ._winapi import ffi
from .crypt32 import CertContext

# -- access types, open/request flags -----------------------------------------------------------
WINHTTP_ACCESS_TYPE_DEFAULT_PROXY = 0
WINHTTP_ACCESS_TYPE_NO_PROXY = 1
WINHTTP_ACCESS_TYPE_NAMED_PROXY = 3
#: Windows 8.1+: the system's proxy settings (WinINet/IE settings, WPAD, PAC); older systems refuse it.
WINHTTP_ACCESS_TYPE_AUTOMATIC_PROXY = 4
WINHTTP_FLAG_SECURE = 0x00800000
#: Send the path and query exactly as given: callers (azure-core) already percent-encode them.
WINHTTP_FLAG_ESCAPE_DISABLE = 0x00000040
WINHTTP_FLAG_ESCAPE_DISABLE_QUERY = 0x00000080

# -- options ------------------------------------------------------------------------------------
WINHTTP_OPTION_SECURITY_FLAGS = 31
WINHTTP_OPTION_CLIENT_CERT_CONTEXT = 47
WINHTTP_OPTION_DISABLE_FEATURE = 63
WINHTTP_OPTION_SERVER_CERT_CONTEXT = 78
WINHTTP_DISABLE_COOKIES = 0x00000001
WINHTTP_DISABLE_REDIRECTS = 0x00000002
WINHTTP_DISABLE_AUTHENTICATION = 0x00000004
SECURITY_FLAG_IGNORE_UNKNOWN_CA = 0x00000100

# -- status callback ----------------------------------------------------------------------------
WINHTTP_CALLBACK_STATUS_SENDING_REQUEST = 0x00000010
WINHTTP_CALLBACK_STATUS_SECURE_FAILURE = 0x00010000
WINHTTP_CALLBACK_STATUS_FLAG_CERT_REV_FAILED = 0x00000001
WINHTTP_CALLBACK_STATUS_FLAG_INVALID_CERT = 0x00000002
WINHTTP_CALLBACK_STATUS_FLAG_CERT_REVOKED = 0x00000004
WINHTTP_CALLBACK_STATUS_FLAG_INVALID_CA = 0x00000008
WINHTTP_CALLBACK_STATUS_FLAG_CERT_CN_INVALID = 0x00000010
WINHTTP_CALLBACK_STATUS_FLAG_CERT_DATE_INVALID = 0x00000020
WINHTTP_CALLBACK_STATUS_FLAG_SECURITY_CHANNEL_ERROR = 0x80000000
#: What each SECURE_FAILURE flag means, for messages.
SECURE_FAILURE_REASONS: dict[int, str] = {
    WINHTTP_CALLBACK_STATUS_FLAG_CERT_REV_FAILED: "revocation could not be checked",
    WINHTTP_CALLBACK_STATUS_FLAG_INVALID_CERT: "the certificate is invalid",
    WINHTTP_CALLBACK_STATUS_FLAG_CERT_REVOKED: "the certificate is revoked",
    WINHTTP_CALLBACK_STATUS_FLAG_INVALID_CA: "the certificate does not chain to a trusted root",
    WINHTTP_CALLBACK_STATUS_FLAG_CERT_CN_INVALID: "the certificate does not match the host name",
    WINHTTP_CALLBACK_STATUS_FLAG_CERT_DATE_INVALID: "the certificate is expired or not yet valid",
    WINHTTP_CALLBACK_STATUS_FLAG_SECURITY_CHANNEL_ERROR: "TLS (Schannel) error",
}


def invalid_status_callback_value(pointer_size: int) -> int:
    """``WINHTTP_INVALID_STATUS_CALLBACK`` = ``((WINHTTP_STATUS_CALLBACK)(-1L))`` as an unsigned integer: all
    ones over the pointer's width (0xFFFFFFFF on x86, not the 64-bit value)."""
    return (1 << (8 * pointer_size)) - 1


_INVALID_STATUS_CALLBACK = invalid_status_callback_value(ffi.sizeof("void *"))

# -- headers ------------------------------------------------------------------------------------
WINHTTP_QUERY_STATUS_CODE = 19
WINHTTP_QUERY_STATUS_TEXT = 20
WINHTTP_QUERY_RAW_HEADERS_CRLF = 22
WINHTTP_QUERY_FLAG_NUMBER = 0x20000000
WINHTTP_ADDREQ_FLAG_ADD = 0x20000000
WINHTTP_ADDREQ_FLAG_REPLACE = 0x80000000

# -- errors -------------------------------------------------------------------------------------
ERROR_INVALID_HANDLE = 6
ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_INVALID_PARAMETER = 87
ERROR_INSUFFICIENT_BUFFER = 122
ERROR_WINHTTP_OUT_OF_HANDLES = 12001
ERROR_WINHTTP_TIMEOUT = 12002
ERROR_WINHTTP_INTERNAL_ERROR = 12004
ERROR_WINHTTP_INVALID_URL = 12005
ERROR_WINHTTP_UNRECOGNIZED_SCHEME = 12006
ERROR_WINHTTP_NAME_NOT_RESOLVED = 12007
ERROR_WINHTTP_INVALID_OPTION = 12009
ERROR_WINHTTP_SHUTDOWN = 12012
ERROR_WINHTTP_OPERATION_CANCELLED = 12017
ERROR_WINHTTP_INCORRECT_HANDLE_TYPE = 12018
ERROR_WINHTTP_INCORRECT_HANDLE_STATE = 12019
ERROR_WINHTTP_CANNOT_CONNECT = 12029
ERROR_WINHTTP_CONNECTION_ERROR = 12030
ERROR_WINHTTP_RESEND_REQUEST = 12032
ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED = 12044
ERROR_WINHTTP_HEADER_NOT_FOUND = 12150
ERROR_WINHTTP_INVALID_SERVER_RESPONSE = 12152
ERROR_WINHTTP_REDIRECT_FAILED = 12156
ERROR_WINHTTP_SECURE_FAILURE = 12175
ERROR_WINHTTP_SECURE_CERT_DATE_INVALID = 12037
ERROR_WINHTTP_SECURE_CERT_CN_INVALID = 12038
ERROR_WINHTTP_SECURE_INVALID_CA = 12045
ERROR_WINHTTP_SECURE_CERT_REV_FAILED = 12057
ERROR_WINHTTP_SECURE_CHANNEL_ERROR = 12157
ERROR_WINHTTP_SECURE_INVALID_CERT = 12169
ERROR_WINHTTP_SECURE_CERT_REVOKED = 12170
ERROR_WINHTTP_SECURE_CERT_WRONG_USAGE = 12179
ERROR_WINHTTP_HEADER_SIZE_OVERFLOW = 12182
ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY = 12185
ERROR_WINHTTP_CLIENT_CERT_NO_ACCESS_PRIVATE_KEY = 12186
ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED_PROXY = 12187
ERROR_WINHTTP_SECURE_FAILURE_PROXY = 12188

#: Schannel HRESULTs WinHTTP may pass through unchanged when a TLS credential cannot be used (e.g. the
#: client key named by CERT_KEY_PROV_INFO cannot be opened). They are TLS failures too.
SEC_E_UNKNOWN_CREDENTIALS = 0x8009030D
SEC_E_NO_CREDENTIALS = 0x8009030E
SEC_E_CERT_UNKNOWN = 0x80090327
SEC_E_UNTRUSTED_ROOT = 0x80090325
SEC_E_WRONG_PRINCIPAL = 0x80090322
SEC_E_CERT_EXPIRED = 0x80090328
SEC_E_INTERNAL_ERROR = 0x80090304

#: Error code -> name, for messages and for callers that branch on ``WinHttpError.name``.
WINHTTP_ERROR_NAMES: dict[int, str] = {
    value: name for name, value in globals().items() if name.startswith(("ERROR_", "SEC_E_")) and isinstance(value, int)
}
#: Errors that mean "the TLS session could not be trusted or established".
SECURE_ERRORS = frozenset(
    {
        ERROR_WINHTTP_SECURE_FAILURE,
        ERROR_WINHTTP_SECURE_CERT_DATE_INVALID,
        ERROR_WINHTTP_SECURE_CERT_CN_INVALID,
        ERROR_WINHTTP_SECURE_INVALID_CA,
        ERROR_WINHTTP_SECURE_CERT_REV_FAILED,
        ERROR_WINHTTP_SECURE_CHANNEL_ERROR,
        ERROR_WINHTTP_SECURE_INVALID_CERT,
        ERROR_WINHTTP_SECURE_CERT_REVOKED,
        ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED,
        ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY,
        ERROR_WINHTTP_CLIENT_CERT_NO_ACCESS_PRIVATE_KEY,
        ERROR_WINHTTP_SECURE_CERT_WRONG_USAGE,
        ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED_PROXY,
        ERROR_WINHTTP_SECURE_FAILURE_PROXY,
    }
    | {code for code, name in WINHTTP_ERROR_NAMES.items() if name.startswith("SEC_E_")}
)

#: Header values may grow between the two passes only in theory; retry a few times anyway.
_SIZE_RETRIES = 3

StatusCallback = Callable[[Any, int, int, Any, int], None]
_H = TypeVar("_H", bound="_Handle")


class WinHttpError(NativeCallError, OSError):
    """A WinHTTP call failed. ``code`` is the Win32 error (e.g. 12002), ``name`` its ``ERROR_*`` name and
    ``function`` the WinHTTP function; ``detail`` adds what the code alone cannot say. An ``OSError``,
    like the errors of Python's own sockets."""

    def __init__(self, function: str, code: int, detail: Optional[str] = None) -> None:
        super().__init__(function, code, WINHTTP_ERROR_NAMES)
        self.detail = detail
        # Win32 errors read best in decimal (12002), HRESULTs in hex (0x8009030D).
        shown = f"0x{self.code:08X}" if self.code >= 0x80000000 else str(self.code)
        message = f"{function} failed: {self.name} ({shown})"
        self.args = (f"{message}: {detail}" if detail else message,)

    def __str__(self) -> str:
        return str(self.args[0])

    def is_timeout(self) -> bool:
        """The operation ran out of its WinHTTP timeout (12002)."""
        return self.code == ERROR_WINHTTP_TIMEOUT

    def is_secure_failure(self) -> bool:
        """TLS could not be established or trusted (certificate, client authentication, Schannel)."""
        return self.code in SECURE_ERRORS


def _wide(text: str) -> Any:
    """A NUL-terminated UTF-16 copy; keep it referenced while C may read it."""
    return ffi.new("char16_t[]", text)


class _StatusDispatch:
    """The one native status callback of the process, routing each notification by its ``dwContext``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: dict[int, StatusCallback] = {}
        self._last = 0
        self._trampoline: Any = None

    def trampoline(self) -> Any:
        """The ``WINHTTP_STATUS_CALLBACK``, made on first use and kept for the life of the process."""
        with self._lock:
            if self._trampoline is None:
                self._trampoline = ffi.callback("WINHTTP_STATUS_CALLBACK", self._dispatch)
            return self._trampoline

    def register(self, callback: StatusCallback) -> int:
        """A free, non-zero context value (it fits a DWORD_PTR) now routed to ``callback``."""
        with self._lock:
            while True:
                self._last = self._last % _INVALID_STATUS_CALLBACK + 1  # 1 .. all-ones - 1 (never 0)
                if self._last != _INVALID_STATUS_CALLBACK and self._last not in self._callbacks:
                    break
            self._callbacks[self._last] = callback
            return self._last

    def unregister(self, context: int) -> None:
        with self._lock:
            self._callbacks.pop(context, None)

    def registered(self) -> int:
        """How many callbacks are registered (for leak checks in tests)."""
        with self._lock:
            return len(self._callbacks)

    def _dispatch(self, handle: Any, context: int, status: int, info: Any, length: int) -> None:
        with self._lock:
            callback = self._callbacks.get(int(context))
        if callback is None:  # not ours, or the request was closed meanwhile
            return
        with contextlib.suppress(BaseException):  # an exception must never unwind through WinHTTP's frames
            callback(handle, int(context), int(status), info, int(length))


_status_dispatch = _StatusDispatch()


class _Handle(Closing):
    """One HINTERNET with exactly one owner; ``close()`` closes it once."""

    __slots__ = ("_lib", "_lock", "_ptr", "_winhttp_path")

    def __init__(self, winhttp_path: str, lib: Any, ptr: Any) -> None:
        self._winhttp_path = winhttp_path
        self._lib = lib
        self._ptr: Any = ptr
        self._lock = threading.Lock()

    @property
    def ptr(self) -> Any:
        ptr = self._ptr
        if ptr is None:
            raise NativeError("the WinHTTP handle is closed")
        return ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def _fail(self, function: str, code: Optional[int] = None) -> WinHttpError:
        return WinHttpError(function, last_error() if code is None else code)

    def set_dword_option(self, option: int, value: int) -> None:
        buf = ffi.new("uint32_t *", value)
        if not self._lib.WinHttpSetOption(self.ptr, option, buf, 4):
            raise self._fail("WinHttpSetOption")

    def set_timeouts(self, resolve_ms: int, connect_ms: int, send_ms: int, receive_ms: int) -> None:
        """Per-phase timeouts in milliseconds (0 = infinite)."""
        if not self._lib.WinHttpSetTimeouts(self.ptr, resolve_ms, connect_ms, send_ms, receive_ms):
            raise self._fail("WinHttpSetTimeouts")

    def close(self) -> None:
        """Close once. Safe to call from a status callback on this handle (that cancels the request)."""
        with self._lock:
            ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self._lib.WinHttpCloseHandle(ptr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'closed' if self.closed else 'open'})"


class Session(_Handle):
    """``WinHttpOpen``: one per client; owns WinHTTP's connection pool."""

    __slots__ = ()

    @classmethod
    def open(cls, winhttp_path: str, user_agent: str, proxy: Optional[str] = None, *, direct: bool = False) -> Session:
        """Synchronous session. ``direct``: no proxy at all (``WINHTTP_ACCESS_TYPE_NO_PROXY``); else ``proxy``
        None = the system proxy settings (automatic proxy on Windows 8.1+, the WinHTTP default proxy on older
        systems), or a named proxy such as ``"http://proxy:8080"``."""
        if direct and proxy is not None:
            raise ValueError("a direct session has no proxy")
        lib = load(winhttp_path)
        agent = _wide(user_agent)
        if direct:
            ptr = lib.WinHttpOpen(agent, WINHTTP_ACCESS_TYPE_NO_PROXY, ffi.NULL, ffi.NULL, 0)
        elif proxy is not None:
            ptr = lib.WinHttpOpen(agent, WINHTTP_ACCESS_TYPE_NAMED_PROXY, _wide(proxy), ffi.NULL, 0)
        else:
            ptr = lib.WinHttpOpen(agent, WINHTTP_ACCESS_TYPE_AUTOMATIC_PROXY, ffi.NULL, ffi.NULL, 0)
            if ptr == ffi.NULL and last_error() == ERROR_INVALID_PARAMETER:  # before Windows 8.1
                ptr = lib.WinHttpOpen(agent, WINHTTP_ACCESS_TYPE_DEFAULT_PROXY, ffi.NULL, ffi.NULL, 0)
        if ptr == ffi.NULL:
            raise WinHttpError("WinHttpOpen", last_error())
        return cls(winhttp_path, lib, ptr)

    def connect(self, host: str, port: int) -> Connection:
        """``WinHttpConnect`` (no I/O yet: WinHTTP connects when a request is sent)."""
        ptr = self._lib.WinHttpConnect(self.ptr, _wide(host), port, 0)
        if ptr == ffi.NULL:
            raise self._fail("WinHttpConnect")
        return Connection(self._winhttp_path, self._lib, ptr)


class Connection(_Handle):
    """``WinHttpConnect``: a target host and port; requests to it share WinHTTP's keep-alive pool."""

    __slots__ = ()

    def open_request(self, method: str, path: str, *, secure: bool = True) -> Request:
        flags = WINHTTP_FLAG_ESCAPE_DISABLE | WINHTTP_FLAG_ESCAPE_DISABLE_QUERY
        if secure:
            flags |= WINHTTP_FLAG_SECURE
        ptr = self._lib.WinHttpOpenRequest(self.ptr, _wide(method), _wide(path), ffi.NULL, ffi.NULL, ffi.NULL, flags)
        if ptr == ffi.NULL:
            raise self._fail("WinHttpOpenRequest")
        return Request(self._winhttp_path, self._lib, ptr)


class Request(_Handle):
    """``WinHttpOpenRequest``: one exchange, from send to the end of the body."""

    __slots__ = ("_context",)

    def __init__(self, winhttp_path: str, lib: Any, ptr: Any) -> None:
        super().__init__(winhttp_path, lib, ptr)
        self._context = 0  # our status callback's dwContext; 0 = none

    def set_client_certificate(self, context: CertContext) -> None:
        """``WINHTTP_OPTION_CLIENT_CERT_CONTEXT``: WinHTTP takes its own reference to the context."""
        if not self._lib.WinHttpSetOption(
            self.ptr, WINHTTP_OPTION_CLIENT_CERT_CONTEXT, context.ptr, ffi.sizeof("CERT_CONTEXT")
        ):
            raise self._fail("WinHttpSetOption")

    def set_status_callback(self, callback: StatusCallback, notifications: int) -> None:
        """Route ``notifications`` on this request to ``callback``, through the shared trampoline and the
        ``dwContext`` that :meth:`send` passes. ``callback`` runs on the thread calling WinHTTP, must not
        raise (an exception is swallowed) and stops being called once this request is closed."""
        if self._context:
            raise ValueError("this request already has a status callback")
        context = _status_dispatch.register(callback)
        previous = self._lib.WinHttpSetStatusCallback(self.ptr, _status_dispatch.trampoline(), notifications, 0)
        if int(ffi.cast("uintptr_t", previous)) == _INVALID_STATUS_CALLBACK:
            error = self._fail("WinHttpSetStatusCallback")
            _status_dispatch.unregister(context)
            raise error
        self._context = context

    def close(self) -> None:
        super().close()
        context, self._context = self._context, 0
        if context:
            _status_dispatch.unregister(context)

    def add_headers(self, headers: str, modifiers: int = WINHTTP_ADDREQ_FLAG_ADD | WINHTTP_ADDREQ_FLAG_REPLACE) -> None:
        """``WinHttpAddRequestHeaders``; by default each line replaces a header of that name or is added."""
        if not self._lib.WinHttpAddRequestHeaders(self.ptr, _wide(headers), 0xFFFFFFFF, modifiers):
            raise self._fail("WinHttpAddRequestHeaders")

    def send(self, headers: str, body: Optional[bytes]) -> None:
        """``WinHttpSendRequest`` with CRLF-separated ``headers`` and the whole body (``dwContext`` routes
        the status callback, if any)."""
        header_buf = _wide(headers) if headers else ffi.NULL
        header_len = 0xFFFFFFFF if headers else 0  # -1: NUL-terminated
        data = ffi.from_buffer("uint8_t[]", body) if body else ffi.NULL
        size = len(body) if body else 0
        if not self._lib.WinHttpSendRequest(self.ptr, header_buf, header_len, data, size, size, self._context):
            raise self._fail("WinHttpSendRequest")

    def receive_response(self) -> None:
        if not self._lib.WinHttpReceiveResponse(self.ptr, ffi.NULL):
            raise self._fail("WinHttpReceiveResponse")

    def query_status_code(self) -> int:
        value = ffi.new("uint32_t *")
        size = ffi.new("uint32_t *", 4)
        level = WINHTTP_QUERY_STATUS_CODE | WINHTTP_QUERY_FLAG_NUMBER
        if not self._lib.WinHttpQueryHeaders(self.ptr, level, ffi.NULL, value, size, ffi.NULL):
            raise self._fail("WinHttpQueryHeaders")
        return int(value[0])

    def query_header_text(self, level: int) -> str:
        """A header query returning text, two-pass: the size (bytes) comes with ERROR_INSUFFICIENT_BUFFER."""
        size = ffi.new("uint32_t *", 0)
        if self._lib.WinHttpQueryHeaders(self.ptr, level, ffi.NULL, ffi.NULL, size, ffi.NULL):
            return ""
        for _ in range(_SIZE_RETRIES):
            code = last_error()
            if code != ERROR_INSUFFICIENT_BUFFER:
                raise self._fail("WinHttpQueryHeaders", code)
            buf = ffi.new("char16_t[]", int(size[0]) // 2 + 1)
            size[0] = ffi.sizeof(buf)
            if self._lib.WinHttpQueryHeaders(self.ptr, level, ffi.NULL, buf, size, ffi.NULL):
                return str(ffi.unpack(buf, int(size[0]) // 2))
        raise self._fail("WinHttpQueryHeaders", ERROR_INSUFFICIENT_BUFFER)

    def query_data_available(self) -> int:
        """Bytes readable without blocking; blocks for more when none; 0 = end of the body."""
        available = ffi.new("uint32_t *")
        if not self._lib.WinHttpQueryDataAvailable(self.ptr, available):
            raise self._fail("WinHttpQueryDataAvailable")
        return int(available[0])

    def read_into(self, buf: Any, size: int) -> int:
        """``WinHttpReadData`` into a cffi buffer; returns the byte count (0 = end of the body)."""
        read = ffi.new("uint32_t *")
        if not self._lib.WinHttpReadData(self.ptr, buf, size, read):
            raise self._fail("WinHttpReadData")
        return int(read[0])

    def server_certificate(self, crypt32_path: str) -> CertContext:
        """``WINHTTP_OPTION_SERVER_CERT_CONTEXT``: the server's leaf, in a store holding what the server
        sent. Valid from ``WINHTTP_CALLBACK_STATUS_SENDING_REQUEST`` on; the caller closes it."""
        out = ffi.new("PCCERT_CONTEXT *")
        size = ffi.new("uint32_t *", ffi.sizeof("PCCERT_CONTEXT"))
        if not self._lib.WinHttpQueryOption(self.ptr, WINHTTP_OPTION_SERVER_CERT_CONTEXT, out, size):
            raise self._fail("WinHttpQueryOption")
        if out[0] == ffi.NULL:
            raise WinHttpError("WinHttpQueryOption", ERROR_WINHTTP_INCORRECT_HANDLE_STATE)
        return CertContext.adopt(crypt32_path, out[0])


def secure_failure_reason(flags: int) -> str:
    """Words for a ``WINHTTP_CALLBACK_STATUS_SECURE_FAILURE`` flag set."""
    reasons = [text for bit, text in SECURE_FAILURE_REASONS.items() if flags & bit]
    return "; ".join(reasons) or f"TLS failure flags 0x{flags:08X}"


def read_dword(pointer: Any) -> int:
    """The DWORD a callback's ``lpvStatusInformation`` points to (0 for NULL)."""
    if pointer == ffi.NULL:
        return 0
    return int(ffi.cast("uint32_t *", pointer)[0])
