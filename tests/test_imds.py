"""IMDS rules: identity selection, the authority variable, response validation and the retry rule."""

from __future__ import annotations

import json
import uuid

import pytest

from azure_msiv2_credential import _imds
from azure_msiv2_credential._errors import ErrorCode, MsiV2Error, MsiV2UnavailableError
from azure_msiv2_credential._imds import WireResponse

IMDS = {"Server": "IMDS/150.870.65.1854"}
METADATA = {
    "clientId": "c",
    "tenantId": "t",
    "cuId": {"vmId": "v"},
    "attestationEndpoint": "https://attest.example",
}


@pytest.mark.parametrize(
    ("client_id", "config", "query"),
    [
        (None, None, {}),
        ("cid", None, {"client_id": "cid"}),
        (None, {"client_id": "cid"}, {"client_id": "cid"}),
        (None, {"object_id": "oid"}, {"object_id": "oid"}),
        (None, {"resource_id": "/subscriptions/s/rg/x"}, {"mi_res_id": "/subscriptions/s/rg/x"}),
    ],
)
def test_selector_query(client_id: str | None, config: dict[str, str] | None, query: dict[str, str]) -> None:
    assert _imds.identity_selector(client_id, config).query == query


@pytest.mark.parametrize(
    ("client_id", "config", "message"),
    [
        ("a", {"object_id": "b"}, "at most one"),
        (None, {"msi_res_id": "x"}, "not supported"),
        (None, {"object_id": ""}, "non-empty"),
        (" ", None, "non-empty"),
        (None, {"resource_id": "not-an-arm-id"}, "ARM resource id"),
    ],
)
def test_selector_rejects_bad_input(client_id: str | None, config: dict[str, str] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _imds.identity_selector(client_id, config)


def test_metadata_url_uses_mi_res_id_and_api_version() -> None:
    selector = _imds.identity_selector(None, {"resource_id": "/subscriptions/s/x"})
    request = _imds.metadata_request("http://h:1", selector, "corr")
    assert request.url == (
        "http://h:1/metadata/identity/getplatformmetadata?cred-api-version=2.0&mi_res_id=%2Fsubscriptions%2Fs%2Fx"
    )
    assert dict(request.headers) == {"Metadata": "true", "x-ms-client-request-id": "corr"}


def test_issue_request_omits_attestation_when_absent() -> None:
    request = _imds.issue_credential_request("http://h", _imds.IdentitySelector(), "c", b"\x30\x00", None)
    assert json.loads(request.content) == {"csr": "MAA="}
    request = _imds.issue_credential_request("http://h", _imds.IdentitySelector(), "c", b"\x30\x00", "jwt")
    assert json.loads(request.content) == {"csr": "MAA=", "attestation_token": "jwt"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "http://169.254.169.254"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://[::1]:80", "http://[::1]:80"),
    ],
)
def test_authority(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv(_imds.AUTHORITY_ENV, value)
    assert _imds.imds_authority() == expected


@pytest.mark.parametrize(
    "value",
    [
        "ftp://h",
        "http://h/metadata/identity",
        "http://h?x=1",
        "not a url",
        "http://[::1",
        "http://h:99999",
        "http://h:abc",
        "http://user:secret@h",
    ],
)
def test_authority_rejects_paths_and_schemes(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(_imds.AUTHORITY_ENV, value)
    with pytest.raises(MsiV2Error) as info:
        _imds.imds_authority()
    assert info.value.error_code == ErrorCode.INVALID_REQUEST
    assert "secret" not in str(info.value)


def _response(status: int, body: object, headers: dict[str, str] | None = None) -> WireResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WireResponse(status, IMDS if headers is None else headers, raw)


def test_parse_metadata_ok() -> None:
    parsed = _imds.parse_metadata(_response(200, METADATA), "c")
    assert (parsed.client_id, parsed.tenant_id, parsed.cu_id) == ("c", "t", {"vmId": "v"})


@pytest.mark.parametrize(
    ("response", "error_type", "code"),
    [
        (_response(200, METADATA, headers={}), MsiV2UnavailableError, ErrorCode.UNAVAILABLE),
        (_response(404, {}), MsiV2UnavailableError, ErrorCode.UNAVAILABLE),
        (_response(400, {"error": "invalid_request"}), MsiV2Error, ErrorCode.IMDS_ERROR),
        (_response(200, b"<html>"), MsiV2Error, ErrorCode.IMDS_RESPONSE_INVALID),
        (_response(200, {**METADATA, "clientId": ""}), MsiV2Error, ErrorCode.IMDS_RESPONSE_INVALID),
        (_response(200, {**METADATA, "cuId": {}}), MsiV2Error, ErrorCode.IMDS_RESPONSE_INVALID),
        (_response(200, {**METADATA, "tenantId": "tenänt"}), MsiV2Error, ErrorCode.IMDS_RESPONSE_INVALID),
        (_response(200, {**METADATA, "attestationEndpoint": "http://x"}), MsiV2Error, ErrorCode.IMDS_RESPONSE_INVALID),
    ],
)
def test_parse_metadata_errors(response: WireResponse, error_type: type, code: str) -> None:
    with pytest.raises(error_type) as info:
        _imds.parse_metadata(response, "corr-id")
    assert info.value.error_code == code
    assert "corr-id" in str(info.value)


def test_attestation_required_is_specific() -> None:
    body = {
        "error": "invalid_request",
        "error_description": "Attestation Token is missing / empty in the issue credential request",
    }
    with pytest.raises(MsiV2Error) as info:
        _imds.parse_issued_credential(_response(400, body), "c")
    assert info.value.error_code == ErrorCode.ATTESTATION_REQUIRED
    assert "with_attestation_support=True" in str(info.value)


def test_issued_credential_requires_https_token_endpoint() -> None:
    body = {
        "client_id": "c",
        "tenant_id": "t",
        "certificate": "MAA=",
        "identity_type": "SystemAssigned",
        "mtls_authentication_endpoint": "http://login.example",
    }
    with pytest.raises(MsiV2Error, match="not an https URL"):
        _imds.parse_issued_credential(_response(200, body), "c")


# --- retry rule -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 400, 401, 403])
def test_no_retry_for_final_statuses(status: int) -> None:
    assert _imds.retry_delay(status, 1, 0.0, None) is None


@pytest.mark.parametrize("status", [404, 408, 429, 500, 503, 599])
def test_three_retries_about_1_2_4_seconds(status: int) -> None:
    delays = [_imds.retry_delay(status, attempt, 0.0, None) for attempt in (1, 2, 3, 4)]
    assert delays[3] is None
    for delay, nominal in zip(delays[:3], (1, 2, 4)):
        assert delay is not None and 0.8 * nominal <= delay <= 1.2 * nominal


def test_retry_after_is_honoured_up_to_a_cap() -> None:
    assert _imds.retry_delay(429, 1, 0.0, 7.0) == 7.0
    assert _imds.retry_delay(429, 1, 0.0, 3600.0) == _imds.RETRY_AFTER_CAP


def test_410_keeps_trying_for_at_least_70_seconds() -> None:
    elapsed, attempt = 0.0, 0
    while True:
        attempt += 1
        delay = _imds.retry_delay(410, attempt, elapsed, None)
        if delay is None:
            break
        assert delay <= _imds.GONE_MAX_INTERVAL
        elapsed += delay
    assert elapsed >= _imds.GONE_MIN_TOTAL
    assert elapsed < _imds.GONE_MIN_TOTAL + _imds.GONE_MAX_INTERVAL


def test_retry_policy_on_a_real_pipeline(emulator) -> None:  # type: ignore[no-untyped-def]
    from azure.core.pipeline import Pipeline
    from azure.core.pipeline.transport import RequestsTransport

    slept: list[float] = []
    emulator.inject("getplatformmetadata", "status", count=2, status=503)
    request = _imds.metadata_request(emulator.imds_url, _imds.IdentitySelector(), str(uuid.uuid4()))
    with Pipeline(RequestsTransport(), policies=[_imds.ImdsRetryPolicy(sleep=slept.append)]) as pipeline:
        response = pipeline.run(request).http_response
        assert response.status_code == 200
        assert len(slept) == 2 and emulator.calls["getplatformmetadata"] == 3
        # The chain probe: no IMDS (404, or no IMDS Server header) gives up at once ...
        for fault, params, status in (("status", {"status": 404}, 404), ("no_server_header", {}, 200)):
            emulator.inject("getplatformmetadata", fault, count=1, **params)
            probe = _imds.call_options(probe=True)
            response = pipeline.run(
                _imds.metadata_request(emulator.imds_url, _imds.IdentitySelector(), str(uuid.uuid4())), **probe
            )
            assert response.http_response.status_code == status and len(slept) == 2
        # ... while a probe that reaches a busy IMDS retries by the usual rule.
        emulator.inject("getplatformmetadata", "status", count=1, status=503)
        probe = _imds.call_options(probe=True)
        response = pipeline.run(
            _imds.metadata_request(emulator.imds_url, _imds.IdentitySelector(), str(uuid.uuid4())), **probe
        )
        assert response.http_response.status_code == 200 and len(slept) == 3


def test_probe_request_has_no_metadata_header(emulator) -> None:  # type: ignore[no-untyped-def]
    import requests

    request = _imds.probe_request(emulator.imds_url)
    assert "Metadata" not in request.headers
    assert requests.get(request.url, timeout=5).status_code == 400
