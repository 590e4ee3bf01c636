"""AsyncBindingTransport and the async MtlsPopTransport against the emulator (real TLS, aiohttp)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from azure.core.pipeline import AsyncPipeline
from azure.core.rest import HttpRequest

from azure_msiv2_credential._registry import BindingRegistry
from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.transport import AsyncBindingTransport, AsyncMtlsPopTransport, InsecureBindingError

from ._handmade import HandmadeCredential, wait_record
from ._servers import ConnectProxy

SECRET = "/secrets/demo-secret?api-version=7.5"


def _get(url: str, token: str | None, scheme: str = "Bearer") -> HttpRequest:
    return HttpRequest("GET", url, headers={"Authorization": f"{scheme} {token}"} if token else {})


async def test_bound_and_plain_requests(handmade: HandmadeCredential, emu: Emulator) -> None:
    token = handmade.get_token_info(emu.resource_url + "/.default").token
    async with AsyncMtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path) as transport:
        request = _get(emu.resource_url + SECRET, token)
        response = await transport.send(request)
        assert response.status_code == 200
        assert response.json()["value"] == emu.secrets["demo-secret"]
        assert request.headers["Authorization"].startswith("mtls_pop ")
        seen = wait_record(emu)
        assert (seen.auth_scheme, seen.cert_thumbprint, seen.token_bound_auth) == (
            "mtls_pop",
            handmade.binding.thumbprint,
            True,
        )

        foreign = _get(emu.resource_url + SECRET, "someone-elses-token")
        emu.last_resource_request = None
        response = await transport.send(foreign)
        assert response.status_code == 401
        assert foreign.headers["Authorization"] == "Bearer someone-elses-token"
        seen = wait_record(emu)
        assert (seen.auth_scheme, seen.cert_thumbprint) == ("Bearer", None)
        assert transport.pooled_bindings == {handmade.binding}


async def test_token_leg_signature(handmade: HandmadeCredential, emu: Emulator) -> None:
    """What the async token leg does: AsyncPipeline(...).run(request, msiv2_binding=binding)."""
    binding = handmade.binding
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
        pipeline = AsyncPipeline(transport=transport, policies=[])
        response = (await pipeline.run(request, msiv2_binding=binding)).http_response
        assert response.status_code == 200
        assert response.json()["token_type"] == "mtls_pop"


async def test_two_bindings_concurrently(emu: Emulator) -> None:
    creds = [HandmadeCredential(emu), HandmadeCredential(emu)]
    registry = BindingRegistry()
    tokens = []
    for cred in creds:
        token = cred.get_token_info(emu.resource_url + "/.default").token
        registry.register(token, cred.binding, cred.binding.not_after)
        tokens.append(token)

    class Both:
        binding_registry = registry

    async with AsyncMtlsPopTransport(Both(), connection_verify=emu.ca_bundle_path) as transport:

        async def call(i: int) -> int:
            response = await transport.send(_get(emu.resource_url + SECRET, tokens[i % 2]))
            return response.status_code

        statuses = await asyncio.gather(*(call(i) for i in range(40)))
        assert statuses == [200] * 40
        assert transport.pooled_bindings == {c.binding for c in creds}


async def test_rotation_closes_the_old_session(emu: Emulator) -> None:
    now = [time.time()]
    registry = BindingRegistry(clock=lambda: now[0])
    cred = HandmadeCredential(emu, registry)
    async with AsyncMtlsPopTransport(cred, connection_verify=emu.ca_bundle_path) as transport:
        token = cred.get_token_info(emu.resource_url + "/.default").token
        assert (await transport.send(_get(emu.resource_url + SECRET, token))).status_code == 200
        old = cred.binding
        old_session = cast(Any, transport._bound[old][emu.ca_bundle_path]).session
        cred.rotate()
        assert transport.pooled_bindings == {old}
        now[0] += 2 * emu.token_lifetime
        registry.deactivate(cred.binding)  # prunes: the old binding retires, from a sync callback
        assert transport.pooled_bindings == frozenset()
        await asyncio.sleep(0.05)  # the close runs as a task on this loop
        assert old_session.closed


async def test_retire_awaitable_and_reopen(handmade: HandmadeCredential, emu: Emulator) -> None:
    token = handmade.get_token_info(emu.resource_url + "/.default").token
    transport = AsyncMtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path)
    assert (await transport.send(_get(emu.resource_url + SECRET, token))).status_code == 200
    await transport.retire(handmade.binding)
    assert transport.pooled_bindings == frozenset()
    assert (await transport.send(_get(emu.resource_url + SECRET, token))).status_code == 200
    await transport.close()
    with pytest.raises(ValueError):
        await transport.send(_get(emu.resource_url + SECRET, token))


@pytest.mark.parametrize("configured_by", ["environment", "option"])
async def test_https_proxy_still_presents_the_binding(
    handmade: HandmadeCredential, emu: Emulator, monkeypatch: pytest.MonkeyPatch, configured_by: str
) -> None:
    token = handmade.get_token_info(emu.resource_url + "/.default").token
    with ConnectProxy() as proxy:
        options: dict[str, Any] = {}
        if configured_by == "environment":
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        else:
            options["proxies"] = {"https": proxy.url}
        async with AsyncMtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path, **options) as transport:
            response = await transport.send(_get(emu.resource_url + SECRET, token))
            assert response.status_code == 200
    assert proxy.tunnels == [f"localhost:{emu.resource_url.rsplit(':', 1)[1]}"]


async def test_plain_http_and_verify_false_are_refused(handmade: HandmadeCredential, emu: Emulator) -> None:
    token = handmade.get_token_info(emu.resource_url + "/.default").token
    with pytest.raises(ValueError, match="never switched off"):
        AsyncMtlsPopTransport(handmade, connection_verify=False)
    async with AsyncMtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path) as transport:
        with pytest.raises(InsecureBindingError):
            await transport.send(_get(emu.imds_url + "/x", token))


async def test_streaming_download(handmade: HandmadeCredential, emu: Emulator) -> None:
    emu.blobs["big"] = {"data.bin": bytes(range(256)) * 4096}
    token = handmade.get_token_info(emu.resource_url + "/.default").token
    async with AsyncMtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path) as transport:
        pipeline = AsyncPipeline(transport=transport, policies=[])
        response = (await pipeline.run(_get(emu.resource_url + "/big/data.bin", token), stream=True)).http_response
        assert response.status_code == 200
        chunks = [chunk async for chunk in response.iter_bytes()]
        assert len(chunks) > 1
        assert b"".join(chunks) == emu.blobs["big"]["data.bin"]


async def test_retire_from_another_thread_closes_on_the_loop(handmade: HandmadeCredential, emu: Emulator) -> None:
    token = handmade.get_token_info(emu.resource_url + "/.default").token
    async with AsyncMtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path) as transport:
        assert (await transport.send(_get(emu.resource_url + SECRET, token))).status_code == 200
        session = cast(Any, transport._bound[handmade.binding][emu.ca_bundle_path]).session
        await asyncio.to_thread(transport.retire_soon, handmade.binding)
        for _ in range(100):
            if session.closed:
                break
            await asyncio.sleep(0.01)
        assert session.closed
        assert transport.pooled_bindings == frozenset()


async def test_ssl_context_is_built_off_the_event_loop(
    handmade: HandmadeCredential, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a binding's CA bundle, certificate and key blocks: it runs on an executor thread, once per pool."""
    import threading

    from azure_msiv2_credential.transport import _aiohttp

    threads: list[threading.Thread] = []
    real = _aiohttp.ssl_context_for

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(_aiohttp, "ssl_context_for", spy)
    token = handmade.get_token_info(emu.resource_url + "/.default").token
    loop_thread = threading.current_thread()
    async with AsyncMtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path) as transport:
        responses = await asyncio.gather(*(transport.send(_get(emu.resource_url + SECRET, token)) for _ in range(3)))
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert len(transport._bound[handmade.binding]) == 1  # concurrent first sends share one pool
    assert threads and all(t is not loop_thread for t in threads)
