"""Small real servers for transport tests: an HTTPS redirector and an HTTP CONNECT proxy."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import select
import socket
import socketserver
import ssl
import threading
from base64 import urlsafe_b64encode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def _thumbprint(der: bytes) -> str:
    return urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


class TestCA:
    """A throwaway CA and a localhost server certificate, for servers the emulator does not provide."""

    __test__ = False

    def __init__(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "transport tests CA")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.server_certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(name)
            .public_key(self.server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def server_context(self, tmp: Path, client_ca_file: str) -> ssl.SSLContext:
        """A server context that asks for (but does not require) a client certificate from ``client_ca_file``."""
        path = tmp / "server.pem"  # test-only throwaway key
        path.write_bytes(
            self.server_certificate.public_bytes(serialization.Encoding.PEM)
            + self.server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(path))
        path.unlink()
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_OPTIONAL
        return context


class Seen:
    """What the redirector saw on one request."""

    def __init__(self, path: str, authorization: Optional[str], cert_thumbprint: Optional[str]) -> None:
        self.path = path
        self.authorization = authorization
        self.cert_thumbprint = cert_thumbprint


class _RedirectHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RedirectServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        peer = cast(ssl.SSLSocket, self.connection).getpeercert(binary_form=True)
        self.server.seen.append(Seen(self.path, self.headers.get("Authorization"), _thumbprint(peer) if peer else None))
        self.send_response(307)
        self.send_header("Location", self.server.location + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


class RedirectServer(ThreadingHTTPServer):
    """HTTPS on localhost that answers every GET with ``307`` to ``location`` + the same path."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, location: str) -> None:
        super().__init__(("127.0.0.1", 0), _RedirectHandler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.location = location
        self.seen: list[Seen] = []
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.server_address[1]}"

    def __enter__(self) -> RedirectServer:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()


class _ConnectHandler(socketserver.BaseRequestHandler):
    server: ConnectProxy

    def handle(self) -> None:
        client: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, target, _ = request_line.split(" ", 2)
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        with self.server.lock:
            self.server.tunnels.append(target)
        upstream = socket.create_connection((host, int(port)), timeout=10)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            _pipe(client, upstream, self.server)
        finally:
            upstream.close()


def _pipe(a: socket.socket, b: socket.socket, server: ConnectProxy) -> None:
    peers = {a: b, b: a}
    while not server.stopping.is_set():
        readable, _, _ = select.select(list(peers), [], [], 0.1)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            peers[sock].sendall(data)


class ConnectProxy(socketserver.ThreadingTCPServer):
    """A plain-HTTP proxy that only tunnels (``CONNECT host:port``); records each tunnel's target."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ConnectHandler)
        self.tunnels: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join()
