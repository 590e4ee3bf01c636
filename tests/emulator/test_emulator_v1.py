"""MSI v1 token endpoint, raw and through azure-identity's ManagedIdentityCredential."""

from __future__ import annotations

import time

import pytest
import requests
from azure.identity import CredentialUnavailableError, ManagedIdentityCredential

from azure_msiv2_credential.emulator import Emulator

from ._helpers import METADATA

V1_PATH = "/metadata/identity/oauth2/token"


def v1(emu: Emulator, params: dict[str, str], headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(
        f"{emu.imds_url}{V1_PATH}", params=params, headers=METADATA if headers is None else headers, timeout=10
    )


def test_v1_token_shape(emu: Emulator) -> None:
    response = v1(emu, {"api-version": "2018-02-01", "resource": "https://vault.azure.net"})
    assert response.status_code == 200
    assert response.headers["Server"] == "IMDS/150.870.65.1854"
    body = response.json()
    assert set(body) == {
        "access_token",
        "client_id",
        "expires_in",
        "expires_on",
        "ext_expires_in",
        "not_before",
        "resource",
        "token_type",
    }
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == "3600"
    assert abs(int(body["expires_on"]) - (time.time() + 3600)) < 5
    assert body["resource"] == "https://vault.azure.net"
    assert body["client_id"] == emu.system_identity.client_id
    claims = emu.decode_token(body["access_token"])
    assert "cnf" not in claims
    assert claims["aud"] == "https://vault.azure.net"
    assert claims["oid"] == emu.system_identity.object_id
    assert emu.calls["v1token"] == 1


@pytest.mark.parametrize("selector", ["client_id", "object_id", "msi_res_id", "mi_res_id"])
def test_v1_selectors(emu: Emulator, selector: str) -> None:
    uami = emu.identities[1]
    value = uami.resource_id if selector.endswith("res_id") else getattr(uami, selector)
    body = v1(emu, {"api-version": "2018-02-01", "resource": "https://x", selector: value}).json()
    assert body["client_id"] == uami.client_id


@pytest.mark.parametrize(
    ("params", "headers", "description"),
    [
        ({"api-version": "2018-02-01", "resource": "https://x"}, {}, "Required metadata header not specified"),
        ({"resource": "https://x"}, None, "Required query variable 'api-version' is missing"),
        ({"api-version": "2018-02-01"}, None, "Required audience parameter not specified"),
        ({"api-version": "2018-02-01", "resource": "https://x", "client_id": "nobody"}, None, "Identity not found"),
    ],
)
def test_v1_errors(emu: Emulator, params: dict[str, str], headers: dict[str, str] | None, description: str) -> None:
    response = v1(emu, params, headers)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": description}


def test_v1_still_works_on_a_v1_only_host(emu: Emulator) -> None:
    emu.v1_only = True
    assert v1(emu, {"api-version": "2018-02-01", "resource": "https://x"}).status_code == 200


@pytest.fixture
def imds_env(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emu.imds_url)
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return emu


def test_azure_identity_managed_identity_credential_system_assigned(imds_env: Emulator) -> None:
    emu = imds_env
    with ManagedIdentityCredential() as credential:
        token = credential.get_token("https://vault.azure.net/.default")
    assert emu.decode_token(token.token)["appid"] == emu.system_identity.client_id
    assert abs(token.expires_on - (time.time() + 3600)) < 10
    assert emu.calls["v1token"] == 1


@pytest.mark.parametrize("how", ["client_id", "object_id", "resource_id"])
def test_azure_identity_managed_identity_credential_user_assigned(imds_env: Emulator, how: str) -> None:
    emu = imds_env
    uami = emu.identities[2]
    if how == "client_id":
        credential = ManagedIdentityCredential(client_id=uami.client_id)
    else:
        value = uami.object_id if how == "object_id" else uami.resource_id
        credential = ManagedIdentityCredential(identity_config={how: value})
    with credential:
        info = credential.get_token_info("https://storage.azure.com/.default")
    claims = emu.decode_token(info.token)
    assert claims["appid"] == uami.client_id
    assert claims["aud"] == "https://storage.azure.com"
    assert info.token_type == "Bearer"


def test_azure_identity_unknown_identity_is_unavailable(imds_env: Emulator) -> None:
    credential = ManagedIdentityCredential(client_id="00000000-0000-0000-0000-000000000000")
    with credential, pytest.raises(CredentialUnavailableError):
        credential.get_token("https://vault.azure.net/.default")
