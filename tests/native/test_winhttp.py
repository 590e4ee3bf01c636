"""WinHttpClient against the fake winhttp.dll: real TLS over loopback, client auth with the fake KeyGuard key
(attached by name: CERT_KEY_PROV_INFO_PROP_ID, never by handle).

The test server is Python's ``ssl`` + ``http.server`` requiring a client certificate issued by the test
root. The client certificate is issued for the fake KeyGuard key's public key, so a completed handshake
proves the fake signed with the non-exportable key. ``FAKE_WINHTTP_TRUSTED_CA_FILE`` plays the machine's
trusted roots.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from azure_msiv2_credential._native import crypt32 as c32
from azure_msiv2_credential._native import winhttp as wh
from azure_msiv2_credential._native._winapi import ffi
from azure_msiv2_credential._native.crypt32 import CertContext
from azure_msiv2_credential.keys.keyguard import KeyGuardKey, KeyGuardKeyProvider
from azure_msiv2_credential.transport import _winhttp as wh_client
from azure_msiv2_credential.transport._winhttp import (
    ServerCertificateError,
    WinHttpClient,
    WinHttpError,
    _verify_server_chain,
)

from ._fakes import FakeWin

NOW = datetime.datetime.now(datetime.timezone.utc)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
ROOTS_ENV = "FAKE_WINHTTP_TRUSTED_CA_FILE"


# ---- a small PKI -------------------------------------------------------------------------------


@dataclass
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    public_key: Any,
    issuer: Optional[Issuer],
    *,
    ca: bool,
    server: bool = False,
    signing_key: Optional[ec.EllipticCurvePrivateKey] = None,
) -> x509.Certificate:
    signer = issuer.key if issuer else signing_key
    assert signer is not None
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def _new_ca(name: str, parent: Optional[Issuer] = None) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    return Issuer(_issue(name, key.public_key(), parent, ca=True, signing_key=key), key)


@dataclass
class Pki:
    root: Issuer
    intermediate: Issuer
    other_root: Issuer
    root_file: Path
    other_root_file: Path
    server_chain_file: Path
    server_key_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    root = _new_ca("Test Root CA")
    intermediate = _new_ca("Test Intermediate CA", root)
    other = _new_ca("Some Other Root CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _issue("localhost", server_key.public_key(), intermediate, ca=False, server=True)
    files = {
        "root.pem": root.pem,
        "other.pem": other.pem,
        "server-chain.pem": leaf.public_bytes(serialization.Encoding.PEM) + intermediate.pem,
        "server-key.pem": server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    return Pki(
        root, intermediate, other, out / "root.pem", out / "other.pem", out / "server-chain.pem", out / "server-key.pem"
    )


# ---- the HTTPS server --------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_der: bytes
    header_list: list[tuple[str, str]]


@dataclass
class Server:
    port: int
    seen: list[Seen] = field(default_factory=list)
    handshakes: int = 0
    handshake_failures: int = 0

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server: _HttpsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        der = self.connection.getpeercert(binary_form=True) or b""
        self.server.state.seen.append(
            Seen(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                body,
                der,
                [(k.lower(), v) for k, v in self.headers.items()],
            )
        )
        return body

    def _reply(self, status: int, body: bytes, headers: Optional[list[tuple[str, str]]] = None) -> None:
        self.send_response(status)
        for name, value in headers or []:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._record()
        if self.path == "/hello":
            self._reply(200, b"hello", [("X-Multi", "a"), ("X-Multi", "b"), ("Content-Type", "text/plain")])
        elif self.path == "/whoami":
            self._reply(200, self.connection.getpeercert(binary_form=True) or b"")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"ab", b"cde", b"f" * 5000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        elif self.path == "/big":
            self._reply(200, bytes(range(256)) * 1200)
        elif self.path == "/slow":
            time.sleep(3)
            self._reply(200, b"late")
        elif self.path == "/pause":
            time.sleep(0.5)
            self._reply(200, b"after a pause")
        elif self.path == "/no-reason":
            self.send_response(200, "")  # "HTTP/1.1 200 " + CRLF: no reason phrase, as over HTTP/2
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        elif self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"all of it")
            self.close_connection = True
        elif self.path == "/no-content":
            self.send_response(204)
            self.end_headers()
        else:
            self._reply(404, b"not found", [("X-Reason", "none")])

    def do_POST(self) -> None:
        body = self._record()
        echo = {"body": body.decode(), "headers": {k.lower(): v for k, v in self.headers.items()}}
        self._reply(201, json.dumps(echo).encode(), [("Content-Type", "application/json")])


class _HttpsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, state: Server) -> None:
        self.context = context
        self.state = state
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            self.state.handshake_failures += 1
            return
        self.state.handshakes += 1
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # broken pipes from cancelled/timed-out requests are expected here


@pytest.fixture(scope="module")
def https_server(pki: Pki) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_chain_file, pki.server_key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=pki.root.pem.decode())
    state = Server(port=0)
    server = _HttpsServer(context, state)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(https_server: Server) -> Server:
    https_server.seen.clear()
    https_server.handshakes = https_server.handshake_failures = 0
    return https_server


# ---- the client side ---------------------------------------------------------------------------


@pytest.fixture
def machine_trusts_root(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOTS_ENV, str(pki.root_file))


@pytest.fixture
def key(fakewin: FakeWin) -> Iterator[KeyGuardKey]:
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as provider:
        yield provider.get_key()


@pytest.fixture
def client_der(pki: Pki, key: KeyGuardKey) -> bytes:
    cert = _issue("keyguard-client", key.public_key(), pki.root, ca=False)
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def client(fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, machine_trusts_root: None) -> Iterator[WinHttpClient]:
    with WinHttpClient(client_der, key, libraries=fakewin.libraries) as c:
        yield c


def _connections(fakewin: FakeWin) -> int:
    return int(fakewin.ctl.FakeWinHttp_ConnectionsOpened())


def _requests_sent(fakewin: FakeWin) -> int:
    return int(fakewin.ctl.FakeWinHttp_RequestsSent())


def _eventually(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    """The server thread finishes its side of a handshake a moment after the client."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---- tests -------------------------------------------------------------------------------------


