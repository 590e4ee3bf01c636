"""BindingTransport and MtlsPopTransport against the emulator's token-bound resource (real TLS)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from azure.core import PipelineClient
from azure.core.pipeline import Pipeline
from azure.core.pipeline.policies import (
    BearerTokenCredentialPolicy,
    RedirectPolicy,
    SensitiveHeaderCleanupPolicy,
)
from azure.core.pipeline.transport import HttpRequest as LegacyHttpRequest
from azure.core.rest import HttpRequest

from azure_msiv2_credential._registry import BindingRegistry
from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.transport import BindingTransport, InsecureBindingError, MtlsPopTransport

from ._handmade import HandmadeCredential, request_token, wait_record
from ._servers import ConnectProxy, RedirectServer, TestCA

SECRET = "/secrets/demo-secret?api-version=7.5"


def _scope(emu: Emulator) -> str:
    return emu.resource_url + "/.default"


def _get(url: str, token: str | None, scheme: str = "Bearer") -> HttpRequest:
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    return HttpRequest("GET", url, headers=headers)


def test_bound_token_goes_with_its_certificate(handmade: HandmadeCredential, emu: Emulator) -> None:
    token = handmade.get_token_info(_scope(emu)).token
    with MtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path) as transport:
        request = _get(emu.resource_url + SECRET, token)
        response = transport.send(request)
        assert response.status_code == 200, response.text()
        assert response.json()["value"] == emu.secrets["demo-secret"]
    seen = wait_record(emu)
    assert (seen.auth_scheme, seen.cert_thumbprint, seen.token_bound_auth) == (
        "mtls_pop",
        handmade.binding.thumbprint,
        True,
    )
    assert request.headers["Authorization"] == f"mtls_pop {token}"


BLOB = "/demo/hello.txt"


def test_mtls_pop_scheme_is_recognised_and_extra_header_is_optional(
    handmade: HandmadeCredential, emu: Emulator
) -> None:
    token = handmade.get_token_info(_scope(emu)).token
    with MtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path, token_bound_auth_header=False) as transport:
        blob = transport.send(_get(emu.resource_url + BLOB, token, scheme="mtls_pop"))
        assert blob.status_code == 200, blob.text()  # Blob does not need x-ms-tokenboundauth
        assert wait_record(emu).token_bound_auth is False
        emu.last_resource_request = None
        secret = transport.send(_get(emu.resource_url + SECRET, token, scheme="mtls_pop"))
        assert secret.status_code == 401  # Key Vault's token-binding endpoint does
        assert "x-ms-tokenboundauth" in secret.json()["error"]["message"]
    seen = wait_record(emu)
    assert (seen.auth_scheme, seen.token_bound_auth, seen.status) == ("mtls_pop", False, 401)


def test_legacy_request_type_works(handmade: HandmadeCredential, emu: Emulator) -> None:
    token = handmade.get_token_info(_scope(emu)).token
    with MtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path) as transport:
        request = LegacyHttpRequest("GET", emu.resource_url + SECRET, headers={"Authorization": f"Bearer {token}"})
        response = transport.send(request)  # type: ignore[arg-type]
        assert response.status_code == 200
        assert b"hello" in response.body()  # type: ignore[attr-defined]


@pytest.mark.parametrize("authorization", [None, "Bearer not-one-of-ours", "Basic dXNlcjpwYXNz"])
def test_anything_else_passes_untouched_without_certificate(
    handmade: HandmadeCredential, emu: Emulator, authorization: str | None
) -> None:
    handmade.get_token_info(_scope(emu))  # the transport knows a binding, but must not use it here
    headers = {"Authorization": authorization} if authorization else {}
    request = HttpRequest("GET", emu.resource_url + SECRET, headers=headers)
    with MtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path) as transport:
        response = transport.send(request)
        assert transport.pooled_bindings == frozenset()
    assert response.status_code == 401
    assert request.headers.get("Authorization") == authorization
    assert "x-ms-tokenboundauth" not in request.headers
    seen = wait_record(emu)
    assert seen.cert_thumbprint is None
    assert seen.auth_scheme == (authorization.split()[0] if authorization else None)


def test_expired_registration_is_not_bound(emu: Emulator) -> None:
    now = [1000.0]
    registry = BindingRegistry(clock=lambda: now[0])
    cred = HandmadeCredential(emu, registry)
    token = cred.get_token_info(_scope(emu)).token  # registered with a real-time expiry
    now[0] = 10**12  # far past every expiry
    with MtlsPopTransport(cred, connection_verify=emu.ca_bundle_path) as transport:
        transport.send(_get(emu.resource_url + SECRET, token))
    assert wait_record(emu).cert_thumbprint is None


def test_bound_token_is_refused_over_plain_http(handmade: HandmadeCredential, emu: Emulator) -> None:
    token = handmade.get_token_info(_scope(emu)).token
    with (
        MtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path) as transport,
        pytest.raises(InsecureBindingError),
    ):
        transport.send(_get(emu.imds_url + "/anything", token))


def test_verify_false_is_refused(handmade: HandmadeCredential, emu: Emulator) -> None:
    with pytest.raises(ValueError, match="never switched off"):
        MtlsPopTransport(handmade, connection_verify=False)
    with pytest.raises(ValueError, match="never switched off"):
        BindingTransport(connection_verify=False)
    token = handmade.get_token_info(_scope(emu)).token
    with BindingTransport(connection_verify=emu.ca_bundle_path) as transport, pytest.raises(ValueError):
        transport.send(
            _get(emu.resource_url + SECRET, token, "mtls_pop"), msiv2_binding=handmade.binding, connection_verify=False
        )


def test_token_leg_signature(handmade: HandmadeCredential, emu: Emulator) -> None:
    """What the credential's token leg does: Pipeline(...).run(request, msiv2_binding=binding)."""
    with BindingTransport(connection_verify=emu.ca_bundle_path) as transport:
        token, _ = request_token(handmade.binding, _scope(emu), emu.ca_bundle_path, transport)
        token2, _ = request_token(handmade.binding, _scope(emu), emu.ca_bundle_path, transport)
        assert token and token2
        assert transport.pooled_bindings == {handmade.binding}
    assert emu.calls["token"] == 2
    assert emu.tls_rejections["token"] == 0


