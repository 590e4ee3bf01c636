"""The token-bound resource: challenge, binding check, Key Vault and Blob shapes (raw and via the SDKs)."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.keyvault.secrets import SecretClient
from azure.storage.blob import BlobServiceClient
from cryptography.hazmat.primitives import serialization

from azure_msiv2_credential.emulator import Emulator

from ._helpers import METADATA, Minted, token_request

POP_HEADERS = {"x-ms-tokenboundauth": "true"}


def get(
    emu: Emulator,
    path: str,
    cert: tuple[str, str] | None = None,
    token: str | None = None,
    scheme: str = "mtls_pop",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    token_bound_auth: bool = True,
) -> requests.Response:
    """A raw request; a token on a Key Vault path goes with ``x-ms-tokenboundauth: true`` unless told not to."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"{scheme} {token}"
        if token_bound_auth and path.startswith("/secrets"):
            all_headers.setdefault("x-ms-tokenboundauth", "true")
    return requests.request(
        method, f"{emu.resource_url}{path}", headers=all_headers, cert=cert, verify=emu.ca_bundle_path, timeout=10
    )


def x5t_s256(minted: Minted) -> str:
    digest = hashlib.sha256(minted.certificate.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# --- challenge and binding ---------------------------------------------------------------------


def test_unauthenticated_request_gets_a_key_vault_challenge(emu: Emulator) -> None:
    response = get(emu, "/secrets/demo-secret?api-version=7.5")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer authorization="https://login.microsoftonline.com/{emu.tenant_id}", resource="{emu.resource_url}"'
    )
    assert response.json()["error"]["code"] == "Unauthorized"
    assert response.headers["x-ms-request-id"]
    last = emu.last_resource_request
    assert last is not None
    assert (last.status, last.auth_scheme, last.cert_thumbprint, last.token_bound_auth) == (401, None, None, False)
    assert last.path == "/secrets/demo-secret"


def test_bound_token_with_its_certificate_reads_the_secret(
    emu: Emulator, pop: Callable[..., tuple[Minted, str]]
) -> None:
    minted, token = pop()
    response = get(emu, "/secrets/demo-secret?api-version=7.5", minted.cert, token, headers=POP_HEADERS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["value"] == "hello from the token-bound resource"
    assert re.fullmatch(re.escape(f"{emu.resource_url}/secrets/demo-secret/") + "[0-9a-f]{32}", body["id"])
    attributes = body["attributes"]
    assert attributes["enabled"] is True
    assert isinstance(attributes["created"], int) and isinstance(attributes["updated"], int)
    assert attributes["recoveryLevel"] == "Recoverable+Purgeable"
    assert response.headers["x-ms-request-id"]
    last = emu.last_resource_request
    assert last is not None
    assert last.status == 200
    assert last.auth_scheme == "mtls_pop"
    assert last.cert_thumbprint == x5t_s256(minted)
    assert last.token_bound_auth is True

    version = body["id"].rsplit("/", 1)[1]
    assert get(emu, f"/secrets/demo-secret/{version}?api-version=7.5", minted.cert, token).json() == body
    assert emu.calls["resource"] == 2


def test_token_presented_with_another_certificate_is_rejected(
    emu: Emulator, pop: Callable[..., tuple[Minted, str]], mint: Callable[..., Minted], other_key: Any
) -> None:
    _, token = pop()
    other = mint(private_key=other_key)  # a genuine certificate from the same CA, same identity
    response = get(emu, "/secrets/demo-secret?api-version=7.5", other.cert, token)
    assert response.status_code == 401
    assert "different certificate" in response.json()["error"]["message"]
    assert emu.last_resource_request is not None
    assert emu.last_resource_request.cert_thumbprint == x5t_s256(other)


def test_token_without_a_certificate_is_rejected(emu: Emulator, pop: Callable[..., tuple[Minted, str]]) -> None:
    _, token = pop()
    response = get(emu, "/secrets/demo-secret?api-version=7.5", None, token)
    assert response.status_code == 401
    assert "no client certificate" in response.json()["error"]["message"]


def test_bearer_scheme_is_rejected(emu: Emulator, pop: Callable[..., tuple[Minted, str]]) -> None:
    minted, token = pop()
    response = get(emu, "/secrets/demo-secret?api-version=7.5", minted.cert, token, scheme="Bearer")
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "Unauthorized", "message": "Authorization scheme must be mtls_pop"}}
    assert emu.last_resource_request is not None
    assert emu.last_resource_request.auth_scheme == "Bearer"