def test_server_sees_the_keyguard_certificate(client: WinHttpClient, client_der: bytes, server: Server) -> None:
    with client.send("GET", server.url("/whoami"), {}) as response:
        assert response.status == 200
        assert response.read() == client_der
    assert server.seen[0].client_der == client_der


def test_status_headers_and_body(client: WinHttpClient, server: Server) -> None:
    with client.send("GET", server.url("/hello"), {"X-Custom": "yes"}) as response:
        assert (response.status, response.reason) == (200, "OK")
        assert [v for k, v in response.headers if k == "X-Multi"] == ["a", "b"]
        assert ("Content-Length", "5") in response.headers
        assert response.read() == b"hello"
        assert response.read() == b""
        assert response.closed  # read to the end: the handle is released early
    seen = server.seen[0]
    assert seen.headers["x-custom"] == "yes"
    assert seen.headers["host"] == f"localhost:{server.port}"
    assert seen.headers["user-agent"] == "azure-msiv2-credential"


def test_header_pairs_duplicates_and_derived_headers(client: WinHttpClient, server: Server) -> None:
    """requests/azure-core hand over header pairs; Host, Content-Length and Transfer-Encoding are ours."""
    headers = [
        ("X-Dup", "1"),
        ("X-Dup", "2"),
        ("User-Agent", "azsdk-python/1.0"),
        ("Transfer-Encoding", "chunked"),
        ("Host", "elsewhere.example"),
        ("Content-Length", "4"),
    ]
    with client.send("POST", server.url("/echo"), headers, b"data") as response:
        echo = json.loads(response.read())
    assert echo["body"] == "data"
    assert echo["headers"]["user-agent"] == "azsdk-python/1.0"  # replaces the session's agent
    assert echo["headers"]["host"] == f"localhost:{server.port}"
    assert "transfer-encoding" not in echo["headers"]
    assert server.seen[0].headers["content-length"] == "4"
    seen = server.seen[0]
    assert [v for k, v in seen.header_list if k == "x-dup"] == ["1", "2"]
    assert [k for k, _ in seen.header_list].count("user-agent") == 1


def test_error_status_is_a_response(client: WinHttpClient, server: Server) -> None:
    with client.send("GET", server.url("/missing?x=1"), {}) as response:
        assert (response.status, response.reason) == (404, "Not Found")
        assert response.read() == b"not found"
    assert server.seen[0].path == "/missing?x=1"


def test_post_body(client: WinHttpClient, server: Server) -> None:
    body = b"grant_type=client_credentials&scope=x"
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body))}
    with client.send("POST", server.url("/token"), headers, body) as response:
        assert response.status == 201
        echo = json.loads(response.read())
    assert echo["body"] == body.decode()
    assert echo["headers"]["content-length"] == str(len(body))
    assert echo["headers"]["content-type"] == "application/x-www-form-urlencoded"


def test_post_without_body_sends_zero_length(client: WinHttpClient, server: Server) -> None:
    with client.send("POST", server.url("/empty"), {}) as response:
        assert json.loads(response.read())["headers"]["content-length"] == "0"


def test_chunked_body(client: WinHttpClient, server: Server) -> None:
    with client.send("GET", server.url("/chunked"), {}) as response:
        assert response.read() == b"abcde" + b"f" * 5000


