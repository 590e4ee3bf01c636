"""The KeyGuard path end to end: fake ncrypt/crypt32/winhttp DLLs (real TLS with the fake CNG key) under the
unchanged transports, against the emulator's mTLS token service and token-bound resource."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline import AsyncPipeline, Pipeline
from azure.core.rest import HttpRequest
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets.aio import SecretClient as AsyncSecretClient
from urllib3 import HTTPResponse
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from azure_msiv2_credential._native.winhttp import WINHTTP_ACCESS_TYPE_NO_PROXY, WinHttpError
from azure_msiv2_credential._registry import BindingRegistry
from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.keys.keyguard import KeyGuardKeyProvider
from azure_msiv2_credential.transport import (
    AsyncBindingTransport,
    AsyncMtlsPopTransport,
    BindingTransport,
    MtlsPopTransport,
)
from azure_msiv2_credential.transport._keyguard import _requests_error, _WinHttpBody, winhttp_session

from .._toolchain import skip_or_fail
from ..native._fakes import FakesUnavailable, FakeWin
from ._handmade import mint_binding, request_token, wait_record
from .conftest import real_credential_class

SECRET = "/secrets/demo-secret?api-version=7.5"


@pytest.fixture(scope="module")
def fakewin() -> FakeWin:
    try:
        return FakeWin.load()
    except FakesUnavailable as exc:
        skip_or_fail(str(exc))
        raise  # unreachable: skip_or_fail always raises


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


# ---- proxies: requests decides, WinHTTP follows; only http:// proxies -------------------------------------


def _token_request(binding: Any, emu: Emulator) -> requests.PreparedRequest:
    return requests.Request(
        "POST",
        binding.token_endpoint,
        data={"grant_type": "client_credentials", "client_id": binding.client_id, "scope": "x/.default"},
    ).prepare()


def test_no_proxy_selected_means_a_direct_session(
    provider: KeyGuardKeyProvider, emu: Emulator, fakewin: FakeWin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests bypasses HTTPS_PROXY for a NO_PROXY host: WinHTTP must go direct, not use the system proxy."""
    binding = mint_binding(emu, provider.get_key())
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # would fail: nothing listens there
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    with winhttp_session(binding, emu.ca_bundle_path) as session:
        response = session.post(
            binding.token_endpoint,
            data={"grant_type": "client_credentials", "client_id": binding.client_id, "scope": "x/.default"},
        )
        assert response.status_code in (200, 400)  # the token service answered, directly
    assert fakewin.last_access_type() == WINHTTP_ACCESS_TYPE_NO_PROXY


def test_trust_env_off_means_a_direct_session(provider: KeyGuardKeyProvider, emu: Emulator, fakewin: FakeWin) -> None:
    binding = mint_binding(emu, provider.get_key())
    with winhttp_session(binding, emu.ca_bundle_path, trust_env=False) as session:
        session.send(_token_request(binding, emu), timeout=10).close()
    assert fakewin.last_access_type() == WINHTTP_ACCESS_TYPE_NO_PROXY


@pytest.mark.parametrize("proxy", ["socks5://127.0.0.1:1080", "https://127.0.0.1:3128"])
def test_non_http_proxy_is_a_clear_requests_error(
    provider: KeyGuardKeyProvider, emu: Emulator, fakewin: FakeWin, proxy: str
) -> None:
    binding = mint_binding(emu, provider.get_key())
    with winhttp_session(binding, emu.ca_bundle_path, trust_env=False) as session:
        session.proxies = {"https": proxy}
        with pytest.raises(requests.exceptions.InvalidProxyURL, match="only an http:// proxy"):
            session.send(_token_request(binding, emu), proxies=session.proxies, timeout=10)
    # through azure-core: a ServiceRequestError naming the problem, not a crash
    transport = BindingTransport(connection_verify=emu.ca_bundle_path, proxies={"https": proxy})
    with transport, pytest.raises(ServiceRequestError, match="only an http:// proxy"):
        Pipeline(transport=transport, policies=[]).run(
            HttpRequest("POST", binding.token_endpoint, data={"a": "b"}), msiv2_binding=binding
        )


# ---- error mapping: by the WinHTTP function that failed ------------------------------------------------


def _mapped(function: str, code: int) -> requests.RequestException:
    request = requests.Request("GET", "https://example.invalid/").prepare()
    return _requests_error(WinHttpError(function, code), request)


@pytest.mark.parametrize(
    ("function", "code", "expected", "protocol_error"),
    [
        ("WinHttpSendRequest", 12002, requests.exceptions.ConnectTimeout, False),
        ("WinHttpReceiveResponse", 12002, requests.exceptions.ReadTimeout, False),
        ("WinHttpQueryDataAvailable", 12002, requests.exceptions.ReadTimeout, False),
        ("WinHttpReceiveResponse", 12030, requests.exceptions.ConnectionError, True),
        ("WinHttpSendRequest", 12030, requests.exceptions.ConnectionError, False),
        ("WinHttpSendRequest", 12029, requests.exceptions.ConnectionError, False),
        ("WinHttpSendRequest", 12175, requests.exceptions.SSLError, False),
    ],
)
def test_errors_map_by_function(function: str, code: int, expected: type, protocol_error: bool) -> None:
    error = _mapped(function, code)
    assert type(error) is expected
    assert isinstance(error.args[0], ProtocolError) is protocol_error


def test_timeouts_reach_azure_core_as_request_or_response_errors() -> None:
    """ConnectTimeout: the request was not sent (ServiceRequestError family); ReadTimeout and a connection
    broken while waiting for the answer: it may have been processed (ServiceResponseError family)."""
    assert isinstance(_mapped("WinHttpSendRequest", 12002), requests.exceptions.ConnectTimeout)
    assert not isinstance(_mapped("WinHttpReceiveResponse", 12002), requests.exceptions.ConnectTimeout)


class _Answer:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.closed = False

    def read1(self, limit: int) -> bytes:
        raise self.error

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (WinHttpError("WinHttpQueryDataAvailable", 12002), socket.timeout),
        (WinHttpError("WinHttpReadData", 12030), WinHttpError),
        (ValueError("the response is closed"), ConnectionAbortedError),
    ],
)
def test_body_read_errors_look_like_socket_errors(error: BaseException, raised: type) -> None:
    body = _WinHttpBody(_Answer(error))  # type: ignore[arg-type]
    with pytest.raises(raised):
        body.readinto(bytearray(10))


def test_body_read_after_close_is_a_urllib3_protocol_error() -> None:
    body = _WinHttpBody(_Answer(ValueError("the response is closed")))  # type: ignore[arg-type]
    raw = HTTPResponse(body=body, preload_content=False, decode_content=False)
    with pytest.raises(ProtocolError):
        raw.read(10)
    timeout_body = _WinHttpBody(_Answer(WinHttpError("WinHttpReadData", 12002)))  # type: ignore[arg-type]
    with pytest.raises(ReadTimeoutError):
        HTTPResponse(body=timeout_body, preload_content=False, decode_content=False).read(10)