def test_unbound_v1_token_is_rejected(emu: Emulator, mint: Callable[..., Minted]) -> None:
    minted = mint()
    v1 = requests.get(
        f"{emu.imds_url}/metadata/identity/oauth2/token",
        params={"api-version": "2018-02-01", "resource": emu.resource_url},
        headers=METADATA,
        timeout=10,
    ).json()["access_token"]
    response = get(emu, "/secrets/demo-secret?api-version=7.5", minted.cert, v1)
    assert response.status_code == 401
    assert "not bound" in response.json()["error"]["message"]


def test_key_vault_requires_the_token_bound_auth_header(emu: Emulator, pop: Callable[..., tuple[Minted, str]]) -> None:
    minted, token = pop()
    response = get(emu, "/secrets/demo-secret?api-version=7.5", minted.cert, token, token_bound_auth=False)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "Unauthorized"
    assert "x-ms-tokenboundauth" in response.json()["error"]["message"]
    false = get(emu, "/secrets/demo-secret?api-version=7.5", minted.cert, token, headers={"x-ms-tokenboundauth": "no"})
    assert false.status_code == 401
    # Blob has no such header.
    assert get(emu, "/demo/hello.txt", minted.cert, token).status_code == 200


@pytest.mark.parametrize(
    ("scope", "secrets_status", "blob_status"),
    [
        (None, 200, 200),  # the resource's own URL serves both shapes
        ("https://vault.azure.net/.default", 200, 401),
        ("https://storage.azure.com/.default", 401, 200),
        ("https://management.azure.com/.default", 401, 401),
        ("https://vault.azure.net/extra/.default", 401, 401),
    ],
)
def test_resource_checks_the_token_audience(
    emu: Emulator,
    pop: Callable[..., tuple[Minted, str]],
    scope: str | None,
    secrets_status: int,
    blob_status: int,
) -> None:
    minted, token = pop(scope)
    secrets = get(emu, "/secrets/demo-secret?api-version=7.5", minted.cert, token)
    assert secrets.status_code == secrets_status, secrets.text
    if secrets_status == 401:
        assert secrets.json()["error"]["code"] == "Unauthorized"
        assert "audience" in secrets.json()["error"]["message"]
    blob = get(emu, "/demo/hello.txt", minted.cert, token)
    assert blob.status_code == blob_status, blob.text
    if blob_status == 401:
        assert blob.headers["x-ms-error-code"] == "InvalidAuthenticationInfo"
        assert "audience" in blob.text


def test_tampered_and_expired_tokens_are_rejected(emu: Emulator, pop: Callable[..., tuple[Minted, str]]) -> None:
    minted, token = pop()
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload[:-2]}AA.{signature}"
    response = get(emu, "/secrets/demo-secret?api-version=7.5", minted.cert, forged)
    assert response.status_code == 401
    assert "access token rejected" in response.json()["error"]["message"]

    emu.token_lifetime = -1
    minted, expired = pop()
    response = get(emu, "/secrets/demo-secret?api-version=7.5", minted.cert, expired)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "access token has expired"


# --- Key Vault shapes --------------------------------------------------------------------------


def test_key_vault_errors(emu: Emulator, pop: Callable[..., tuple[Minted, str]]) -> None:
    minted, token = pop()
    missing = get(emu, "/secrets/nope?api-version=7.5", minted.cert, token)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "SecretNotFound"
    wrong_version = get(emu, f"/secrets/demo-secret/{'0' * 32}?api-version=7.5", minted.cert, token)
    assert wrong_version.status_code == 404
    no_api_version = get(emu, "/secrets/demo-secret", minted.cert, token)
    assert no_api_version.status_code == 400
    assert no_api_version.json()["error"]["code"] == "BadParameter"
    assert get(emu, "/secrets/demo-secret?api-version=7.5", minted.cert, token, method="PUT").status_code == 405