def test_token_service_rejects_a_plain_connection(handmade: HandmadeCredential, emu: Emulator) -> None:
    """Without a binding there is no client certificate: the mTLS token service refuses the handshake."""
    from azure.core.exceptions import ServiceRequestError

    with BindingTransport(connection_verify=emu.ca_bundle_path) as transport:
        pipeline = Pipeline(transport=transport, policies=[])
        with pytest.raises(ServiceRequestError):
            pipeline.run(HttpRequest("POST", handmade.binding.token_endpoint, data={"a": "b"}))


def test_two_bindings_in_parallel_each_present_their_own(emu: Emulator) -> None:
    creds = [HandmadeCredential(emu), HandmadeCredential(emu)]
    tokens = [c.get_token_info(_scope(emu)).token for c in creds]
    registry = BindingRegistry()
    for cred, token in zip(creds, tokens):
        registry.register(token, cred.binding, cred.binding.not_after)

    class Both:
        binding_registry = registry

    with MtlsPopTransport(Both(), connection_verify=emu.ca_bundle_path) as transport:

        def call(i: int) -> int:
            # The resource rejects a token whose cnf differs from the connection's certificate.
            return transport.send(_get(emu.resource_url + SECRET, tokens[i % 2])).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(call, range(64)))
        assert statuses == [200] * 64
        assert transport.pooled_bindings == {creds[0].binding, creds[1].binding}


def test_rotation_retires_the_old_pool(emu: Emulator) -> None:
    now = [0.0]
    import time

    now[0] = time.time()
    registry = BindingRegistry(clock=lambda: now[0])
    cred = HandmadeCredential(emu, registry)
    with MtlsPopTransport(cred, connection_verify=emu.ca_bundle_path) as transport:
        old_token = cred.get_token_info(_scope(emu)).token
        assert transport.send(_get(emu.resource_url + SECRET, old_token)).status_code == 200
        old = cred.binding
        old_pool = transport._bound[old][emu.ca_bundle_path]
        assert old_pool.session is not None

        cred.rotate()  # the credential moves on; the old token still lives, so does its pool
        assert transport.pooled_bindings == {old}
        new_token = cred.get_token_info(_scope(emu)).token
        wait_record(emu)
        emu.last_resource_request = None
        assert transport.send(_get(emu.resource_url + SECRET, new_token)).status_code == 200
        assert wait_record(emu).cert_thumbprint == cred.binding.thumbprint
        assert transport.pooled_bindings == {old, cred.binding}

        now[0] += 2 * emu.token_lifetime  # every token of the old binding has expired ...
        registry.deactivate(cred.binding)  # ... and the registry prunes on its next change
        assert old not in transport.pooled_bindings
        assert old_pool.session is None  # closed


