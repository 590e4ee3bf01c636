"""The mTLS token service: binding, request validation, TLS-level rejection."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from azure_msiv2_credential.emulator import Emulator

from ._helpers import Minted, token_request, wait_for, write_pair


def b64url_json(segment: str) -> dict[str, object]:
    value: dict[str, object] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return value


def x5t_s256(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_token_is_mtls_pop_and_bound_to_the_presented_certificate(emu: Emulator, mint: Callable[..., Minted]) -> None:
    minted = mint()
    response = token_request(emu, minted.cert, client_id=minted.identity.client_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "mtls_pop"
    assert body["expires_in"] == 3600

    token = body["access_token"]
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = b64url_json(header_b64)
    assert header["alg"] == "RS256" and header["kid"]
    # RS256 by the token-signing key, which is not the CA key.
    emu.token_signing_public_key.verify(
        base64.urlsafe_b64decode(signature_b64 + "=" * (-len(signature_b64) % 4)),
        f"{header_b64}.{payload_b64}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    assert emu.token_signing_public_key != emu.ca_certificate.public_key()

    claims = b64url_json(payload_b64)
    assert claims == emu.decode_token(token)
    now = time.time()
    assert claims["cnf"] == {"x5t#S256": x5t_s256(minted.certificate)}
    assert claims["aud"] == "https://vault.azure.net"
    assert claims["tid"] == emu.tenant_id
    assert claims["appid"] == claims["azp"] == minted.identity.client_id
    assert claims["oid"] == minted.identity.object_id
    assert str(claims["iss"]).startswith("https://login.microsoftonline.com/")
    assert isinstance(claims["exp"], int) and abs(claims["exp"] - (now + 3600)) < 5
    assert isinstance(claims["nbf"], int) and claims["nbf"] <= now + 1
    assert isinstance(claims["iat"], int)
    assert "xms_claims" not in claims
    assert emu.calls["token"] == 1


def test_user_assigned_identity_token(emu: Emulator, mint: Callable[..., Minted]) -> None:
    uami = emu.identities[2]
    minted = mint(uami)
    response = token_request(emu, minted.cert, client_id=uami.client_id, scope="https://storage.azure.com/.default")
    assert response.status_code == 200, response.text
    claims = emu.decode_token(response.json()["access_token"])
    assert claims["oid"] == uami.object_id
    assert claims["aud"] == "https://storage.azure.com"


def test_lifetimes_and_refresh_in_follow_settings(emu: Emulator, mint: Callable[..., Minted]) -> None:
    emu.token_lifetime = 120
    emu.refresh_in = 60
    minted = mint()
    body = token_request(emu, minted.cert, client_id=minted.identity.client_id).json()
    assert body["expires_in"] == 120
    assert body["refresh_in"] == 60


def test_claims_are_echoed_into_the_token(emu: Emulator, mint: Callable[..., Minted]) -> None:
    minted = mint()
    claims = '{"access_token":{"xms_cc":{"values":["cp1"]}}}'
    response = token_request(emu, minted.cert, client_id=minted.identity.client_id, extra={"claims": claims})
    assert response.status_code == 200, response.text
    assert emu.decode_token(response.json()["access_token"])["xms_claims"] == claims


@pytest.mark.parametrize(
    ("kwargs", "error", "description"),
    [
        ({"tenant": "00000000-0000-0000-0000-000000000000"}, "invalid_request", "AADSTS90002"),
        ({"extra": {"grant_type": "password"}}, "unsupported_grant_type", "AADSTS70003"),
        ({"drop": ("client_id",)}, "invalid_request", "AADSTS900144"),
        ({"scope": "https://vault.azure.net/.default https://storage.azure.com/.default"}, "invalid_scope", ""),
        ({"scope": "https://vault.azure.net/secrets.read"}, "invalid_scope", ""),
        ({"drop": ("scope",)}, "invalid_scope", ""),
        ({"drop": ("token_type",)}, "invalid_request", "token_type must be mtls_pop"),
        ({"extra": {"token_type": "pop"}}, "invalid_request", "token_type must be mtls_pop"),
        ({"extra": {"claims": "{not json"}}, "invalid_request", "AADSTS50022"),
        ({"extra": {"claims": "[1]"}}, "invalid_request", "AADSTS50022"),
    ],
)
def test_request_validation(
    emu: Emulator,
    mint: Callable[..., Minted],
    kwargs: dict[str, object],
    error: str,
    description: str,
) -> None:
    minted = mint()
    response = token_request(emu, minted.cert, client_id=minted.identity.client_id, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == error
    assert body["error_description"].startswith(description)


def test_client_id_must_match_the_certificate(emu: Emulator, mint: Callable[..., Minted]) -> None:
    minted = mint()  # system-assigned certificate
    response = token_request(emu, minted.cert, client_id=emu.identities[1].client_id)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_client",
        "error_description": "AADSTS700027: client_id does not match the certificate subject",
    }


def test_certificate_for_an_unknown_identity(emu: Emulator, key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-an-identity")])
    cert = emu.issue_client_certificate(subject, key.public_key())
    response = token_request(emu, write_pair(tmp_path, "stranger", cert, key), client_id="not-an-identity")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client"
    assert response.json()["error_description"].startswith("AADSTS700016")


def test_no_client_certificate_fails_the_handshake(emu: Emulator) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        token_request(emu, None, client_id=emu.system_identity.client_id)
    assert wait_for(lambda: emu.tls_rejections["token"] == 1)
    assert emu.calls["token"] == 0


def test_certificate_from_a_foreign_ca_fails_the_handshake(
    emu: Emulator, key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    # Self-signed, same subject as a genuine one: only the issuer is wrong.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, emu.system_identity.client_id)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(requests.exceptions.ConnectionError):
        token_request(emu, write_pair(tmp_path, "foreign", cert, key), client_id=emu.system_identity.client_id)
    assert wait_for(lambda: emu.tls_rejections["token"] == 1)
    assert emu.calls["token"] == 0


def test_token_service_certificate_is_trusted_through_the_ca_bundle(emu: Emulator) -> None:
    """Without the CA bundle the client refuses the server: verification is never switched off."""
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(f"{emu.token_service_url}/{emu.tenant_id}/oauth2/v2.0/token", timeout=10)


def test_unknown_path_and_method(emu: Emulator, mint: Callable[..., Minted]) -> None:
    minted = mint()
    url = f"{emu.token_service_url}/{emu.tenant_id}/oauth2/v2.0/token"
    assert requests.get(url, cert=minted.cert, verify=emu.ca_bundle_path, timeout=10).status_code == 400
    response = requests.post(
        f"{emu.token_service_url}/{emu.tenant_id}/oauth2/token", cert=minted.cert, verify=emu.ca_bundle_path, timeout=10
    )
    assert response.status_code == 404
    assert emu.calls["token"] == 1  # only the request on the token path counts
