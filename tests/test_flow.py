"""The seven MSI v2 steps end to end against the emulator: selectors, and each fault's error and code."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest
from azure.identity import CredentialUnavailableError

from azure_msiv2_credential import MsiV2Error, MsiV2UnavailableError
from azure_msiv2_credential._errors import ErrorCode
from azure_msiv2_credential.emulator import Emulator

from ._factories import sync_credential, v2_options

LONG_BASE64 = re.compile(r"[A-Za-z0-9+/_=-]{120,}")


def _scope(emu: Emulator) -> str:
    return f"{emu.resource_url}/.default"


def _assert_no_secrets(text: str) -> None:
    assert "eyJ" not in text, "a JWT leaked"
    assert not LONG_BASE64.search(text), "a long base64 blob (token, CSR or certificate) leaked"


@pytest.mark.parametrize("selector", ["system", "client_id", "object_id", "resource_id"])
def test_each_identity_selector(emulator: Emulator, selector: str) -> None:
    user = next(i for i in emulator.identities if not i.system_assigned)
    kwargs: dict[str, Any] = {
        "system": {},
        "client_id": {"client_id": user.client_id},
        "object_id": {"identity_config": {"object_id": user.object_id}},
        "resource_id": {"identity_config": {"resource_id": user.resource_id}},
    }[selector]
    expected = emulator.system_identity.client_id if selector == "system" else user.client_id
    with sync_credential(emulator, **kwargs) as credential:
        info = credential.get_token_info(_scope(emulator))
        binding = credential.binding_registry.lookup(info.token)
    assert info.token_type == "mtls_pop"
    assert binding is not None and binding.client_id == expected
    assert binding.certificate.subject.rfc4514_string().endswith(f"CN={expected}")
    assert dict(emulator.calls) == {"getplatformmetadata": 1, "issuecredential": 1, "token": 1}


FAULTS: list[tuple[str, str, dict[str, Any], int, type, str]] = [
    # endpoint, fault, params, count, error type, error code
    ("getplatformmetadata", "status", {"status": 400}, 1, MsiV2Error, ErrorCode.IMDS_ERROR),
    ("getplatformmetadata", "status", {"status": 404}, 9, MsiV2UnavailableError, ErrorCode.UNAVAILABLE),
    ("getplatformmetadata", "status", {"status": 500}, 9, MsiV2Error, ErrorCode.IMDS_ERROR),
    ("getplatformmetadata", "malformed", {}, 1, MsiV2Error, ErrorCode.IMDS_RESPONSE_INVALID),
    ("getplatformmetadata", "no_server_header", {}, 1, MsiV2UnavailableError, ErrorCode.UNAVAILABLE),
    ("getplatformmetadata", "missing_field", {"field": "tenantId"}, 1, MsiV2Error, ErrorCode.IMDS_RESPONSE_INVALID),
    ("issuecredential", "status", {"status": 400}, 1, MsiV2Error, ErrorCode.IMDS_ERROR),
    ("issuecredential", "status", {"status": 503}, 9, MsiV2Error, ErrorCode.IMDS_ERROR),
    ("issuecredential", "malformed", {}, 1, MsiV2Error, ErrorCode.IMDS_RESPONSE_INVALID),
    ("issuecredential", "no_server_header", {}, 1, MsiV2Error, ErrorCode.IMDS_RESPONSE_INVALID),
    ("issuecredential", "missing_field", {"field": "certificate"}, 1, MsiV2Error, ErrorCode.IMDS_RESPONSE_INVALID),
    ("issuecredential", "foreign_key_cert", {}, 1, MsiV2Error, ErrorCode.CERTIFICATE_INVALID),
    ("issuecredential", "expired_cert", {}, 1, MsiV2Error, ErrorCode.CERTIFICATE_INVALID),
    ("token", "bearer", {}, 1, MsiV2Error, ErrorCode.TOKEN_RESPONSE_INVALID),
    ("token", "wrong_cnf", {}, 1, MsiV2Error, ErrorCode.TOKEN_BINDING_MISMATCH),
    ("token", "malformed", {}, 1, MsiV2Error, ErrorCode.TOKEN_RESPONSE_INVALID),
    ("token", "status", {"status": 500}, 2, MsiV2Error, ErrorCode.TOKEN_REQUEST_FAILED),
    ("token", "invalid_client", {}, 2, MsiV2Error, ErrorCode.TOKEN_REQUEST_FAILED),
]


@pytest.mark.parametrize(("endpoint", "fault", "params", "count", "error_type", "code"), FAULTS)
def test_fault_yields_documented_error(
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    endpoint: str,
    fault: str,
    params: dict[str, Any],
    count: int,
    error_type: type,
    code: str,
) -> None:
    emulator.inject(endpoint, fault, count=count, **params)
    caplog.set_level(logging.DEBUG)
    with sync_credential(emulator) as credential, pytest.raises(error_type) as info:
        credential.get_token_info(_scope(emulator))
    _assert_documented(info.value, error_type, code)
    _assert_no_secrets(caplog.text)
    assert any(r.levelno == logging.WARNING and info.value.correlation_id in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("endpoint", "fault", "params", "count", "error_type", "code"), FAULTS)
async def test_fault_yields_documented_error_async(
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    endpoint: str,
    fault: str,
    params: dict[str, Any],
    count: int,
    error_type: type,
    code: str,
) -> None:
    from azure_msiv2_credential.aio import MsiV2ManagedIdentityCredential as AsyncCredential

    async def no_sleep(_: float) -> None:
        """Retries at once: the retry rule has its own tests."""

    emulator.inject(endpoint, fault, count=count, **params)
    caplog.set_level(logging.DEBUG)
    async with AsyncCredential(**v2_options(emulator, _sleep=no_sleep)) as credential:
        with pytest.raises(error_type) as info:
            await credential.get_token_info(_scope(emulator))
    _assert_documented(info.value, error_type, code)
    _assert_no_secrets(caplog.text)


def _assert_documented(error: Any, error_type: type, code: str) -> None:
    """The documented code, the unavailable/failed split (DESIGN.md §2), a correlation id, no secrets."""
    assert isinstance(error, error_type)
    assert isinstance(error, CredentialUnavailableError) is (error_type is MsiV2UnavailableError)
    assert error.error_code == code, str(error)
    assert error.correlation_id and error.correlation_id in str(error)
    _assert_no_secrets(str(error))


def test_attestation_required_by_host(emulator: Emulator) -> None:
    emulator.require_attestation = True
    with sync_credential(emulator) as credential, pytest.raises(MsiV2Error) as info:
        credential.get_token_info(_scope(emulator))
    assert info.value.error_code == ErrorCode.ATTESTATION_REQUIRED


def test_transient_failures_are_retried(emulator: Emulator) -> None:
    emulator.inject("getplatformmetadata", "status", count=3, status=429)
    emulator.inject("issuecredential", "status", count=1, status=500)
    emulator.inject("token", "status", count=1, status=502)
    with sync_credential(emulator) as credential:
        assert credential.get_token_info(_scope(emulator)).token_type == "mtls_pop"
    assert dict(emulator.calls) == {"getplatformmetadata": 4, "issuecredential": 2, "token": 2}


def test_invalid_client_once_remints_and_retries_once(emulator: Emulator) -> None:
    emulator.inject("token", "invalid_client", count=1)
    with sync_credential(emulator) as credential:
        info = credential.get_token_info(_scope(emulator))
        binding = credential.binding_registry.lookup(info.token)
    assert binding is not None and binding.certificate == emulator.issued_certificates[-1]
    assert emulator.calls["issuecredential"] == 2 and emulator.calls["token"] == 2


def test_imds_unreachable_is_unavailable(monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{port}")
    with sync_credential(emulator) as credential, pytest.raises(MsiV2UnavailableError) as info:
        credential.get_token_info(_scope(emulator))
    assert "did not answer" in str(info.value)


def test_kill_switch(monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> None:
    monkeypatch.setenv("MSAL_MI_DISABLE_IMDS_V2", "true")
    with sync_credential(emulator) as credential, pytest.raises(MsiV2UnavailableError) as info:
        credential.get_token_info(_scope(emulator))
    assert info.value.error_code == ErrorCode.DISABLED
    assert "MSAL_MI_DISABLE_IMDS_V2" in str(info.value)
    assert sum(emulator.calls.values()) == 0


def test_no_key_provider_off_windows_is_unavailable(emulator: Emulator) -> None:
    with sync_credential(emulator, key_provider=None) as credential, pytest.raises(MsiV2UnavailableError) as info:
        credential.get_token_info(_scope(emulator))
    assert info.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE
    assert "SoftwareKeyProvider" in str(info.value)


def test_minimum_strength_fails_before_issuecredential(emulator: Emulator) -> None:
    with (
        sync_credential(emulator, minimum_binding_strength="keyguard") as credential,
        pytest.raises(MsiV2Error) as info,
    ):
        credential.get_token_info(_scope(emulator))
    assert info.value.error_code == ErrorCode.BINDING_STRENGTH_UNMET
    assert emulator.calls["issuecredential"] == 0


def test_connection_verify_false_is_refused(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="never switches TLS verification off"):
        sync_credential(emulator, connection_verify=False)


def test_untrusted_token_service_is_reported_not_reminted(emulator: Emulator) -> None:
    # The default trust store does not know the emulator's private CA: the server-certificate failure is
    # named (with the fix) and is not mistaken for our certificate being refused, so nothing is re-minted.
    with sync_credential(emulator, connection_verify=True) as credential, pytest.raises(MsiV2Error) as info:
        credential.get_token_info(_scope(emulator))
    assert info.value.error_code == ErrorCode.TOKEN_REQUEST_FAILED
    assert "did not verify" in str(info.value) and "connection_verify" in str(info.value)
    assert emulator.calls["issuecredential"] == 1 and emulator.calls["token"] == 0


def test_token_leg_has_its_own_timeout(emulator: Emulator) -> None:
    emulator.inject("token", "delay", seconds=5)
    started = time.monotonic()
    with sync_credential(emulator, read_timeout=0.5) as credential, pytest.raises(MsiV2Error) as info:
        credential.get_token_info(_scope(emulator))
    assert info.value.error_code == ErrorCode.TOKEN_REQUEST_FAILED
    assert time.monotonic() - started < 4


def test_imds_never_goes_through_a_proxy(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    with sync_credential(emulator) as credential:
        assert credential.get_token_info(_scope(emulator)).token_type == "mtls_pop"


def test_v1_only_verdict_is_remembered(emulator: Emulator) -> None:
    emulator.v1_only = True
    with sync_credential(emulator) as credential:
        for _ in range(2):
            with pytest.raises(MsiV2UnavailableError):
                credential.get_token_info(_scope(emulator))
    assert emulator.calls["getplatformmetadata"] == 4  # one call with its 3 retries, then remembered


def test_closed_credential_says_so(emulator: Emulator) -> None:
    credential = sync_credential(emulator)
    credential.close()
    with pytest.raises(MsiV2Error, match="closed"):
        credential.get_token_info(_scope(emulator))
    assert sum(emulator.calls.values()) == 0


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"identity_config": "object_id=x"}, TypeError),
        ({"key_provider": "software"}, TypeError),
        ({"mtls_proof_of_possession": "false"}, TypeError),
        ({"minimum_binding_strength": "hardware"}, ValueError),
    ],
)
def test_bad_options_fail_in_the_constructor(emulator: Emulator, options: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        sync_credential(emulator, **options)


def test_bad_scope_types_are_value_errors(emulator: Emulator) -> None:
    with sync_credential(emulator) as credential:
        for scopes in ((["https://vault.azure.net"],), (), ("a", "b"), ("",), ("https://x/.default/.default",)):
            with pytest.raises(ValueError):
                credential.get_token(*scopes)  # type: ignore[arg-type]
    assert sum(emulator.calls.values()) == 0
