"""WinHttpClient against the fake winhttp.dll: real TLS over loopback, client auth with the fake KeyGuard key
(attached by handle, by name, or both).

The test server is Python's ``ssl`` + ``http.server`` requiring a client certificate issued by the test
root. The client certificate is issued for the fake KeyGuard key's public key, so a completed handshake
proves the fake signed with the non-exportable key. ``FAKE_WINHTTP_TRUSTED_CA_FILE`` plays the machine's
trusted roots.
"""

from __future__ import annotations

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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from azure_msiv2_credential._native import crypt32 as c32
from azure_msiv2_credential._native import winhttp as wh
from azure_msiv2_credential._native._winapi import ffi
from azure_msiv2_credential._native.crypt32 import CertContext
from azure_msiv2_credential.keys.keyguard import KeyGuardKey, KeyGuardKeyProvider
from azure_msiv2_credential.transport._winhttp import (
    ServerCertificateError,
    WinHttpClient,
    WinHttpError,
    _verify_server_chain,
)

from ._fakes import FakeWin

NOW = datetime.datetime.now(datetime.timezone.utc)
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


def test_named_proxy_tunnels_with_connect(
    client_der: bytes, key: KeyGuardKey, fakewin: FakeWin, server: Server, machine_trusts_root: None
) -> None:
    tunnels: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            target = head.split()[1].decode()
            tunnels.append(target)
            _host, port = target.rsplit(":", 1)
            with socket.create_connection(("127.0.0.1", int(port))) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pair = {conn: upstream, upstream: conn}
                while True:
                    ready, _, _ = select.select(list(pair), [], [], 5)
                    if not ready:
                        return
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            return
                        pair[s].sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    proxy = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        client = WinHttpClient(client_der, key, libraries=fakewin.libraries, proxy=proxy)
        with client, client.send("GET", server.url("/whoami"), {}) as response:
            assert response.read() == client_der
    finally:
        listener.close()
    assert tunnels == [f"localhost:{server.port}"]


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
        assert cert.ncrypt_key_handle() == key.native_handle
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
        cert.bind_ncrypt_key(key.native_handle, key)
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


# ---- the key found by name (CERT_KEY_PROV_INFO_PROP_ID) -------------------------------------------


def _keys_open(fakewin: FakeWin) -> int:
    return int(fakewin.ctl.FakeWin_LiveHandlesOfKind(b"ncrypt.key"))


def _drop_key_handle(cert: CertContext) -> None:
    """Delete CERT_NCRYPT_KEY_HANDLE_PROP_ID (pvData NULL deletes a property): only the names are left."""
    assert cert._lib.CertSetCertificateContextProperty(cert.ptr, c32.CERT_NCRYPT_KEY_HANDLE_PROP_ID, 0, ffi.NULL)
    assert cert.ncrypt_key_handle() is None


def _set_prov_info(cert: CertContext, provider: str, name: str, key_spec: int) -> None:
    provider_buf, name_buf = ffi.new("char16_t[]", provider), ffi.new("char16_t[]", name)
    info = ffi.new("CRYPT_KEY_PROV_INFO *")
    info.pwszProvName, info.pwszContainerName, info.dwKeySpec = provider_buf, name_buf, key_spec
    assert cert._lib.CertSetCertificateContextProperty(cert.ptr, c32.CERT_KEY_PROV_INFO_PROP_ID, 0, info)


def test_client_binds_the_key_by_handle_and_by_name(
    fakewin: FakeWin, client: WinHttpClient, key: KeyGuardKey, client_der: bytes, server: Server
) -> None:
    cert: CertContext = client._cert
    assert cert.ncrypt_key_handle() == key.native_handle
    info = cert.key_provider_info()
    assert info is not None
    assert (info.provider_name, info.container_name) == (key.provider_name, key.key_name)
    assert (info.provider_type, info.flags, info.key_spec, info.param_count) == (0, 0, 0, 0)
    opens = fakewin.calls("NCryptOpenKey")
    with client.send("GET", server.url("/whoami"), {}) as response:
        assert response.read() == client_der
    assert fakewin.calls("NCryptOpenKey") == opens  # with both set, the handle is used: no lookup by name


def test_handshake_with_only_property_2(
    fakewin: FakeWin, client: WinHttpClient, key: KeyGuardKey, client_der: bytes, server: Server
) -> None:
    """The names alone are enough: the key is opened by name for the handshake and released after it."""
    _drop_key_handle(client._cert)
    opens, keys_open = fakewin.calls("NCryptOpenKey"), _keys_open(fakewin)
    with client.send("GET", server.url("/whoami"), {}) as response:
        assert response.status == 200
        assert response.read() == client_der  # the server verified a handshake signed by the KeyGuard key
        assert _keys_open(fakewin) == keys_open  # the key opened by name is already released
    assert fakewin.calls("NCryptOpenKey") == opens + 1
    assert server.seen[0].client_der == client_der


def test_only_property_2_keeps_the_connection_alive(fakewin: FakeWin, client: WinHttpClient, server: Server) -> None:
    _drop_key_handle(client._cert)
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
    _drop_key_handle(client._cert)
    _set_prov_info(client._cert, provider, name, key_spec)
    with pytest.raises(WinHttpError) as info:
        client.send("GET", server.url("/hello"), {})
    assert info.value.code == wh.ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY
    assert server.seen == []  # no_leaks: the provider handle opened for the lookup was released too


def test_property_2_key_of_a_previous_boot_cannot_sign(fakewin: FakeWin, client: WinHttpClient, server: Server) -> None:
    """A per-boot key opens by name after a reboot but is stale: no private key for the handshake."""
    _drop_key_handle(client._cert)
    fakewin.reboot()
    with pytest.raises(WinHttpError) as info:
        client.send("GET", server.url("/hello"), {})
    assert info.value.code == wh.ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY


def test_property_2_open_failure_is_reported(fakewin: FakeWin, client: WinHttpClient, server: Server) -> None:
    _drop_key_handle(client._cert)
    fakewin.fail_next("NCryptOpenKey", 0x80090016)  # NTE_BAD_KEYSET
    with pytest.raises(WinHttpError) as info:
        client.send("GET", server.url("/hello"), {})
    assert info.value.code == wh.ERROR_WINHTTP_CLIENT_CERT_NO_PRIVATE_KEY
    with client.send("GET", server.url("/hello"), {}) as response:  # the next lookup works again
        assert response.read() == b"hello"
