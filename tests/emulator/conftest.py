"""Fixtures for the emulator tests: shared keys, a running emulator reset per test, the client flow."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from azure_msiv2_credential.emulator import Emulator, Identity

from ._helpers import Minted, issue, token_request, valid_csr, write_pair

# RSA generation is the slow part: share keys across the session.


@pytest.fixture(scope="session")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def _running() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture
def emu(_running: Emulator) -> Iterator[Emulator]:
    """The module's emulator, with settings, faults, counters and records back to their start state."""
    _running.reset()
    yield _running
    _running.reset()


@pytest.fixture
def mint(emu: Emulator, key: rsa.RSAPrivateKey, tmp_path: Path) -> Callable[..., Minted]:
    """Get a client certificate from issuecredential (optionally for another identity or key)."""
    counter = iter(range(1000))

    def _mint(identity: Identity | None = None, private_key: rsa.RSAPrivateKey | None = None) -> Minted:
        identity = identity or emu.system_identity
        private_key = private_key or key
        query = "" if identity.system_assigned else f"&client_id={identity.client_id}"
        response = issue(emu, valid_csr(emu, private_key, identity), query)
        assert response.status_code == 200, response.text
        payload = response.json()
        cert = x509.load_der_x509_certificate(base64.b64decode(payload["certificate"]))
        cert_path, key_path = write_pair(tmp_path, f"client{next(counter)}", cert, private_key)
        return Minted(identity, cert, cert_path, key_path, payload)

    return _mint


@pytest.fixture
def pop(emu: Emulator, mint: Callable[..., Minted]) -> Callable[..., tuple[Minted, str]]:
    """A client certificate plus an mtls_pop token bound to it, for the resource."""

    def _pop(scope: str | None = None) -> tuple[Minted, str]:
        minted = mint()
        response = token_request(
            emu, minted.cert, client_id=minted.identity.client_id, scope=scope or f"{emu.resource_url}/.default"
        )
        assert response.status_code == 200, response.text
        return minted, str(response.json()["access_token"])

    return _pop
