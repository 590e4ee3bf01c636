"""Loopback HTTP(S) server plumbing shared by the three emulated services.

- Binds 127.0.0.1 only, on a free port.
- TLS handshakes run in the connection's worker thread (a stalled client never blocks ``accept``),
  and a handshake the server rejects (no or foreign client certificate) is counted, not printed.
- ``close`` shuts down kept-alive connections and joins every worker thread, so a stopped emulator
  leaves no thread or socket behind.
- Nothing is logged: request lines and headers may carry ids, tokens or CSRs.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import ssl
import threading
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from ._faults import Fault
from ._state import EmulatorState

HANDSHAKE_TIMEOUT = 10.0
MAX_BODY = 1024 * 1024
MALFORMED_BODY = b'{"access_token": "truncated'
"""Body of the ``malformed`` fault: starts like JSON, is not JSON."""


class DuplicateParameter(ValueError):
    """A query or form parameter appeared more than once."""


def single_values(query: str) -> dict[str, str]:
    """Parse a query string or form body where every parameter appears at most once."""
    parsed = parse_qs(query, keep_blank_values=True)
    for name, values in parsed.items():
        if len(values) > 1:
            raise DuplicateParameter(name)
    return {name: values[0] for name, values in parsed.items()}


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 with optional TLS and joinable workers."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = socket.SOMAXCONN
    """listen() backlog: the default 5 drops SYNs under a burst of connects, costing the client a 1 s retransmit."""

    def __init__(
        self,
        name: str,
        handler: type[BaseHandler],
        state: EmulatorState,
        ssl_context: ssl.SSLContext | None = None,
        reject_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.state = state
        self.ssl_context = ssl_context
        self.reject_context = reject_context
        """Used instead of ``ssl_context`` for a ``reject_handshake`` fault: trusts no client certificate."""
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        self._closing = False
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall on odd resolvers.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "localhost"
        self.server_port = self.port

    def process_request(self, request: Any, client_address: Any) -> None:
        worker = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"msiv2-emulator-{self.name}-worker",
            daemon=True,
        )
        with self._lock:
            self._workers = {w for w in self._workers if w.is_alive()}
            self._workers.add(worker)
        worker.start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = cast("socket.socket", request)
        # Headers and body leave in separate writes; without NODELAY, Nagle + delayed ACK add ~40 ms each.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._track(conn, add=True):
            return
        try:
            if self.ssl_context is None:
                super().finish_request(conn, client_address)
                return
            conn.settimeout(HANDSHAKE_TIMEOUT)
            context, rejecting = self.ssl_context, False
            if self.reject_context is not None and self.state.take_handshake_fault(self.name) is not None:
                # Counted up front: the client may see the alert before wrap_socket returns here.
                context, rejecting = self.reject_context, True
                self.state.record_tls_rejection(self.name)
            try:
                tls = context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                if not rejecting:
                    self.state.record_tls_rejection(self.name)
                return
            if rejecting:  # unreachable: no client certificate chains to the reject-all CA
                tls.close()
                return
            if not self._track(tls, add=True):
                tls.close()
                return
            try:
                super().finish_request(tls, client_address)
            finally:
                self._track(tls, add=False)
                tls.close()
        finally:
            self._track(conn, add=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request is routine here; stay quiet."""

    def _track(self, conn: socket.socket, *, add: bool) -> bool:
        """Add or remove an open connection; refuses new ones (False) once closing."""
        with self._lock:
            if not add:
                self._open.discard(conn)
            elif self._closing:
                return False
            else:
                self._open.add(conn)
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Close the listener and every open connection, then join the workers."""
        self.server_close()
        with self._lock:
            self._closing = True
            open_conns = list(self._open)
            workers = list(self._workers)
        for conn in open_conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for worker in workers:
            worker.join(timeout)


class BaseHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler with JSON helpers, request ids and fault plumbing."""

    protocol_version = "HTTP/1.1"
    server_header: str | None = "msiv2-emulator"
    timeout = 30

    # Per-request fields, reset by _dispatch.
    body = b""
    query: dict[str, str]
    path_only = "/"
    emit_server_header = True
    server_header_value: str | None = None
    """Replaces ``server_header`` for one response (the ``server_header`` fault)."""
    headers_started = False
    """True once this request's status line went out: nothing else may be written for it."""

    @property
    def state(self) -> EmulatorState:
        return cast("LoopbackServer", self.server).state

    def log_message(self, format: str, *args: Any) -> None:
        """Silence: the default logs request lines to stderr."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def reset_request(self) -> None:
        """Forget everything about the previous request on this connection (overridden to reset more)."""
        self.emit_server_header = True
        self.server_header_value = None
        self.headers_started = False
        self.fault_answered = False
        self.body = b""
        self.query = {}
        self.path_only = "/"

    def _dispatch(self) -> None:
        self.reset_request()
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self.respond_json(411, {"error": "invalid_request", "error_description": "send Content-Length"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self.respond_json(413, {"error": "invalid_request", "error_description": "bad Content-Length"})
            return
        self.body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        self.path_only = split.path
        try:
            self.query = single_values(split.query)
        except DuplicateParameter as exc:
            self.query = {}
            self.handle_duplicate_parameter(str(exc))
            return
        try:
            self.handle_request()
        except Exception as exc:
            # An emulator bug must surface as a 500 the test can read, not as a dropped connection;
            # once a response started, the only safe signal left is closing the connection.
            self.close_connection = True
            if not self.headers_started:
                self.json_error(500, "server_error", f"emulator error: {type(exc).__name__}")

    def handle_request(self) -> None:
        raise NotImplementedError

    def handle_duplicate_parameter(self, name: str) -> None:
        self.respond_json(400, {"error": "invalid_request", "error_description": f"duplicate query parameter {name}"})

    # --- responses --------------------------------------------------------------------------

    def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = "application/json; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        extra = dict(headers or {})
        names = {name.lower() for name in extra}
        self.record_response(status)  # before sending: the client may look as soon as it has the answer
        self.headers_started = True
        self.send_response_only(status)
        server = self.server_header_value or self.server_header
        if self.emit_server_header and server:
            self.send_header("Server", server)
        self.send_header("Date", self.date_time_string())
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        client_request_id = self.headers.get("x-ms-client-request-id")
        if client_request_id and "x-ms-client-request-id" not in names:
            self.send_header("x-ms-client-request-id", client_request_id)
        if content_type and "content-type" not in names:
            self.send_header("Content-Type", content_type)
        if "content-length" not in names:
            self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        if self.close_connection and "connection" not in names:
            self.send_header("Connection", "close")  # the server hangs up after this answer: tell the client
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def record_response(self, status: int) -> None:
        """Hook for handlers that record what they answer."""

    def respond_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        self.respond(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers)

    def json_error(self, status: int, error: str, description: str) -> None:
        self.respond_json(status, {"error": error, "error_description": description})

    # --- faults -----------------------------------------------------------------------------

    def begin_call(self, endpoint: str) -> Fault | None:
        """Count this call, take its fault, and answer it here when the fault is a generic one.

        Returns the fault (for endpoint-specific handling) or None; sets ``fault_answered`` when
        the response has already been sent.
        """
        fault = self.state.begin_call(endpoint)
        self.fault_answered = False
        if fault is None:
            return None
        if fault.name == "no_server_header":
            self.emit_server_header = False
        elif fault.name == "server_header":
            self.server_header_value = str(fault.params["value"])
        elif fault.name == "status":
            body = fault.params.get("body")
            payload = (
                body.encode()
                if isinstance(body, str)
                else json.dumps(
                    {"error": "injected_fault", "error_description": f"injected status {fault.params['status']}"}
                ).encode()
            )
            self.respond(int(fault.params["status"]), payload, headers=fault.params.get("headers"))
            self.fault_answered = True
        elif fault.name == "malformed":
            self.respond(200, MALFORMED_BODY)
            self.fault_answered = True
        return fault

    fault_answered = False
