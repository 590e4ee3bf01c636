"""Token-leg parsing and classification rules (PROTOCOL.md §6), unit by unit."""

from __future__ import annotations

import json
import ssl
from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError

from azure_msiv2_credential._errors import ErrorCode, MsiV2Error
from azure_msiv2_credential._imds import WireResponse
from azure_msiv2_credential._lifetimes import TOKEN_EXPIRY_SKEW
from azure_msiv2_credential._token_leg import parse_token_response, tls_failure, token_endpoint

BINDING: Any = SimpleNamespace(thumbprint="abc", token_endpoint="https://login.example/t/oauth2/v2.0/token")


def _response(body: dict[str, Any], status: int = 200) -> WireResponse:
    return WireResponse(status, {}, json.dumps(body).encode())


@pytest.mark.parametrize(
    "raw_expires_in",
    [
        "NaN",
        "Infinity",
        '"NaN"',
        "1e400",
        "1" + "0" * 400,
        "true",
        "-5",
        "0",
        str(int(TOKEN_EXPIRY_SKEW)),
        '"x"',
        "null",
    ],
)
def test_expires_in_must_be_a_finite_usable_number(raw_expires_in: str) -> None:
    raw = '{"access_token": "not-a-jwt", "token_type": "mtls_pop", "expires_in": ' + raw_expires_in + "}"
    with pytest.raises(MsiV2Error) as info:
        parse_token_response(WireResponse(200, {}, raw.encode()), BINDING, "c")
    assert info.value.error_code == ErrorCode.TOKEN_RESPONSE_INVALID


@pytest.mark.parametrize("expires_in", [3600, "3600", 3600.5, " 60 ", TOKEN_EXPIRY_SKEW + 1])
def test_expires_in_number_or_numeric_string(expires_in: Any) -> None:
    body = {"access_token": "not-a-jwt", "token_type": "MTLS_POP", "expires_in": expires_in, "refresh_in": "1800"}
    parsed = parse_token_response(_response(body), BINDING, "c")
    assert parsed.expires_in == float(str(expires_in).strip()) and parsed.refresh_in == 1800
    assert "not-a-jwt" not in repr(parsed)


def test_tenant_is_one_path_segment() -> None:
    assert token_endpoint("https://mtls.example/", "evil.com?x=/") == (
        "https://mtls.example/evil.com%3Fx%3D%2F/oauth2/v2.0/token"
    )


def _wrapped(cause: BaseException) -> ServiceRequestError:
    try:
        raise ServiceRequestError("connection failed", error=cause) from cause
    except ServiceRequestError as error:
        return error


def test_server_certificate_failure_is_not_a_rejected_client_certificate() -> None:
    failure = tls_failure(_wrapped(ssl.SSLCertVerificationError(1, "certificate verify failed")))
    assert failure is not None and failure.server_unverified


def test_handshake_failure_may_be_our_certificate() -> None:
    failure = tls_failure(_wrapped(ssl.SSLError(1, "tlsv13 alert certificate required")))
    assert failure is not None and not failure.server_unverified


def test_connection_refused_is_not_tls() -> None:
    assert tls_failure(_wrapped(ConnectionRefusedError(111, "refused"))) is None