def test_streaming_body(client: WinHttpClient, server: Server) -> None:
    expected = bytes(range(256)) * 1200
    with client.send("GET", server.url("/big"), {}) as response:
        assert response.read(10) == expected[:10]
        pieces = list(response.iter_bytes(1000))
    assert all(0 < len(p) <= 1000 for p in pieces)
    assert b"".join(pieces) == expected[10:]


def test_body_delimited_by_close_and_204(client: WinHttpClient, server: Server) -> None:
    with client.send("GET", server.url("/until-close"), {}) as response:
        assert response.read() == b"all of it"
    with client.send("GET", server.url("/no-content"), {}) as response:
        assert response.status == 204
        assert response.read() == b""


def test_keep_alive_reuses_the_connection(fakewin: FakeWin, client: WinHttpClient, server: Server) -> None:
    before = _connections(fakewin)
    for _ in range(3):
        with client.send("GET", server.url("/hello"), {}) as response:
            assert response.read() == b"hello"
    assert _connections(fakewin) - before == 1
    assert server.handshakes == 1
    # a response closed before its end aborts its connection: the next request needs a new one
    client.send("GET", server.url("/big"), {}).close()
    with client.send("GET", server.url("/hello"), {}) as response:
        assert response.read() == b"hello"
    assert _connections(fakewin) - before == 2


def test_truncated_body_raises_and_releases(client: WinHttpClient, server: Server) -> None:
    response = client.send("GET", server.url("/truncated"), {})
    with pytest.raises(WinHttpError) as info:
        response.read()
    assert info.value.code == wh.ERROR_WINHTTP_CONNECTION_ERROR
    assert info.value.function == "WinHttpQueryDataAvailable"
    assert response.closed


def test_read_timeout(client: WinHttpClient, server: Server) -> None:
    started = time.monotonic()
    with pytest.raises(WinHttpError) as info:
        client.send("GET", server.url("/slow"), {}, read_timeout=0.3)
    assert time.monotonic() - started < 2
    assert info.value.code == wh.ERROR_WINHTTP_TIMEOUT == 12002
    assert info.value.name == "ERROR_WINHTTP_TIMEOUT"
    assert info.value.is_timeout()
    assert info.value.function == "WinHttpReceiveResponse"


def test_connection_refused(client: WinHttpClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WinHttpError) as info:
        client.send("GET", f"https://127.0.0.1:{port}/", {}, connect_timeout=2)
    assert info.value.code == wh.ERROR_WINHTTP_CANNOT_CONNECT == 12029
    assert "ERROR_WINHTTP_CANNOT_CONNECT (12029)" in str(info.value)


def test_name_not_resolved(client: WinHttpClient) -> None:
    with pytest.raises(WinHttpError) as info:
        client.send("GET", "https://no-such-host.invalid/", {})
    assert info.value.code == wh.ERROR_WINHTTP_NAME_NOT_RESOLVED == 12007


def test_untrusted_machine_store_is_a_secure_failure(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ROOTS_ENV, str(pki.other_root_file))
    sent = _requests_sent(fakewin)
    client = WinHttpClient(client_der, key, libraries=fakewin.libraries)
    with client, pytest.raises(ServerCertificateError) as info:
        client.send("GET", server.url("/hello"), {"Authorization": "mtls_pop secret"})
    assert info.value.code == wh.ERROR_WINHTTP_SECURE_FAILURE == 12175
    assert info.value.is_secure_failure()
    assert "does not chain to a trusted root" in info.value.verify_message
    assert isinstance(info.value, ssl.SSLCertVerificationError)
    assert "secret" not in str(info.value)
    assert server.seen == [] and _requests_sent(fakewin) == sent


def test_ca_bundle_replaces_the_machine_roots(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ROOTS_ENV, raising=False)  # the machine trusts nothing
    with WinHttpClient(client_der, key, libraries=fakewin.libraries, verify=str(pki.root_file)) as client:
        for host in ("localhost", "127.0.0.1"):
            with client.send("GET", server.url("/hello", host), {}) as response:
                assert response.read() == b"hello"
    assert len(server.seen) == 2


def test_wrong_ca_bundle_rejects_before_sending(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, pki: Pki, machine_trusts_root: None
) -> None:
    sent = _requests_sent(fakewin)
    with WinHttpClient(client_der, key, libraries=fakewin.libraries, verify=str(pki.other_root_file)) as client:
        with pytest.raises(ServerCertificateError) as info:
            client.send("POST", server.url("/token"), {"Authorization": "mtls_pop secret"}, b"body")
        assert "does not chain to the configured CA bundle" in info.value.verify_message
        assert info.value.code == 12175
        # the client stays usable; the same failure again, still nothing sent
        with pytest.raises(ServerCertificateError):
            client.send("GET", server.url("/hello"), {})
    assert _eventually(lambda: server.handshakes == 2)  # the TLS handshake happened ...
    assert server.seen == []  # ... but no request reached the server
    assert _requests_sent(fakewin) == sent


