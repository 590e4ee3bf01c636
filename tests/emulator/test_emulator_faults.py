"""Fault injection: every fault on every endpoint it applies to, FIFO order, counting."""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from azure_msiv2_credential.emulator import Emulator

from ._helpers import METADATA, Minted, issue, token_request, valid_csr, wait_for, write_pair

Caller = Callable[[], requests.Response]


@pytest.fixture
def call(
    emu: Emulator, key: rsa.RSAPrivateKey, mint: Callable[..., Minted], pop: Callable[..., tuple[Minted, str]]
) -> Callable[[str], Caller]:
    """A zero-argument caller per endpoint; certificates and tokens are prepared before faults are injected."""

    def _call(endpoint: str) -> Caller:
        if endpoint == "getplatformmetadata":
            return lambda: requests.get(
                f"{emu.imds_url}/metadata/identity/getplatformmetadata?cred-api-version=2.0",
                headers=METADATA,
                timeout=10,
            )
        if endpoint == "issuecredential":
            csr_der = valid_csr(emu, key)
            return lambda: issue(emu, csr_der)
        if endpoint == "v1token":
            return lambda: requests.get(
                f"{emu.imds_url}/metadata/identity/oauth2/token",
                params={"api-version": "2018-02-01", "resource": "https://x"},
                headers=METADATA,
                timeout=10,
            )
        if endpoint == "token":
            minted = mint()
            return lambda: token_request(emu, minted.cert, client_id=minted.identity.client_id)
        minted, token = pop()
        return lambda: requests.get(
            f"{emu.resource_url}/secrets/demo-secret?api-version=7.5",
            headers={"Authorization": f"mtls_pop {token}", "x-ms-tokenboundauth": "true"},
            cert=minted.cert,
            verify=emu.ca_bundle_path,
            timeout=10,
        )

    return _call


ALL = ["getplatformmetadata", "issuecredential", "v1token", "token", "resource"]
IMDS = ["getplatformmetadata", "issuecredential", "v1token"]


@pytest.mark.parametrize("endpoint", ALL)
def test_status_fault(emu: Emulator, call: Callable[[str], Caller], endpoint: str) -> None:
    caller = call(endpoint)
    emu.reset_calls()
    emu.inject(endpoint, "status", status=503)
    failed = caller()
    assert failed.status_code == 503
    assert failed.json()["error"] == "injected_fault"
    assert caller().status_code == 200  # consumed by one call
    assert emu.calls[endpoint] == 2


def test_status_fault_with_body_and_headers(emu: Emulator, call: Callable[[str], Caller]) -> None:
    caller = call("getplatformmetadata")
    emu.inject("getplatformmetadata", "status", status=410, body="gone for an upgrade", headers={"Retry-After": "7"})
    response = caller()
    assert response.status_code == 410
    assert response.text == "gone for an upgrade"
    assert response.headers["Retry-After"] == "7"
    assert response.headers["Server"] == "IMDS/150.870.65.1854"


@pytest.mark.parametrize("endpoint", ALL)
def test_malformed_fault(emu: Emulator, call: Callable[[str], Caller], endpoint: str) -> None:
    caller = call(endpoint)
    emu.inject(endpoint, "malformed")
    response = caller()
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert caller().json()


@pytest.mark.parametrize("endpoint", ["getplatformmetadata", "token"])
def test_delay_fault(emu: Emulator, call: Callable[[str], Caller], endpoint: str) -> None:
    caller = call(endpoint)
    emu.inject(endpoint, "delay", seconds=0.3)
    started = time.monotonic()
    assert caller().status_code == 200
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("endpoint", IMDS)
def test_no_server_header_fault(emu: Emulator, call: Callable[[str], Caller], endpoint: str) -> None:
    caller = call(endpoint)
    emu.inject(endpoint, "no_server_header")
    response = caller()
    assert response.status_code == 200
    assert "Server" not in response.headers
    assert caller().headers["Server"] == "IMDS/150.870.65.1854"


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [
        ("getplatformmetadata", "attestationEndpoint"),
        ("getplatformmetadata", "cuId"),
        ("issuecredential", "certificate"),
    ],
)
def test_missing_field_fault(emu: Emulator, call: Callable[[str], Caller], endpoint: str, field: str) -> None:
    caller = call(endpoint)
    emu.inject(endpoint, "missing_field", field=field)
    body = caller().json()
    assert field not in body
    assert len(body) >= 3
    assert field in caller().json()


def _certificate(response: requests.Response) -> x509.Certificate:
    return x509.load_der_x509_certificate(base64.b64decode(response.json()["certificate"]))


