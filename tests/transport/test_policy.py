"""MtlsPopAuthenticationPolicy (sync and async) in hand-built PipelineClients against the emulator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest
from azure.core import AsyncPipelineClient, PipelineClient
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline.policies import RedirectPolicy, RetryPolicy
from azure.core.rest import HttpRequest

from azure_msiv2_credential._registry import BindingRegistry
from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.transport import (
    AsyncBindingTransport,
    AsyncMtlsPopAuthenticationPolicy,
    BindingTransport,
    InsecureBindingError,
    MtlsPopAuthenticationPolicy,
)

from ._handmade import HandmadeCredential, wait_record
from ._servers import RedirectServer, TestCA

SECRET = "/secrets/demo-secret?api-version=7.5"


class Counting:
    """Wraps a credential and counts token requests (the policy's refresh is azure-core's logic)."""

    def __init__(self, inner: HandmadeCredential, lifetime: float | None = None) -> None:
        self.inner = inner
        self.binding_registry = inner.binding_registry
        self.calls = 0
        self.lifetime = lifetime

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.calls += 1
        info = self.inner.get_token_info(*scopes)
        if self.lifetime is not None:  # pretend the token is about to expire: azure-core must refresh
            return AccessTokenInfo(info.token, int(time.time() + self.lifetime), token_type="mtls_pop")
        return info


def _client(emu: Emulator, policy: Any, transport: Any) -> PipelineClient[Any, Any]:
    return PipelineClient(emu.resource_url, policies=[RetryPolicy(), policy], transport=transport)


def test_policy_presents_the_binding(handmade: HandmadeCredential, emu: Emulator) -> None:
    scope = emu.resource_url + "/.default"
    with _client(
        emu, MtlsPopAuthenticationPolicy(handmade, scope), BindingTransport(connection_verify=emu.ca_bundle_path)
    ) as client:
        response = client.send_request(HttpRequest("GET", emu.resource_url + SECRET))
        assert response.status_code == 200
        seen = wait_record(emu)
        assert (seen.auth_scheme, seen.cert_thumbprint, seen.token_bound_auth) == (
            "mtls_pop",
            handmade.binding.thumbprint,
            True,
        )


def test_policy_refreshes_by_expiry_and_caches_otherwise(handmade: HandmadeCredential, emu: Emulator) -> None:
    scope = emu.resource_url + "/.default"
    fresh = Counting(handmade)
    expiring = Counting(handmade, lifetime=60)  # inside azure-core's 5-minute refresh window
    transport = BindingTransport(connection_verify=emu.ca_bundle_path)
    with _client(emu, MtlsPopAuthenticationPolicy(cast(Any, fresh), scope), transport) as client:
        for _ in range(3):
            assert client.send_request(HttpRequest("GET", emu.resource_url + SECRET)).status_code == 200
    assert fresh.calls == 1
    transport = BindingTransport(connection_verify=emu.ca_bundle_path)
    with _client(emu, MtlsPopAuthenticationPolicy(cast(Any, expiring), scope), transport) as client:
        for _ in range(3):
            assert client.send_request(HttpRequest("GET", emu.resource_url + SECRET)).status_code == 200
    assert expiring.calls == 3


def test_get_token_fallback(handmade: HandmadeCredential, emu: Emulator) -> None:
    class OnlyGetToken:
        binding_registry = handmade.binding_registry

        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return handmade.get_token(*scopes)

    scope = emu.resource_url + "/.default"
    with _client(
        emu, MtlsPopAuthenticationPolicy(OnlyGetToken(), scope), BindingTransport(connection_verify=emu.ca_bundle_path)
    ) as client:
        assert client.send_request(HttpRequest("GET", emu.resource_url + SECRET)).status_code == 200


def test_unknown_token_goes_as_bearer_without_certificate(emu: Emulator) -> None:
    class Foreign:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("not-ours", int(time.time()) + 3600)

    policy = MtlsPopAuthenticationPolicy(Foreign(), "scope", binding_registry=BindingRegistry())
    with _client(emu, policy, BindingTransport(connection_verify=emu.ca_bundle_path)) as client:
        assert client.send_request(HttpRequest("GET", emu.resource_url + SECRET)).status_code == 401
    seen = wait_record(emu)
    assert (seen.auth_scheme, seen.cert_thumbprint) == ("Bearer", None)


def test_policy_needs_a_registry() -> None:
    class NoRegistry:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise AssertionError

    with pytest.raises(TypeError, match="binding_registry"):
        MtlsPopAuthenticationPolicy(NoRegistry(), "scope")


def test_policy_refuses_plain_http(handmade: HandmadeCredential, emu: Emulator) -> None:
    scope = emu.resource_url + "/.default"
    client: PipelineClient[Any, Any] = PipelineClient(
        emu.imds_url,
        policies=[MtlsPopAuthenticationPolicy(handmade, scope)],  # no RetryPolicy: nothing to retry here
        transport=BindingTransport(connection_verify=emu.ca_bundle_path),
    )
    with client:
        with pytest.raises(ServiceRequestError):
            client.send_request(HttpRequest("GET", emu.imds_url + "/x"))
        # even when azure-core's own https check is switched off for the call
        with pytest.raises(InsecureBindingError):
            client.send_request(HttpRequest("GET", emu.imds_url + "/x"), enforce_https=False)


def test_policy_cross_host_redirect_carries_nothing(
    handmade: HandmadeCredential, emu: Emulator, tmp_path: Path
) -> None:
    """A hand-built pipeline without SensitiveHeaderCleanupPolicy still sends neither token nor certificate."""
    ca = TestCA()
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(Path(emu.ca_bundle_path).read_bytes() + ca.pem())
    scope = emu.resource_url + "/.default"
    with RedirectServer(ca.server_context(tmp_path, emu.ca_bundle_path), emu.resource_url) as redirector:
        client: PipelineClient[Any, Any] = PipelineClient(
            redirector.url,
            policies=[RedirectPolicy(), MtlsPopAuthenticationPolicy(handmade, scope)],
            transport=BindingTransport(connection_verify=str(bundle)),
        )
        with client:
            response = client.send_request(HttpRequest("GET", redirector.url + SECRET))
    assert redirector.seen[0].cert_thumbprint == handmade.binding.thumbprint
    assert response.status_code == 401
    seen = wait_record(emu)
    assert (seen.auth_scheme, seen.cert_thumbprint, seen.token_bound_auth) == (None, None, False)


async def test_async_policy_presents_the_binding(handmade: HandmadeCredential, emu: Emulator) -> None:
    class AsyncWrapper:
        binding_registry = handmade.binding_registry

        async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
            return handmade.get_token_info(*scopes)

        async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return handmade.get_token(*scopes)

    scope = emu.resource_url + "/.default"
    client: AsyncPipelineClient[Any, Any] = AsyncPipelineClient(
        emu.resource_url,
        policies=[AsyncMtlsPopAuthenticationPolicy(cast(Any, AsyncWrapper()), scope)],
        transport=AsyncBindingTransport(connection_verify=emu.ca_bundle_path),
    )
    async with client:
        response = await client.send_request(HttpRequest("GET", emu.resource_url + SECRET))
        assert response.status_code == 200
    seen = wait_record(emu)
    assert (seen.auth_scheme, seen.cert_thumbprint) == ("mtls_pop", handmade.binding.thumbprint)