def test_secrets_are_settable(emu: Emulator, pop: Callable[..., tuple[Minted, str]]) -> None:
    emu.secrets["added"] = "new value"
    minted, token = pop()
    assert get(emu, "/secrets/added?api-version=7.5", minted.cert, token).json()["value"] == "new value"


# --- Blob shapes (raw HTTP) --------------------------------------------------------------------


def test_container_properties(emu: Emulator, pop: Callable[..., tuple[Minted, str]]) -> None:
    minted, token = pop("https://storage.azure.com/.default")
    headers = {"x-ms-version": "2025-01-05"}
    response = get(emu, "/demo?restype=container", minted.cert, token, headers=headers)
    assert response.status_code == 200
    for name in ("ETag", "Last-Modified", "x-ms-lease-status", "x-ms-lease-state", "x-ms-request-id"):
        assert response.headers[name]
    assert response.headers["x-ms-version"] == "2025-01-05"


def test_blob_download_head_and_range(emu: Emulator, pop: Callable[..., tuple[Minted, str]]) -> None:
    minted, token = pop()
    full = get(emu, "/demo/hello.txt", minted.cert, token)
    assert full.status_code == 200
    assert full.content == b"hello blob"
    assert full.headers["x-ms-blob-type"] == "BlockBlob"
    assert full.headers["Content-Length"] == "10"
    for name in ("ETag", "Last-Modified", "Content-Type", "x-ms-version", "x-ms-request-id", "x-ms-creation-time"):
        assert full.headers[name]

    part = get(emu, "/demo/hello.txt", minted.cert, token, headers={"x-ms-range": "bytes=6-"})
    assert part.status_code == 206
    assert part.content == b"blob"
    assert part.headers["Content-Range"] == "bytes 6-9/10"

    part = get(emu, "/demo/hello.txt", minted.cert, token, headers={"Range": "bytes=0-4"})
    assert (part.status_code, part.content, part.headers["Content-Range"]) == (206, b"hello", "bytes 0-4/10")

    beyond = get(emu, "/demo/hello.txt", minted.cert, token, headers={"x-ms-range": "bytes=10-20"})
    assert beyond.status_code == 416
    assert beyond.headers["x-ms-error-code"] == "InvalidRange"

    head = get(emu, "/demo/hello.txt", minted.cert, token, method="HEAD")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "10"
    assert head.content == b""
    assert head.headers["ETag"] == full.headers["ETag"]


def test_blob_not_found_shapes(emu: Emulator, pop: Callable[..., tuple[Minted, str]]) -> None:
    minted, token = pop()
    blob = get(emu, "/demo/missing.txt", minted.cert, token)
    assert blob.status_code == 404
    assert blob.headers["x-ms-error-code"] == "BlobNotFound"
    assert b"<Code>BlobNotFound</Code>" in blob.content
    container = get(emu, "/nope?restype=container", minted.cert, token)
    assert (container.status_code, container.headers["x-ms-error-code"]) == (404, "ContainerNotFound")
    head = get(emu, "/demo/missing.txt", minted.cert, token, method="HEAD")
    assert (head.status_code, head.headers["x-ms-error-code"]) == (404, "BlobNotFound")
    write = get(emu, "/demo/new.txt", minted.cert, token, method="PUT")
    assert (write.status_code, write.headers["x-ms-error-code"]) == (405, "UnsupportedHttpVerb")


def test_blob_unauthorized_is_storage_shaped(emu: Emulator) -> None:
    response = get(emu, "/demo/hello.txt")
    assert response.status_code == 401
    assert response.headers["x-ms-error-code"] == "NoAuthenticationInformation"
    assert "WWW-Authenticate" in response.headers


# --- the SDKs against the resource -------------------------------------------------------------