def test_foreign_key_cert_fault(emu: Emulator, call: Callable[[str], Caller], key: rsa.RSAPrivateKey) -> None:
    caller = call("issuecredential")
    emu.inject("issuecredential", "foreign_key_cert")
    cert = _certificate(caller())
    assert cert.public_key() != key.public_key()
    assert cert.issuer == emu.ca_certificate.subject
    assert _certificate(caller()).public_key() == key.public_key()


def test_expired_cert_fault_and_the_token_service_refuses_it(
    emu: Emulator, call: Callable[[str], Caller], key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    caller = call("issuecredential")
    emu.inject("issuecredential", "expired_cert")
    cert = _certificate(caller())
    assert cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc)
    with pytest.raises(requests.exceptions.ConnectionError):
        token_request(emu, write_pair(tmp_path, "expired", cert, key), client_id=emu.system_identity.client_id)
    assert wait_for(lambda: emu.tls_rejections["token"] == 1)


def test_bearer_fault(emu: Emulator, call: Callable[[str], Caller]) -> None:
    caller = call("token")
    emu.inject("token", "bearer")
    assert caller().json()["token_type"] == "Bearer"
    assert caller().json()["token_type"] == "mtls_pop"


def test_wrong_cnf_fault_and_the_resource_refuses_it(emu: Emulator, mint: Callable[..., Minted]) -> None:
    minted = mint()
    emu.inject("token", "wrong_cnf")
    token = token_request(emu, minted.cert, client_id=minted.identity.client_id).json()["access_token"]
    claims = emu.decode_token(token)
    good = emu.decode_token(token_request(emu, minted.cert, client_id=minted.identity.client_id).json()["access_token"])
    assert claims["cnf"] != good["cnf"]
    response = requests.get(
        f"{emu.resource_url}/secrets/demo-secret?api-version=7.5",
        headers={"Authorization": f"mtls_pop {token}"},
        cert=minted.cert,
        verify=emu.ca_bundle_path,
        timeout=10,
    )
    assert response.status_code == 401


def test_invalid_client_fault(emu: Emulator, call: Callable[[str], Caller]) -> None:
    caller = call("token")
    emu.inject("token", "invalid_client", count=2)
    for _ in range(2):
        response = caller()
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_client"
    assert caller().status_code == 200


def test_faults_apply_in_fifo_order(emu: Emulator, call: Callable[[str], Caller]) -> None:
    caller = call("getplatformmetadata")
    emu.inject("getplatformmetadata", "status", status=500)
    emu.inject("getplatformmetadata", "status", count=2, status=429)
    emu.inject("getplatformmetadata", "no_server_header")
    assert [caller().status_code for _ in range(3)] == [500, 429, 429]
    last = caller()
    assert last.status_code == 200 and "Server" not in last.headers
    assert caller().headers["Server"] == "IMDS/150.870.65.1854"
    assert emu.calls["getplatformmetadata"] == 5


def test_faults_are_per_endpoint_and_clearable(emu: Emulator, call: Callable[[str], Caller]) -> None:
    metadata = call("getplatformmetadata")
    v1 = call("v1token")
    emu.inject("v1token", "status", status=500)
    assert metadata().status_code == 200
    emu.clear_faults()
    assert v1().status_code == 200


@pytest.mark.parametrize(
    ("endpoint", "fault", "params", "message"),
    [
        ("nowhere", "status", {"status": 500}, "unknown endpoint"),
        ("token", "no_server_header", {}, "does not apply"),
        ("resource", "wrong_cnf", {}, "does not apply"),
        ("getplatformmetadata", "foreign_key_cert", {}, "does not apply"),
        ("token", "status", {}, "needs parameter"),
        ("token", "delay", {}, "needs parameter"),
        ("issuecredential", "missing_field", {}, "needs parameter"),
    ],
)
def test_inject_validates_its_arguments(
    emu: Emulator, endpoint: str, fault: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        emu.inject(endpoint, fault, **params)


def test_inject_needs_a_positive_count(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="count"):
        emu.inject("token", "bearer", count=0)


def test_calls_count_every_endpoint_and_reset(emu: Emulator, call: Callable[[str], Caller]) -> None:
    callers = {endpoint: call(endpoint) for endpoint in ALL}
    emu.reset_calls()
    for endpoint in ALL:
        callers[endpoint]()
    assert emu.calls == {endpoint: 1 for endpoint in ALL}
    emu.reset_calls()
    assert sum(emu.calls.values()) == 0


def test_a_delayed_call_does_not_block_others(emu: Emulator, call: Callable[[str], Caller]) -> None:
    caller = call("getplatformmetadata")
    emu.inject("getplatformmetadata", "delay", seconds=1)
    finished: list[str] = []
    slow = threading.Thread(target=lambda: (caller(), finished.append("slow")))
    slow.start()
    assert wait_for(lambda: emu.calls["getplatformmetadata"] == 1)
    assert caller().status_code == 200
    finished.append("fast")
    slow.join(10)
    assert finished == ["fast", "slow"]
