"""End to end against the stricter emulator: TLS rejection on the token leg, correlation ids, the Server check."""

from __future__ import annotations

import os
import uuid

import pytest

from azure_msiv2_credential import MsiV2Error, MsiV2ManagedIdentityCredential
from azure_msiv2_credential._errors import ErrorCode
from azure_msiv2_credential.aio import MsiV2ManagedIdentityCredential as AsyncMsiV2ManagedIdentityCredential
from azure_msiv2_credential.emulator import Emulator

from ._factories import v2_options
from .conftest import AMBIENT_IDENTITY_VARIABLES


def _scope(emu: Emulator) -> str:
    return f"{emu.resource_url}/.default"


# --- the token service rejects the client certificate during the TLS handshake (PROTOCOL §6) ------


def test_one_tls_rejection_re_mints_once_and_succeeds(emulator: Emulator) -> None:
    emulator.inject("token", "reject_handshake", count=1)
    with MsiV2ManagedIdentityCredential(**v2_options(emulator)) as credential:
        info = credential.get_token_info(_scope(emulator))
    assert info.token_type == "mtls_pop"
    assert emulator.tls_rejections["token"] == 1
    assert emulator.calls["issuecredential"] == 2
    assert emulator.calls["token"] == 1


def test_two_tls_rejections_fail_after_one_re_mint(emulator: Emulator) -> None:
    emulator.inject("token", "reject_handshake", count=2)
    with MsiV2ManagedIdentityCredential(**v2_options(emulator)) as credential, pytest.raises(MsiV2Error) as info:
        credential.get_token_info(_scope(emulator))
    assert info.value.error_code == ErrorCode.TOKEN_REQUEST_FAILED == "MSI_V2_TOKEN_REQUEST_FAILED"
    assert emulator.tls_rejections["token"] == 2
    assert emulator.calls["issuecredential"] == 2
    assert emulator.calls["token"] == 0


async def test_one_tls_rejection_re_mints_once_and_succeeds_async(emulator: Emulator) -> None:
    emulator.inject("token", "reject_handshake", count=1)
    async with AsyncMsiV2ManagedIdentityCredential(**v2_options(emulator, _sleep=None)) as credential:
        info = await credential.get_token_info(_scope(emulator))
    assert info.token_type == "mtls_pop"
    assert emulator.tls_rejections["token"] == 1
    assert emulator.calls["issuecredential"] == 2
    assert emulator.calls["token"] == 1


async def test_two_tls_rejections_fail_after_one_re_mint_async(emulator: Emulator) -> None:
    emulator.inject("token", "reject_handshake", count=2)
    async with AsyncMsiV2ManagedIdentityCredential(**v2_options(emulator, _sleep=None)) as credential:
        with pytest.raises(MsiV2Error) as info:
            await credential.get_token_info(_scope(emulator))
    assert info.value.error_code == ErrorCode.TOKEN_REQUEST_FAILED == "MSI_V2_TOKEN_REQUEST_FAILED"
    assert emulator.tls_rejections["token"] == 2
    assert emulator.calls["issuecredential"] == 2
    assert emulator.calls["token"] == 0


# --- one fresh correlation id per acquisition, shared by its IMDS calls (PROTOCOL §1) -------------


def _ids_of_one_acquisition(emulator: Emulator) -> str:
    endpoints = [endpoint for endpoint, _ in emulator.imds_requests]
    assert endpoints == ["getplatformmetadata", "issuecredential"]
    ids = {request_id for _, request_id in emulator.imds_requests}
    assert len(ids) == 1
    (request_id,) = ids
    assert request_id is not None
    assert str(uuid.UUID(request_id)) == request_id.lower()
    return request_id


def test_one_uuid_per_acquisition_for_both_imds_calls(emulator: Emulator) -> None:
    with MsiV2ManagedIdentityCredential(**v2_options(emulator)) as credential:
        credential.get_token_info(_scope(emulator))
    first = _ids_of_one_acquisition(emulator)
    emulator.imds_requests.clear()
    with MsiV2ManagedIdentityCredential(**v2_options(emulator)) as credential:  # cold: a new credential
        credential.get_token_info(_scope(emulator))
    second = _ids_of_one_acquisition(emulator)
    assert first != second


async def test_one_uuid_per_acquisition_for_both_imds_calls_async(emulator: Emulator) -> None:
    async with AsyncMsiV2ManagedIdentityCredential(**v2_options(emulator, _sleep=None)) as credential:
        await credential.get_token_info(_scope(emulator))
    first = _ids_of_one_acquisition(emulator)
    emulator.imds_requests.clear()
    async with AsyncMsiV2ManagedIdentityCredential(**v2_options(emulator, _sleep=None)) as credential:
        await credential.get_token_info(_scope(emulator))
    second = _ids_of_one_acquisition(emulator)
    assert first != second


# --- the Server header check is a case-insensitive "contains IMDS" (PROTOCOL §1) -----------------


@pytest.mark.parametrize("endpoint", ["getplatformmetadata", "issuecredential"])
@pytest.mark.parametrize("value", ["imds", "Imds/1.0", "not-really-IMDS-but-contains-it"])
def test_server_header_containing_imds_in_any_case_is_accepted(emulator: Emulator, endpoint: str, value: str) -> None:
    emulator.inject(endpoint, "server_header", value=value)
    with MsiV2ManagedIdentityCredential(**v2_options(emulator)) as credential:
        info = credential.get_token_info(_scope(emulator))
    assert info.token_type == "mtls_pop"
    assert emulator.calls[endpoint] == 1


@pytest.mark.parametrize("endpoint", ["getplatformmetadata", "issuecredential"])
@pytest.mark.parametrize("value", ["nginx", "IMD", "Microsoft-IIS/10.0"])
def test_server_header_without_imds_is_not_imds(emulator: Emulator, endpoint: str, value: str) -> None:
    emulator.inject(endpoint, "server_header", value=value)
    with MsiV2ManagedIdentityCredential(**v2_options(emulator)) as credential, pytest.raises(MsiV2Error) as info:
        credential.get_token_info(_scope(emulator))
    expected = ErrorCode.UNAVAILABLE if endpoint == "getplatformmetadata" else ErrorCode.IMDS_RESPONSE_INVALID
    assert info.value.error_code == expected, str(info.value)
    assert emulator.calls["token"] == 0


# --- the suite never inherits an ambient identity configuration -----------------------------------


def test_ambient_workload_identity_variables_are_removed() -> None:
    for name in ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_AUTHORITY_HOST"):
        assert name in AMBIENT_IDENTITY_VARIABLES
    assert not [name for name in AMBIENT_IDENTITY_VARIABLES if name in os.environ]