def test_ca_bundle_directory(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "a.pem").write_bytes(pki.other_root.pem)
    (tmp_path / "b.crt").write_bytes(pki.root.cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "README").write_text("not a certificate")
    client = WinHttpClient(client_der, key, libraries=fakewin.libraries, verify=str(tmp_path))
    with client, client.send("GET", server.url("/hello"), {}) as response:
        assert response.status == 200


@dataclass
class TunnelProxy:
    url: str
    tunnels: list[str]


@pytest.fixture
def tunnel_proxy() -> Iterator[TunnelProxy]:
    """An HTTP proxy that serves CONNECT tunnels to 127.0.0.1 (one at a time)."""
    tunnels: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def relay(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            target = head.split()[1].decode()
            tunnels.append(target)
            _host, port = target.rsplit(":", 1)
            with socket.create_connection(("127.0.0.1", int(port))) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pair = {conn: upstream, upstream: conn}
                with contextlib.suppress(OSError):  # a refused or cancelled request resets the tunnel
                    while True:
                        ready, _, _ = select.select(list(pair), [], [], 5)
                        if not ready:
                            return
                        for s in ready:
                            data = s.recv(65536)
                            if not data:
                                return
                            pair[s].sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=relay, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield TunnelProxy(f"http://127.0.0.1:{listener.getsockname()[1]}", tunnels)
    finally:
        listener.close()


def test_named_proxy_tunnels_with_connect(
    client_der: bytes,
    key: KeyGuardKey,
    fakewin: FakeWin,
    server: Server,
    machine_trusts_root: None,
    tunnel_proxy: TunnelProxy,
) -> None:
    client = WinHttpClient(client_der, key, libraries=fakewin.libraries, proxy=tunnel_proxy.url)
    assert fakewin.last_access_type() == wh.WINHTTP_ACCESS_TYPE_NAMED_PROXY
    with client, client.send("GET", server.url("/whoami"), {}) as response:
        assert response.read() == client_der
    assert tunnel_proxy.tunnels == [f"localhost:{server.port}"]


def test_refused_inputs(fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, client: WinHttpClient) -> None:
    with pytest.raises(ValueError, match="https"):
        client.send("GET", "http://localhost/", {})
    with pytest.raises(ValueError):
        client.send("GET", "https://user:pw@localhost/", {})
    with pytest.raises(ValueError, match="invalid value"):
        client.send("GET", "https://localhost/", {"X-A": "1\r\nX-Injected: 2"})
    with pytest.raises(ValueError, match="header name"):
        client.send("GET", "https://localhost/", {"Bad Name": "1"})
    with pytest.raises(ValueError, match="Content-Length"):
        client.send("POST", "https://localhost/", {"Content-Length": "3"}, b"four")
    with pytest.raises(ValueError, match="method"):
        client.send("GET /x", "https://localhost/", {})
    with pytest.raises(ValueError):
        client.send("GET", "https://localhost/", {}, read_timeout=0)
    for verify in (False, None, 1):
        with pytest.raises(ValueError, match="cannot be switched off"):
            WinHttpClient(client_der, key, libraries=fakewin.libraries, verify=verify)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="credentials"):
        WinHttpClient(client_der, key, libraries=fakewin.libraries, proxy="http://u:p@proxy:8080")


def test_close_closes_open_responses(client: WinHttpClient, server: Server) -> None:
    response = client.send("GET", server.url("/big"), {})
    assert len(response.read(100)) == 100
    client.close()
    assert response.closed
    with pytest.raises(ValueError, match="closed"):
        response.read()
    with pytest.raises(ValueError, match="closed"):
        client.send("GET", server.url("/hello"), {})
    client.close()  # idempotent


def test_dropped_response_does_not_leak(client: WinHttpClient, server: Server) -> None:
    client.send("GET", server.url("/big"), {})  # never read nor closed; the finalizer closes it


def test_client_certificate_reference_is_released(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, machine_trusts_root: None
) -> None:
    with WinHttpClient(client_der, key, libraries=fakewin.libraries) as client:
        cert: CertContext = client._cert
        response = client.send("GET", server.url("/big"), {})
        assert fakewin.ctl.FakeCrypt32_RefCount(cert.ptr) == 2  # WinHTTP holds its own reference
        response.close()
        assert fakewin.ctl.FakeCrypt32_RefCount(cert.ptr) == 1
        assert cert.ncrypt_key_handle() is None
    assert cert.closed
    key.sign_pss_sha256(b"the key outlives the client")


def test_concurrent_requests(client: WinHttpClient, server: Server) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                with client.send("GET", server.url("/hello"), {}) as response:
                    assert response.read() == b"hello"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(server.seen) == 20


