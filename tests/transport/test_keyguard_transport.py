"""The KeyGuard path end to end: fake ncrypt/crypt32/winhttp DLLs (real TLS with the fake CNG key) under the
unchanged transports, against the emulator's mTLS token service and token-bound resource."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.pipeline import AsyncPipeline, Pipeline
from azure.core.rest import HttpRequest
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets.aio import SecretClient as AsyncSecretClient

from azure_msiv2_credential._registry import BindingRegistry
from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.transport import (
    AsyncBindingTransport,
    AsyncMtlsPopTransport,
    BindingTransport,
    MtlsPopTransport,
)

from ._handmade import mint_binding, request_token, wait_record
from .conftest import real_credential_class

SECRET = "/secrets/demo-secret?api-version=7.5"

try:
    from azure_msiv2_credential.keys.keyguard import KeyGuardKeyProvider

    from ..native._fakes import FakesUnavailable, FakeWin
except ImportError as exc:  # the native binding or its fakes are not there (yet)
    pytest.skip(f"KeyGuard fakes unavailable: {exc}", allow_module_level=True)


@pytest.fixture(scope="module")
def fakewin() -> FakeWin:
    try:
        return FakeWin.load()
    except FakesUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def provider(fakewin: FakeWin) -> Iterator[KeyGuardKeyProvider]:
    fakewin.reset()
    before = fakewin.live_handles()
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as prov:
        yield prov
    import gc

    gc.collect()
    assert fakewin.live_handles() == before, "a native handle leaked"


class _Registry:
    def __init__(self, registry: BindingRegistry) -> None:
        self.binding_registry = registry


def test_token_leg_and_resource_over_winhttp(provider: KeyGuardKeyProvider, emu: Emulator) -> None:
    binding = mint_binding(emu, provider.get_key())
    assert binding.strength == "keyguard"
    registry = BindingRegistry()
    with BindingTransport(connection_verify=emu.ca_bundle_path) as leg:
        token, expires_on = request_token(binding, emu.resource_url + "/.default", emu.ca_bundle_path, leg)
    registry.register(token, binding, expires_on)

    with MtlsPopTransport(_Registry(registry), connection_verify=emu.ca_bundle_path) as transport:
        response = transport.send(
            HttpRequest("GET", emu.resource_url + SECRET, headers={"Authorization": f"Bearer {token}"})
        )
        assert response.status_code == 200
        assert response.json()["value"] == emu.secrets["demo-secret"]
        seen = wait_record(emu)
        assert (seen.auth_scheme, seen.cert_thumbprint, seen.token_bound_auth) == ("mtls_pop", binding.thumbprint, True)

        # streaming through WinHTTP: several chunks, exact bytes
        emu.blobs["big"] = {"data.bin": bytes(range(256)) * 2048}
        pipeline = Pipeline(transport=transport, policies=[])
        request = HttpRequest("GET", emu.resource_url + "/big/data.bin", headers={"Authorization": f"Bearer {token}"})
        streamed = pipeline.run(request, stream=True).http_response
        chunks = list(streamed.iter_bytes())
        assert len(chunks) > 1
        assert b"".join(chunks) == emu.blobs["big"]["data.bin"]

        # a foreign token still goes through the plain pool, without any certificate
        emu.last_resource_request = None
        foreign = transport.send(
            HttpRequest("GET", emu.resource_url + SECRET, headers={"Authorization": "Bearer not-ours"})
        )
        assert foreign.status_code == 401
        assert wait_record(emu).cert_thumbprint is None
        transport.retire(binding)
        assert transport.pooled_bindings == frozenset()


async def test_async_over_worker_threads(provider: KeyGuardKeyProvider, emu: Emulator) -> None:
    binding = mint_binding(emu, provider.get_key())
    request = HttpRequest(
        "POST",
        binding.token_endpoint,
        data={
            "grant_type": "client_credentials",
            "client_id": binding.client_id,
            "scope": emu.resource_url + "/.default",
            "token_type": "mtls_pop",
        },
    )
    async with AsyncBindingTransport(connection_verify=emu.ca_bundle_path) as transport:
        response = await AsyncPipeline(transport=transport, policies=[]).run(request, msiv2_binding=binding)
        assert response.http_response.status_code == 200
        token = response.http_response.json()["access_token"]
        registry = BindingRegistry()
        registry.register(token, binding, binding.not_after)
    async with AsyncMtlsPopTransport(_Registry(registry), connection_verify=emu.ca_bundle_path) as pop:
        answer = await pop.send(
            HttpRequest("GET", emu.resource_url + SECRET, headers={"Authorization": f"Bearer {token}"})
        )
        assert answer.status_code == 200
        assert (await answer.read()).startswith(b"{")
    assert wait_record(emu).cert_thumbprint == binding.thumbprint


def test_secret_client_with_the_keyguard_credential(
    fakewin: FakeWin, provider: KeyGuardKeyProvider, imds_env: Emulator
) -> None:
    emu = imds_env
    cls = real_credential_class()
    cred: Any = cls(mtls_proof_of_possession=True, key_provider=provider, connection_verify=emu.ca_bundle_path)
    with cred:
        transport = MtlsPopTransport(cred, connection_verify=emu.ca_bundle_path)
        with SecretClient(emu.resource_url, cred, transport=transport, verify_challenge_resource=False) as client:
            assert client.get_secret("demo-secret").value == emu.secrets["demo-secret"]
    seen = wait_record(emu)
    assert (seen.status, seen.auth_scheme) == (200, "mtls_pop")


async def test_async_secret_client_with_the_keyguard_credential(
    fakewin: FakeWin, provider: KeyGuardKeyProvider, imds_env: Emulator
) -> None:
    emu = imds_env
    cls = real_credential_class(asynchronous=True)
    cred: Any = cls(mtls_proof_of_possession=True, key_provider=provider, connection_verify=emu.ca_bundle_path)
    async with cred:
        transport = AsyncMtlsPopTransport(cred, connection_verify=emu.ca_bundle_path)
        async with AsyncSecretClient(
            emu.resource_url, cred, transport=transport, verify_challenge_resource=False
        ) as client:
            assert (await client.get_secret("demo-secret")).value == emu.secrets["demo-secret"]
    seen = wait_record(emu)
    assert (seen.status, seen.auth_scheme) == (200, "mtls_pop")