class RewritingTransport(RequestsTransport):  # type: ignore[misc]
    """Test-only stand-in for the package's transport: present a client certificate, say mtls_pop."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            request.headers["Authorization"] = "mtls_pop " + auth[len("Bearer ") :]
            request.headers["x-ms-tokenboundauth"] = "true"
        return super().send(request, **kwargs)


class TokenServiceCredential:
    """A TokenCredential that asks the emulator's token service, over mTLS, for the requested scope."""

    def __init__(self, emu: Emulator, minted: Minted) -> None:
        self.emu = emu
        self.minted = minted
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        response = token_request(self.emu, self.minted.cert, client_id=self.minted.identity.client_id, scope=scopes[0])
        response.raise_for_status()
        body = response.json()
        return AccessToken(body["access_token"], int(time.time()) + int(body["expires_in"]))


@pytest.fixture
def sdk_parts(emu: Emulator, mint: Callable[..., Minted]) -> tuple[TokenServiceCredential, RewritingTransport]:
    minted = mint()
    transport = RewritingTransport(connection_cert=minted.cert, connection_verify=emu.ca_bundle_path)
    return TokenServiceCredential(emu, minted), transport


def test_blob_sdk_reads_through_the_resource(
    emu: Emulator, sdk_parts: tuple[TokenServiceCredential, RewritingTransport]
) -> None:
    credential, transport = sdk_parts
    emu.blobs["big"] = {"dir/data.bin": bytes(range(256)) * 40}
    with BlobServiceClient(account_url=emu.resource_url, credential=credential, transport=transport) as service:
        container = service.get_container_client("demo")
        properties = container.get_container_properties()
        assert properties.name == "demo"
        assert properties.etag
        assert [blob.name for blob in container.list_blobs()] == ["hello.txt"]

        blob = service.get_blob_client("demo", "hello.txt")
        assert blob.download_blob().readall() == b"hello blob"
        assert blob.download_blob(offset=6, length=4).readall() == b"blob"
        blob_properties = blob.get_blob_properties()
        assert blob_properties.size == 10
        assert blob_properties.blob_type == "BlockBlob"

        big = service.get_blob_client("big", "dir/data.bin")
        assert big.download_blob(max_concurrency=1).readall() == bytes(range(256)) * 40

        with pytest.raises(ResourceNotFoundError):
            service.get_blob_client("demo", "missing.txt").download_blob()
    assert credential.scopes[0] == "https://storage.azure.com/.default"
    assert emu.last_resource_request is not None
    assert emu.last_resource_request.cert_thumbprint is not None


def test_blob_sdk_without_binding_is_refused(
    emu: Emulator, sdk_parts: tuple[TokenServiceCredential, RewritingTransport]
) -> None:
    credential, _ = sdk_parts
    plain = RequestsTransport(connection_verify=emu.ca_bundle_path)  # Bearer scheme, no certificate
    service = BlobServiceClient(account_url=emu.resource_url, credential=credential, transport=plain)
    with service, pytest.raises(ClientAuthenticationError):
        service.get_blob_client("demo", "hello.txt").download_blob()


def test_key_vault_sdk_follows_the_challenge(
    emu: Emulator, sdk_parts: tuple[TokenServiceCredential, RewritingTransport]
) -> None:
    credential, transport = sdk_parts
    # The challenge names the resource's own URL; Key Vault's domain check needs a *.vault.azure.net host,
    # so on localhost it has to be switched off.
    with SecretClient(
        emu.resource_url,
        credential,
        transport=transport,
        verify_challenge_resource=False,
    ) as client:
        secret = client.get_secret("demo-secret")
        assert secret.value == "hello from the token-bound resource"
        assert secret.name == "demo-secret"
        assert secret.properties.enabled is True
        with pytest.raises(ResourceNotFoundError):
            client.get_secret("nope")
    assert credential.scopes[0] == f"{emu.resource_url}/.default"
    assert emu.last_resource_request is not None
    assert emu.last_resource_request.token_bound_auth is True