def test_server_chain_check_rejects_wrong_name(pki: Pki) -> None:
    """The in-callback check, alone: path to the bundle root, then the host name."""
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _issue("localhost", key.public_key(), pki.intermediate, ca=False, server=True)
    der = leaf.public_bytes(serialization.Encoding.DER)
    sent = [der, pki.intermediate.cert.public_bytes(serialization.Encoding.DER)]
    from cryptography.x509.verification import Store, VerificationError

    store = Store([pki.root.cert])
    _verify_server_chain(der, sent, "localhost", store)
    _verify_server_chain(der, sent, "127.0.0.1", store)
    with pytest.raises(VerificationError):
        _verify_server_chain(der, sent, "example.com", store)
    with pytest.raises(VerificationError):
        _verify_server_chain(der, [der], "localhost", store)  # intermediate missing
    with pytest.raises(VerificationError):
        _verify_server_chain(der, sent, "localhost", Store([pki.other_root.cert]))


def test_native_cancel_from_sending_request_callback(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, machine_trusts_root: None
) -> None:
    """The raw contract the client builds on: closing the request in SENDING_REQUEST cancels it, unsent."""
    libs = fakewin.libraries
    calls: list[int] = []
    with ExitStack() as stack:
        cert = stack.enter_context(CertContext.from_der(libs.crypt32, client_der))
        session = stack.enter_context(wh.Session.open(libs.winhttp, "test"))
        connection = stack.enter_context(session.connect("localhost", server.port))
        request = stack.enter_context(connection.open_request("GET", "/hello"))
        cert.bind_key_provider_info(key.provider_name, key.key_name)
        request.set_client_certificate(cert)

        def on_status(handle: Any, context: int, status: int, info: Any, length: int) -> None:
            calls.append(status)
            with request.server_certificate(libs.crypt32) as server_cert:
                assert len(server_cert.store_certificates()) == 2  # leaf + intermediate, as sent
            request.close()

        request.set_status_callback(on_status, wh.WINHTTP_CALLBACK_STATUS_SENDING_REQUEST)
        with pytest.raises(WinHttpError) as info:
            request.send("", None)
        assert info.value.code == wh.ERROR_WINHTTP_OPERATION_CANCELLED
        assert request.closed
    assert calls == [wh.WINHTTP_CALLBACK_STATUS_SENDING_REQUEST]
    assert server.seen == []


def test_native_handle_states(fakewin: FakeWin, server: Server) -> None:
    libs = fakewin.libraries
    with ExitStack() as stack:
        session = stack.enter_context(wh.Session.open(libs.winhttp, "test"))
        connection = stack.enter_context(session.connect("localhost", server.port))
        request = stack.enter_context(connection.open_request("GET", "/hello"))
        with pytest.raises(WinHttpError) as info:
            request.receive_response()  # nothing sent yet
        assert info.value.name == "ERROR_WINHTTP_INCORRECT_HANDLE_STATE"
        with pytest.raises(WinHttpError) as info:
            request.server_certificate(libs.crypt32)  # no connection yet
        assert info.value.code == wh.ERROR_WINHTTP_INCORRECT_HANDLE_STATE
        with pytest.raises(WinHttpError) as info:
            session.set_dword_option(wh.WINHTTP_OPTION_SECURITY_FLAGS, 0)  # a request option
        assert info.value.code == wh.ERROR_WINHTTP_INCORRECT_HANDLE_TYPE
    assert repr(request) == "Request(closed)"


# ---- the key found by name (CERT_KEY_PROV_INFO_PROP_ID), never attached by handle ----------------------