def test_cross_host_redirect_carries_neither_token_nor_certificate(
    handmade: HandmadeCredential, emu: Emulator, tmp_path: Path
) -> None:
    ca = TestCA()
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(Path(emu.ca_bundle_path).read_bytes() + ca.pem())
    context = ca.server_context(tmp_path, emu.ca_bundle_path)
    scope = _scope(emu)
    with (
        RedirectServer(context, location=emu.resource_url) as redirector,
        MtlsPopTransport(handmade, connection_verify=str(bundle)) as transport,
    ):
        # The policies every SDK client has, in azure-core's order.
        client: PipelineClient[HttpRequest, object] = PipelineClient(
            redirector.url,
            transport=transport,
            policies=[
                RedirectPolicy(),
                BearerTokenCredentialPolicy(handmade, scope),
                SensitiveHeaderCleanupPolicy(),
            ],
        )
        response = client.send_request(HttpRequest("GET", redirector.url + SECRET))
    first = redirector.seen[0]
    assert first.authorization is not None and first.authorization.startswith("mtls_pop ")
    assert first.cert_thumbprint == handmade.binding.thumbprint
    seen = wait_record(emu)
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert (seen.auth_scheme, seen.cert_thumbprint) == (None, None)


@pytest.mark.parametrize("configured_by", ["environment", "option"])
def test_https_proxy_tunnel_still_presents_the_binding(
    handmade: HandmadeCredential, emu: Emulator, monkeypatch: pytest.MonkeyPatch, configured_by: str
) -> None:
    token = handmade.get_token_info(_scope(emu)).token
    with ConnectProxy() as proxy:
        options: dict[str, Any] = {}
        if configured_by == "environment":
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        else:
            options["proxies"] = {"https": proxy.url}
        with MtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path, **options) as transport:
            response = transport.send(_get(emu.resource_url + SECRET, token))
            assert response.status_code == 200, response.text()
            assert wait_record(emu).cert_thumbprint == handmade.binding.thumbprint
            # and a token-less request through the same proxy carries no certificate
            emu.last_resource_request = None
            transport.send(_get(emu.resource_url + SECRET, None))
            assert wait_record(emu).cert_thumbprint is None
    port = emu.resource_url.rsplit(":", 1)[1]
    assert proxy.tunnels == [f"localhost:{port}", f"localhost:{port}"]


def test_streaming_download_and_timeouts(handmade: HandmadeCredential, emu: Emulator) -> None:
    emu.blobs["big"] = {"data.bin": bytes(range(256)) * 4096}  # 1 MiB
    token = handmade.get_token_info(_scope(emu)).token
    with MtlsPopTransport(
        handmade, connection_verify=emu.ca_bundle_path, connection_timeout=5, read_timeout=5
    ) as transport:
        pipeline = Pipeline(transport=transport, policies=[])
        request = _get(emu.resource_url + "/big/data.bin", token)
        response = pipeline.run(request, stream=True).http_response
        assert response.status_code == 200
        chunks = list(response.iter_bytes())
        assert len(chunks) > 1
        assert b"".join(chunks) == emu.blobs["big"]["data.bin"]


def test_retire_and_close_are_idempotent(handmade: HandmadeCredential, emu: Emulator) -> None:
    token = handmade.get_token_info(_scope(emu)).token
    transport = MtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path)
    transport.send(_get(emu.resource_url + SECRET, token))
    transport.retire(handmade.binding)
    transport.retire(handmade.binding)
    assert transport.send(_get(emu.resource_url + SECRET, token)).status_code == 200  # reopens
    transport.close()
    transport.close()
    with pytest.raises(ValueError):
        transport.send(_get(emu.resource_url + SECRET, token))


def test_concurrent_first_use_makes_one_pool(handmade: HandmadeCredential, emu: Emulator) -> None:
    token = handmade.get_token_info(_scope(emu)).token
    barrier = threading.Barrier(6)
    with MtlsPopTransport(handmade, connection_verify=emu.ca_bundle_path) as transport:

        def call() -> int:
            barrier.wait()
            return transport.send(_get(emu.resource_url + SECRET, token)).status_code

        with ThreadPoolExecutor(6) as pool:
            assert [f.result() for f in [pool.submit(call) for _ in range(6)]] == [200] * 6
        assert len(transport._bound[handmade.binding]) == 1
