"""Real Azure SDK clients (Key Vault secrets, Blob storage), sync and async, through MtlsPopTransport.

The MSI v2 credential runs the whole flow against the emulator; the SDK clients are unchanged apart from
``transport=``. The resource accepts a request only when the token's ``cnf`` names the certificate on
that very connection, so a 200 proves the binding travelled with the token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets.aio import SecretClient as AsyncSecretClient
from azure.storage.blob import BlobServiceClient
from azure.storage.blob.aio import BlobServiceClient as AsyncBlobServiceClient

from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.keys import SoftwareKeyProvider
from azure_msiv2_credential.transport import AsyncMtlsPopTransport, MtlsPopTransport

from ._handmade import wait_record
from .conftest import real_credential_class

BIG = bytes(range(256)) * 3000  # 768000 bytes: several ranged GETs with the chunk sizes below


@pytest.fixture
def credential(imds_env: Emulator) -> Iterator[Any]:
    cls = real_credential_class()
    cred = cls(
        mtls_proof_of_possession=True, key_provider=SoftwareKeyProvider(), connection_verify=imds_env.ca_bundle_path
    )
    with cred:
        yield cred


@pytest.fixture
async def async_credential(imds_env: Emulator) -> AsyncIterator[Any]:
    cls = real_credential_class(asynchronous=True)
    cred = cls(
        mtls_proof_of_possession=True, key_provider=SoftwareKeyProvider(), connection_verify=imds_env.ca_bundle_path
    )
    async with cred:
        yield cred


def _bound_thumbprint(credential: Any, emu: Emulator) -> str:
    """The thumbprint of the binding the credential's current token for the resource is bound to."""
    registry = credential.binding_registry
    token = credential.get_token_info(emu.resource_url + "/.default").token
    binding = registry.lookup(token)
    assert binding is not None
    return str(binding.thumbprint)


def test_secret_client(credential: Any, emu: Emulator) -> None:
    from azure.keyvault.secrets._shared import http_challenge_cache

    http_challenge_cache.clear()  # Key Vault caches challenges per vault URL, process-wide
    emu.reset_calls()
    transport = MtlsPopTransport(credential, connection_verify=emu.ca_bundle_path)
    with SecretClient(emu.resource_url, credential, transport=transport, verify_challenge_resource=False) as client:
        secret = client.get_secret("demo-secret")
        assert secret.value == emu.secrets["demo-secret"]
        seen = wait_record(emu)
        assert (seen.status, seen.auth_scheme, seen.token_bound_auth) == (200, "mtls_pop", True)
        assert seen.cert_thumbprint == _bound_thumbprint(credential, emu)
        # The challenge request went first, unauthenticated and without a certificate (two resource calls).
        assert emu.calls["resource"] == 2


def test_blob_service_client_properties_and_streaming_download(credential: Any, emu: Emulator) -> None:
    emu.blobs["demo"]["big.bin"] = BIG
    transport = MtlsPopTransport(credential, connection_verify=emu.ca_bundle_path)
    with BlobServiceClient(
        emu.resource_url, credential, transport=transport, max_single_get_size=64 * 1024, max_chunk_get_size=128 * 1024
    ) as service:
        container = service.get_container_client("demo")
        assert container.get_container_properties().name == "demo"
        assert container.download_blob("hello.txt").readall() == emu.blobs["demo"]["hello.txt"]
        downloader = container.download_blob("big.bin")
        chunks = list(downloader.chunks())
        assert len(chunks) > 1
        assert b"".join(chunks) == BIG
        seen = wait_record(emu)
        assert (seen.status, seen.auth_scheme) == (206, "mtls_pop")
        assert seen.cert_thumbprint == _bound_thumbprint(credential, emu)


async def test_async_secret_client(async_credential: Any, emu: Emulator) -> None:
    transport = AsyncMtlsPopTransport(async_credential, connection_verify=emu.ca_bundle_path)
    async with AsyncSecretClient(
        emu.resource_url, async_credential, transport=transport, verify_challenge_resource=False
    ) as client:
        secret = await client.get_secret("demo-secret")
        assert secret.value == emu.secrets["demo-secret"]
    seen = wait_record(emu)
    assert (seen.status, seen.auth_scheme, seen.token_bound_auth) == (200, "mtls_pop", True)
    assert seen.cert_thumbprint is not None


async def test_async_blob_service_client(async_credential: Any, emu: Emulator) -> None:
    emu.blobs["demo"]["big.bin"] = BIG
    transport = AsyncMtlsPopTransport(async_credential, connection_verify=emu.ca_bundle_path)
    async with AsyncBlobServiceClient(
        emu.resource_url,
        async_credential,
        transport=transport,
        max_single_get_size=64 * 1024,
        max_chunk_get_size=128 * 1024,
    ) as service:
        container = service.get_container_client("demo")
        assert (await container.get_container_properties()).name == "demo"
        downloader = await container.download_blob("big.bin")
        chunks = [chunk async for chunk in downloader.chunks()]
        assert len(chunks) > 1
        assert b"".join(chunks) == BIG


def test_one_transport_serves_a_foreign_client_untouched(credential: Any, emu: Emulator) -> None:
    """A client authenticated by some other credential, sharing the transport: no certificate goes out."""
    from azure.core.credentials import AccessToken
    from azure.core.exceptions import ClientAuthenticationError

    class OtherCredential:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("someone-elses-token", 2**31 - 1)

    transport = MtlsPopTransport(credential, connection_verify=emu.ca_bundle_path)
    with (
        BlobServiceClient(emu.resource_url, OtherCredential(), transport=transport) as service,
        pytest.raises(ClientAuthenticationError, match="mtls_pop"),
    ):
        service.get_container_client("demo").get_container_properties()
    seen = wait_record(emu)
    assert (seen.auth_scheme, seen.cert_thumbprint) == ("Bearer", None)