def _keys_open(fakewin: FakeWin) -> int:
    return int(fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.key"))


def _set_prov_info(cert: CertContext, provider: str, name: str, key_spec: int) -> None:
    provider_buf, name_buf = ffi.new("char16_t[]", provider), ffi.new("char16_t[]", name)
    info = ffi.new("CRYPT_KEY_PROV_INFO *")
    info.pwszProvName, info.pwszContainerName, info.dwKeySpec = provider_buf, name_buf, key_spec
    assert cert._lib.CertSetCertificateContextProperty(cert.ptr, c32.CERT_KEY_PROV_INFO_PROP_ID, 0, info)


def test_client_binds_the_key_by_name_only(
    fakewin: FakeWin, client: WinHttpClient, key: KeyGuardKey, client_der: bytes, server: Server
) -> None:
    """Property 78 would hand the key's handle to the context (the fake frees it, as Windows does): never set."""
    cert: CertContext = client._cert
    assert cert.ncrypt_key_handle() is None
    info = cert.key_provider_info()
    assert info is not None
    assert (info.provider_name, info.container_name) == (key.provider_name, key.key_name)
    assert (info.provider_type, info.flags, info.key_spec, info.param_count) == (0, c32.NCRYPT_SILENT_FLAG, 0, 0)
    opens, keys_open = fakewin.calls("NCryptOpenKey"), _keys_open(fakewin)
    with client.send("GET", server.url("/whoami"), {}) as response:
        assert response.status == 200
        assert response.read() == client_der  # the server verified a handshake signed by the KeyGuard key
        assert _keys_open(fakewin) == keys_open  # the key opened by name is already released
    assert fakewin.calls("NCryptOpenKey") == opens + 1  # opened by name for the handshake
    assert server.seen[0].client_der == client_der
    assert fakewin.prop78_sets() == 0


def test_closing_a_client_leaves_the_key_usable(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, machine_trusts_root: None
) -> None:
    """Every rotation or retire closes a client: the shared per-boot key handle must survive it."""
    keys_open = _keys_open(fakewin)
    first = WinHttpClient(client_der, key, libraries=fakewin.libraries)
    second = WinHttpClient(client_der, key, libraries=fakewin.libraries)
    with second:
        for client in (first, second):
            with client.send("GET", server.url("/whoami"), {}) as response:
                assert response.read() == client_der
        first.close()
        assert _keys_open(fakewin) == keys_open
        key.public_key().verify(key.sign_pss_sha256(b"after close"), b"after close", PSS, hashes.SHA256())
        second.send("GET", server.url("/big"), {}).close()  # aborts the pooled connection: a new handshake next
        with second.send("GET", server.url("/whoami"), {}) as response:
            assert response.read() == client_der
    assert _keys_open(fakewin) == keys_open
    assert fakewin.prop78_sets() == 0


def test_only_property_2_keeps_the_connection_alive(fakewin: FakeWin, client: WinHttpClient, server: Server) -> None:
    before = _connections(fakewin)
    for _ in range(3):
        with client.send("GET", server.url("/hello"), {}) as response:
            assert response.read() == b"hello"
    assert _connections(fakewin) - before == 1  # same names, same key: the pooled connection is reused


@pytest.mark.parametrize(
    ("provider", "name", "key_spec"),
    [
        ("Microsoft Software Key Storage Provider", "NoSuchKey", 0),  # NCryptOpenKey: NTE_BAD_KEYSET
        ("No Such Provider", "AzureMsiV2BindingKey", 0),  # NCryptOpenStorageProvider: NTE_BAD_PROVIDER
        # CERT_NCRYPT_KEY_SPEC is not one of NCryptOpenKey's documented dwLegacyKeySpec values
        ("Microsoft Software Key Storage Provider", "AzureMsiV2BindingKey", c32.CERT_NCRYPT_KEY_SPEC),
    ],
)
def test_property_2_naming_no_usable_key_fails_cleanly(
    fakewin: FakeWin, client: WinHttpClient, server: Server, provider: str, name: str, key_spec: int
) -> None:
    _set_prov_info(client._cert, provider, name, key_spec)
    with pytest.raises(WinHttpError) as info:
        client.send("GET", server.url("/hello"), {})
    assert info.value.code == wh.ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY
    assert server.seen == []  # no_leaks: the provider handle opened for the lookup was released too


def test_property_2_key_of_a_previous_boot_cannot_sign(fakewin: FakeWin, client: WinHttpClient, server: Server) -> None:
    """A per-boot key opens by name after a reboot but is stale: no private key for the handshake."""
    fakewin.reboot()
    with pytest.raises(WinHttpError) as info:
        client.send("GET", server.url("/hello"), {})
    assert info.value.code == wh.ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY


def test_property_2_open_failure_is_reported(fakewin: FakeWin, client: WinHttpClient, server: Server) -> None:
    fakewin.fail_next("NCryptOpenKey", 0x80090016)  # NTE_BAD_KEYSET
    with pytest.raises(WinHttpError) as info:
        client.send("GET", server.url("/hello"), {})
    assert info.value.code == wh.ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY
    with client.send("GET", server.url("/hello"), {}) as response:  # the next lookup works again
        assert response.read() == b"hello"


# ---- the CA-bundle check: callback order, checks before TLS, rejections whatever WinHTTP returns -----------


def test_callback_before_tls_is_skipped_and_the_one_after_checks(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, pki: Pki, tunnel_proxy: TunnelProxy
) -> None:
    """SENDING_REQUEST for a proxy's CONNECT comes before TLS (no server certificate yet: 12019): no rejection;
    the invocation after the handshake verifies the chain."""
    fakewin.set_pre_tls_notify(1)
    client = WinHttpClient(
        client_der, key, libraries=fakewin.libraries, verify=str(pki.root_file), proxy=tunnel_proxy.url
    )
    with client, client.send("GET", server.url("/hello"), {}) as response:
        assert response.read() == b"hello"
    assert tunnel_proxy.tunnels == [f"localhost:{server.port}"]
    # ... and the wrong bundle is still rejected after the skipped pre-TLS invocation, before sending
    sent = _requests_sent(fakewin)
    client = WinHttpClient(
        client_der, key, libraries=fakewin.libraries, verify=str(pki.other_root_file), proxy=tunnel_proxy.url
    )
    with client, pytest.raises(ServerCertificateError, match="does not chain to the configured CA bundle"):
        client.send("GET", server.url("/hello"), {"Authorization": "mtls_pop secret"})
    assert _requests_sent(fakewin) == sent


def test_a_server_never_checked_is_refused(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, pki: Pki, tunnel_proxy: TunnelProxy
) -> None:
    """If the callback only ever fires before TLS, the response is not accepted: nothing vouched for the server."""
    fakewin.set_pre_tls_notify(2)
    client = WinHttpClient(
        client_der, key, libraries=fakewin.libraries, verify=str(pki.root_file), proxy=tunnel_proxy.url
    )
    with client, pytest.raises(ServerCertificateError) as info:
        client.send("GET", server.url("/hello"), {})
    assert "could not verify the server certificate against connection_verify" in info.value.verify_message
    assert info.value.function == "WinHttpSendRequest"


def test_a_rejection_wins_even_if_the_send_succeeds(
    fakewin: FakeWin,
    key: KeyGuardKey,
    client_der: bytes,
    server: Server,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should closing the request in the callback not cancel the send (unverified on real Windows), the
    rejection the callback recorded still refuses the response."""
    import azure_msiv2_credential.transport._winhttp as winhttp_client

    def reject_without_cancelling(self: Any, reason: str) -> None:
        self.rejection = self.rejection or reason
        self.verified = False

    monkeypatch.setattr(winhttp_client._ServerCheck, "_reject", reject_without_cancelling)
    client = WinHttpClient(client_der, key, libraries=fakewin.libraries, verify=str(pki.other_root_file))
    with client, pytest.raises(ServerCertificateError, match="does not chain to the configured CA bundle"):
        client.send("GET", server.url("/hello"), {})


def test_a_recorded_rejection_wins_over_any_error_code() -> None:
    import azure_msiv2_credential.transport._winhttp as winhttp_client

    check = winhttp_client._ServerCheck(None, "localhost", None, "")  # type: ignore[arg-type]
    check.rejection = "not ours"
    error = check.translate(WinHttpError("WinHttpSendRequest", wh.ERROR_WINHTTP_CONNECTION_ERROR))
    assert isinstance(error, ServerCertificateError) and error.verify_message == "not ours"


def test_unknown_ca_is_accepted_only_once_the_check_is_installed(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    options: list[tuple[int, int]] = []
    real_set = wh.Request.set_dword_option

    def spy(self: wh.Request, option: int, value: int) -> None:
        options.append((option, value))
        real_set(self, option, value)

    def refuse(self: wh.Request, callback: Any, notifications: int) -> None:
        raise WinHttpError("WinHttpSetStatusCallback", wh.ERROR_INVALID_HANDLE)

    monkeypatch.setattr(wh.Request, "set_dword_option", spy)
    monkeypatch.setattr(wh.Request, "set_status_callback", refuse)
    client = WinHttpClient(client_der, key, libraries=fakewin.libraries, verify=str(pki.root_file))
    with client, pytest.raises(WinHttpError, match="WinHttpSetStatusCallback"):
        client.send("GET", server.url("/hello"), {})
    assert (wh.WINHTTP_OPTION_SECURITY_FLAGS, wh.SECURITY_FLAG_IGNORE_UNKNOWN_CA) not in options
    assert server.seen == []


def test_invalid_status_callback_is_pointer_sized() -> None:
    """WINHTTP_INVALID_STATUS_CALLBACK is (WINHTTP_STATUS_CALLBACK)-1: 0xFFFFFFFF in a 32-bit process."""
    assert wh.invalid_status_callback_value(4) == 0xFFFFFFFF
    assert wh.invalid_status_callback_value(8) == 0xFFFFFFFFFFFFFFFF
    minus_one = ffi.cast("WINHTTP_STATUS_CALLBACK", -1)
    assert int(ffi.cast("uintptr_t", minus_one)) == wh._INVALID_STATUS_CALLBACK


def test_set_status_callback_failure_is_detected(fakewin: FakeWin) -> None:
    """The fake returns WINHTTP_INVALID_STATUS_CALLBACK for a handle it does not know."""
    from azure_msiv2_credential._native import load

    bogus = wh.Request(str(fakewin.fakewin_path), load(str(fakewin.fakewin_path)), ffi.cast("void *", 0x10))
    registered = wh._status_dispatch.registered()
    with pytest.raises(WinHttpError) as info:
        bogus.set_status_callback(lambda *args: None, wh.WINHTTP_CALLBACK_STATUS_SENDING_REQUEST)
    assert info.value.code == wh.ERROR_INVALID_HANDLE
    assert wh._status_dispatch.registered() == registered  # nothing left registered
    bogus._ptr = None  # never close a handle that does not exist


class _CountingFfi:
    """Delegates to the real ffi, counting ``callback`` calls (each makes a native trampoline)."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.callbacks = 0

    def callback(self, *args: Any, **kwargs: Any) -> Any:
        self.callbacks += 1
        return self._real.callback(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_one_native_callback_routes_every_request(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, server: Server, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    trampoline = wh._status_dispatch.trampoline()  # made once per process (here, at the latest)
    registered = wh._status_dispatch.registered()
    counting = _CountingFfi(ffi)
    monkeypatch.setattr(wh, "ffi", counting)
    with WinHttpClient(client_der, key, libraries=fakewin.libraries, verify=str(pki.root_file)) as client:
        for _ in range(3):
            with client.send("GET", server.url("/hello"), {}) as response:
                assert response.read() == b"hello"
        with pytest.raises(WinHttpError):
            client.send("GET", server.url("/slow"), {}, read_timeout=0.2)
    assert counting.callbacks == 0  # no native callback made per request
    assert wh._status_dispatch.trampoline() is trampoline
    assert wh._status_dispatch.registered() == registered  # each request's route is gone with it


# ---- responses without a reason phrase; proxies; closing while a send is in flight ----------------------


def test_missing_status_text_is_an_empty_reason(client: WinHttpClient, server: Server) -> None:
    with client.send("GET", server.url("/no-reason"), {}) as response:
        assert (response.status, response.reason) == (200, "")
        assert response.read() == b"ok"


@pytest.mark.parametrize(
    ("proxy", "access"),
    [
        (None, wh.WINHTTP_ACCESS_TYPE_AUTOMATIC_PROXY),
        (False, wh.WINHTTP_ACCESS_TYPE_NO_PROXY),
        ("http://proxy.example:3128", wh.WINHTTP_ACCESS_TYPE_NAMED_PROXY),
        ("proxy.example:3128", wh.WINHTTP_ACCESS_TYPE_NAMED_PROXY),
    ],
)
def test_proxy_settings_pick_the_access_type(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, proxy: Any, access: int
) -> None:
    with WinHttpClient(client_der, key, libraries=fakewin.libraries, proxy=proxy):
        assert fakewin.last_access_type() == access


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ("https://proxy.example:3128", "only an http:// proxy, not a https:// one"),
        ("socks5://proxy.example:1080", "only an http:// proxy, not a socks5:// one"),
        ("http://user:secret@proxy.example:3128", "credentials"),
        ("http://proxy.example:3128/path", "without a path"),
        ("http://proxy.example:99999", "invalid port"),
        ("http://a:1;http://b:2", "one http://host:port"),
        ("", "one http://host:port"),
    ],
)
def test_only_http_proxies_are_accepted(
    fakewin: FakeWin, key: KeyGuardKey, client_der: bytes, proxy: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        WinHttpClient(client_der, key, libraries=fakewin.libraries, proxy=proxy)
    assert "secret" not in str(info.value)


def test_close_during_a_send_frees_the_handles_after_it(client: WinHttpClient, server: Server) -> None:
    """A retire listener may close the client while another thread's send is in flight: the certificate
    context and the session stay until that send returns."""
    results: list[Any] = []

    def send() -> None:
        try:
            results.append(client.send("GET", server.url("/pause"), {}))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    assert _eventually(lambda: len(server.seen) == 1)  # the request is in flight (the server pauses)
    client.close()
    assert client.closed
    assert not client._cert.closed and not client._session.closed  # deferred to the send in flight
    with pytest.raises(ValueError, match="closed"):
        client.send("GET", server.url("/hello"), {})  # new sends are refused at once
    thread.join()
    response = results[0]
    assert isinstance(response, wh_client.WinHttpResponse)
    with response:
        assert response.read() == b"after a pause"
    assert client._cert.closed and client._session.closed


def test_schannel_hresults_are_named_secure_failures_in_hex() -> None:
    # Seen under Wine: a client key Schannel cannot open comes back as SEC_E_UNKNOWN_CREDENTIALS.
    from azure_msiv2_credential._native.winhttp import WinHttpError

    error = WinHttpError("WinHttpSendRequest", 0x8009030D)
    assert str(error) == "WinHttpSendRequest failed: SEC_E_UNKNOWN_CREDENTIALS (0x8009030D)"
    assert error.is_secure_failure() and not error.is_timeout()
    assert "(12002)" in str(WinHttpError("WinHttpReceiveResponse", 12002))
