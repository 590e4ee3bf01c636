"""Stricter emulator behaviour: listen backlog, connection closing, handshake faults, records, reset, IMDS headers."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.emulator._http import BaseHandler, LoopbackServer
from azure_msiv2_credential.emulator._state import EmulatorState

from ._helpers import METADATA, Minted, issue, token_request, valid_csr

METADATA_URL = "/metadata/identity/getplatformmetadata?cred-api-version=2.0"
SECRET = "/secrets/demo-secret?api-version=7.5"


def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# --- item: listen backlog ------------------------------------------------------------------------


def test_listen_backlog_is_somaxconn(emu: Emulator) -> None:
    servers = emu._servers
    assert len(servers) == 3
    assert all(server.request_queue_size == socket.SOMAXCONN for server in servers)


# --- item: Connection: close when the server hangs up --------------------------------------------


def test_411_says_connection_close_and_the_session_recovers(emu: Emulator) -> None:
    with requests.Session() as session:
        chunked = session.post(
            f"{emu.imds_url}/metadata/identity/issuecredential?cred-api-version=2.0",
            data=iter([b'{"csr":', b' "x"}']),  # a generator body goes out chunked
            headers={**METADATA, "Content-Type": "application/json"},
            timeout=10,
        )
        assert chunked.status_code == 411
        assert chunked.headers["Connection"] == "close"
        for _ in range(3):
            assert session.get(f"{emu.imds_url}{METADATA_URL}", headers=METADATA, timeout=10).status_code == 200


@pytest.mark.parametrize("length", ["abc", "-1", str(2 * 1024 * 1024)])
def test_413_says_connection_close(emu: Emulator, length: str) -> None:
    answer = _raw_exchange(
        _port(emu.imds_url),
        f"POST {METADATA_URL} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode(),
    )
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nConnection: close" in head
    with requests.Session() as session:
        assert session.get(f"{emu.imds_url}{METADATA_URL}", headers=METADATA, timeout=10).status_code == 200


class _AnswersThenBreaks(BaseHandler):
    def handle_request(self) -> None:
        if self.path_only == "/half":
            self.respond(200, b"ok")
            raise RuntimeError("an emulator bug after the answer went out")
        raise RuntimeError("an emulator bug before any answer")


@pytest.fixture
def breaking_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer("breaking", _AnswersThenBreaks, EmulatorState())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.close()
        thread.join()


def test_500_is_never_written_after_an_answer(breaking_server: LoopbackServer) -> None:
    answer = _raw_exchange(breaking_server.port, b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.count(b"HTTP/1.1 ") == 1
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\nok")


def test_500_before_an_answer_says_connection_close(breaking_server: LoopbackServer) -> None:
    answer = _raw_exchange(breaking_server.port, b"GET /early HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.count(b"HTTP/1.1 ") == 1
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 500 ")
    assert b"\r\nConnection: close" in head


# --- item: reject_handshake ----------------------------------------------------------------------


def test_reject_handshake_fault_fails_the_tls_handshake_once(emu: Emulator, mint: Callable[..., Minted]) -> None:
    minted = mint()
    emu.reset_calls()
    emu.inject("token", "reject_handshake")
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError, or a reset during the TLS 1.3 handshake
        token_request(emu, minted.cert, client_id=minted.identity.client_id)
    assert emu.tls_rejections["token"] == 1
    assert emu.calls["token"] == 0  # no HTTP request got through
    response = token_request(emu, minted.cert, client_id=minted.identity.client_id)
    assert response.status_code == 200, response.text
    assert (emu.tls_rejections["token"], emu.calls["token"]) == (1, 1)


def test_reject_handshake_is_not_consumed_by_a_kept_alive_connection(
    emu: Emulator, mint: Callable[..., Minted]
) -> None:
    minted = mint()
    url = f"{emu.token_service_url}/{emu.tenant_id}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": minted.identity.client_id,
        "scope": "https://vault.azure.net/.default",
        "token_type": "mtls_pop",
    }
    with requests.Session() as session:
        options = {"cert": minted.cert, "verify": emu.ca_bundle_path, "timeout": 10}
        assert session.post(url, data=form, **options).status_code == 200
        emu.inject("token", "reject_handshake")
        assert session.post(url, data=form, **options).status_code == 200  # same connection: no handshake
    with pytest.raises(requests.exceptions.ConnectionError):
        token_request(emu, minted.cert, client_id=minted.identity.client_id)
    assert emu.tls_rejections["token"] == 1


def test_reject_handshake_applies_to_the_token_service_only(emu: Emulator) -> None:
    for endpoint in ("getplatformmetadata", "issuecredential", "resource"):
        with pytest.raises(ValueError, match="does not apply"):
            emu.inject(endpoint, "reject_handshake")


# --- item: per-request resource records ----------------------------------------------------------


def test_resource_records_do_not_leak_across_requests_on_one_connection(
    emu: Emulator, pop: Callable[..., tuple[Minted, str]]
) -> None:
    minted, token = pop()
    emu.reset()
    with requests.Session() as session:
        options = {"cert": minted.cert, "verify": emu.ca_bundle_path, "timeout": 10}
        headers = {"Authorization": f"mtls_pop {token}", "x-ms-tokenboundauth": "true"}
        assert session.get(f"{emu.resource_url}{SECRET}", headers=headers, **options).status_code == 200
        # Same kept-alive connection; answered before handle_request runs (duplicate query parameter).
        duplicate = session.get(f"{emu.resource_url}/secrets/demo-secret?a=1&a=2", **options)
        assert duplicate.status_code == 400
    first, second = emu.resource_requests
    assert (first.status, first.auth_scheme, first.token_bound_auth) == (200, "mtls_pop", True)
    assert first.cert_thumbprint is not None
    assert (second.status, second.auth_scheme, second.cert_thumbprint, second.token_bound_auth) == (
        400,
        None,
        None,
        False,
    )
    assert emu.last_resource_request == second


# --- item: one reset -----------------------------------------------------------------------------


def test_reset_restores_every_setting_and_clears_every_record(
    emu: Emulator, pop: Callable[..., tuple[Minted, str]]
) -> None:
    before = {
        name: getattr(emu, name)
        for name in (
            "require_attestation",
            "cert_lifetime",
            "token_lifetime",
            "refresh_in",
            "v1_only",
            "attestation_endpoint",
        )
    }
    cu_id, secrets, blobs = dict(emu.cu_id), dict(emu.secrets), {k: dict(v) for k, v in emu.blobs.items()}
    minted, token = pop()
    requests.get(
        f"{emu.resource_url}{SECRET}",
        headers={"Authorization": f"mtls_pop {token}"},
        cert=minted.cert,
        verify=emu.ca_bundle_path,
        timeout=10,
    )
    emu.require_attestation = True
    emu.cert_lifetime = 60
    emu.token_lifetime = 30
    emu.refresh_in = 10
    emu.v1_only = True
    emu.attestation_endpoint = "https://elsewhere.attest.azure.net"
    emu.cu_id["vmId"] = "changed in place"
    emu.secrets["added"] = "x"
    emu.blobs["demo"]["added.txt"] = b"x"
    emu.inject("token", "reject_handshake")
    emu.inject("getplatformmetadata", "status", status=500)
    emu.record_tls_rejection("token")
    assert emu.calls and emu.issued_certificates and emu.resource_requests and emu.imds_requests

    emu.reset()

    assert {name: getattr(emu, name) for name in before} == before
    assert (emu.cu_id, emu.secrets, emu.blobs) == (cu_id, secrets, blobs)
    assert not emu.calls and not emu.tls_rejections
    assert emu.issued_certificates == [] and emu.resource_requests == [] and emu.imds_requests == []
    assert emu.last_resource_request is None
    assert requests.get(f"{emu.imds_url}{METADATA_URL}", headers=METADATA, timeout=10).status_code == 200
    emu.secrets["again"] = "y"
    emu.reset()
    assert "again" not in emu.secrets  # the snapshot itself was not shared with the live settings


def test_reset_restores_values_set_before_start() -> None:
    emulator = Emulator(token_lifetime=120, require_attestation=True)
    emulator.v1_only = True
    with emulator as emu:
        emu.v1_only = False
        emu.token_lifetime = 5
        emu.reset()
        assert (emu.v1_only, emu.token_lifetime, emu.require_attestation) == (True, 120, True)


# --- item: IMDS headers and Content-Type ---------------------------------------------------------


@pytest.mark.parametrize("value", ["True", "TRUE", "true ", "1", "yes", ""])
def test_metadata_header_must_be_exactly_true(emu: Emulator, value: str) -> None:
    headers = {**METADATA, "Metadata": value}
    response = requests.get(f"{emu.imds_url}{METADATA_URL}", headers=headers, timeout=10)
    assert response.status_code == 400
    assert response.json()["error_description"] == "Required metadata header not specified"


def test_metadata_header_must_appear_once(emu: Emulator) -> None:
    request = (
        f"GET {METADATA_URL} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nMetadata: true\r\n"
        f"x-ms-client-request-id: {uuid.uuid4()}\r\nConnection: close\r\n\r\n"
    ).encode()
    assert _raw_exchange(_port(emu.imds_url), request).startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize("value", [None, "", "corr", "{" + str(uuid.UUID(int=1)) + "}", uuid.UUID(int=1).hex])
def test_client_request_id_must_be_a_uuid(emu: Emulator, key: rsa.RSAPrivateKey, value: str | None) -> None:
    headers = {"Metadata": "true"} if value is None else {"Metadata": "true", "x-ms-client-request-id": value}
    metadata = requests.get(f"{emu.imds_url}{METADATA_URL}", headers=headers, timeout=10)
    issued = issue(emu, valid_csr(emu, key), headers=headers)
    for response in (metadata, issued):
        assert response.status_code == 400
        assert response.json() == {
            "error": "invalid_request",
            "error_description": "x-ms-client-request-id must be a UUID",
        }


def test_v1_token_does_not_need_a_client_request_id(emu: Emulator) -> None:
    response = requests.get(
        f"{emu.imds_url}/metadata/identity/oauth2/token",
        params={"api-version": "2018-02-01", "resource": "https://x"},
        headers={"Metadata": "true"},
        timeout=10,
    )
    assert response.status_code == 200


def test_imds_requests_record_endpoint_and_client_request_id(emu: Emulator, key: rsa.RSAPrivateKey) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4()).upper()
    requests.get(
        f"{emu.imds_url}{METADATA_URL}", headers={"Metadata": "true", "x-ms-client-request-id": first}, timeout=10
    )
    response = issue(emu, valid_csr(emu, key), headers={"Metadata": "true", "x-ms-client-request-id": second})
    assert response.status_code == 200, response.text
    requests.get(f"{emu.imds_url}{METADATA_URL}", timeout=10)  # probe: no headers at all
    assert emu.imds_requests == [
        ("getplatformmetadata", first),
        ("issuecredential", second),
        ("getplatformmetadata", None),
    ]


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("Application/JSON", True),
        ("application/json; charset=utf-8", True),
        ('application/json;charset="utf-8"', True),
        ("application/jsonx", False),
        ("application/json-seq", False),
        ("application/json/x", False),
        ("application/json; charset", False),
        ("application/json;", False),
        ("text/plain; x=application/json", False),
    ],
)
def test_issue_content_type_is_parsed_exactly(
    emu: Emulator, key: rsa.RSAPrivateKey, content_type: str, accepted: bool
) -> None:
    import base64
    import json

    body = json.dumps({"csr": base64.b64encode(valid_csr(emu, key)).decode()}).encode()
    response = requests.post(
        f"{emu.imds_url}/metadata/identity/issuecredential?cred-api-version=2.0",
        data=body,
        headers={**METADATA, "Content-Type": content_type},
        timeout=10,
    )
    if accepted:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400
        assert response.json()["error_description"] == "Content-Type must be application/json"


# --- item: server_header fault -------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["getplatformmetadata", "issuecredential", "v1token"])
def test_server_header_fault_replaces_the_server_header_once(
    emu: Emulator, key: rsa.RSAPrivateKey, endpoint: str
) -> None:
    def call() -> requests.Response:
        if endpoint == "getplatformmetadata":
            return requests.get(f"{emu.imds_url}{METADATA_URL}", headers=METADATA, timeout=10)
        if endpoint == "issuecredential":
            return issue(emu, valid_csr(emu, key))
        return requests.get(
            f"{emu.imds_url}/metadata/identity/oauth2/token",
            params={"api-version": "2018-02-01", "resource": "https://x"},
            headers=METADATA,
            timeout=10,
        )

    emu.inject(endpoint, "server_header", value="nginx")
    faulted = call()
    assert faulted.status_code == 200
    assert faulted.headers["Server"] == "nginx"
    assert call().headers["Server"].startswith("IMDS/")


def test_server_header_fault_needs_a_value(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="value"):
        emu.inject("getplatformmetadata", "server_header")
    with pytest.raises(ValueError, match="does not apply"):
        emu.inject("token", "server_header", value="IMDS")
