"""Bindings made by hand against the emulator, without the credential: the transport's own test bed.

Walks PROTOCOL.md's steps directly (metadata, CSR, issuecredential, token leg over mTLS with
``BindingTransport``) and registers each token in a ``BindingRegistry``, as the credential does.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Optional

import requests
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline import Pipeline
from azure.core.rest import HttpRequest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from azure_msiv2_credential._binding import Binding, x5t_s256
from azure_msiv2_credential._csr import build_csr
from azure_msiv2_credential._registry import BindingRegistry
from azure_msiv2_credential.emulator import Emulator, ResourceRequest
from azure_msiv2_credential.keys import BindingKey, SoftwareKeyProvider
from azure_msiv2_credential.transport import BindingTransport

API = "cred-api-version=2.0"
_SPKI = PublicFormat.SubjectPublicKeyInfo


def mint_binding(emu: Emulator, key: Optional[BindingKey] = None) -> Binding:
    """Steps 1-6: a fresh certificate from the emulator for ``key`` (a new software key by default)."""
    key = key or SoftwareKeyProvider().get_key()
    headers = {"Metadata": "true", "x-ms-client-request-id": str(uuid.uuid4())}
    meta = requests.get(f"{emu.imds_url}/metadata/identity/getplatformmetadata?{API}", headers=headers, timeout=10)
    meta.raise_for_status()
    info = meta.json()
    csr = build_csr(key, client_id=info["clientId"], tenant_id=info["tenantId"], cu_id=info["cuId"])
    issued = requests.post(
        f"{emu.imds_url}/metadata/identity/issuecredential?{API}",
        headers=headers,
        json={"csr": base64.b64encode(csr).decode("ascii")},
        timeout=10,
    )
    issued.raise_for_status()
    body = issued.json()
    der = base64.b64decode(body["certificate"])
    cert = x509.load_der_x509_certificate(der)
    not_before = cert.not_valid_before_utc.timestamp()
    not_after = cert.not_valid_after_utc.timestamp()
    assert cert.public_key().public_bytes(Encoding.DER, _SPKI) == key.public_key().public_bytes(Encoding.DER, _SPKI)
    return Binding(
        certificate=cert,
        certificate_der=der,
        key=key,
        thumbprint=x5t_s256(der),
        not_before=not_before,
        not_after=not_after,
        rotate_at=not_before + (not_after - not_before) / 2,
        client_id=body["client_id"],
        tenant_id=body["tenant_id"],
        token_endpoint=f"{body['mtls_authentication_endpoint'].rstrip('/')}/{body['tenant_id']}/oauth2/v2.0/token",
        identity_type=body["identity_type"],
        attested=False,
    )


def request_token(
    binding: Binding, scope: str, ca_bundle: str, transport: Optional[BindingTransport] = None
) -> tuple[str, float]:
    """Step 7, the way the credential's token leg does it: a Pipeline over ``BindingTransport``."""
    request = HttpRequest(
        "POST",
        binding.token_endpoint,
        data={
            "grant_type": "client_credentials",
            "client_id": binding.client_id,
            "scope": scope,
            "token_type": "mtls_pop",
        },
    )
    own = transport is None
    transport = transport or BindingTransport(connection_verify=ca_bundle)
    try:
        response = Pipeline(transport=transport, policies=[]).run(request, msiv2_binding=binding).http_response
        response.raise_for_status()
        payload = response.json()
    finally:
        if own:
            transport.close()
    assert payload["token_type"].lower() == "mtls_pop"
    return payload["access_token"], time.time() + float(payload["expires_in"])


class HandmadeCredential:
    """A stand-in for the MSI v2 credential: one binding per instance, tokens registered per scope."""

    def __init__(self, emu: Emulator, registry: Optional[BindingRegistry] = None) -> None:
        self._emu = emu
        self.binding_registry = registry if registry is not None else BindingRegistry()
        self.binding = mint_binding(emu)
        self.binding_registry.activate(self.binding)
        self._tokens: dict[str, tuple[str, float]] = {}

    def rotate(self) -> Binding:
        """Mint a new binding and stop using the old one (it retires once its tokens expire)."""
        old, self.binding = self.binding, mint_binding(self._emu)
        self.binding_registry.activate(self.binding)
        self.binding_registry.deactivate(old)
        self._tokens.clear()
        return old

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        scope = scopes[0]
        cached = self._tokens.get(scope)
        if cached is None:
            cached = request_token(self.binding, scope, self._emu.ca_bundle_path)
            self.binding_registry.register(cached[0], self.binding, cached[1])
            self._tokens[scope] = cached
        return AccessTokenInfo(cached[0], int(cached[1]), token_type="mtls_pop")

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        info = self.get_token_info(*scopes)
        return AccessToken(info.token, info.expires_on)

    def close(self) -> None:
        pass

    def __enter__(self) -> HandmadeCredential:
        return self

    def __exit__(self, *args: object) -> None:
        pass


def wait_record(emu: Emulator, timeout: float = 5.0) -> ResourceRequest:
    """The resource's record of the last request.

    The emulator records a request *before* it sends the answer, so once the client holds the response
    the record is there; the wait only guards against a test asking before its request went out.
    Callers set ``emu.last_resource_request = None`` before the request they want to see (or read the
    append-only ``emu.resource_requests``).
    """
    deadline = time.monotonic() + timeout
    while emu.last_resource_request is None:
        if time.monotonic() > deadline:
            raise AssertionError("the resource recorded no request")
        time.sleep(0.002)
    return emu.last_resource_request
