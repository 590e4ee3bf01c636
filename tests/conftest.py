"""Fixtures shared by the whole suite: one emulator per session, reset before each test that uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from azure_msiv2_credential.emulator import Emulator

#: Nothing listens on the discard port of loopback: a test that forgets to point at the emulator gets a fast
#: "connection refused" instead of sending traffic to the real link-local IMDS address.
UNREACHABLE_IMDS = "http://127.0.0.1:9"


AMBIENT_IDENTITY_VARIABLES = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_AUTHORITY_HOST",
)
"""Variables that would route a credential (or a chain) to some other identity source: never inherited."""


@pytest.fixture(autouse=True)
def _never_the_real_imds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", UNREACHABLE_IMDS)
    for name in AMBIENT_IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def _session_emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture
def emulator(_session_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """The emulator, pointed at by AZURE_POD_IDENTITY_AUTHORITY_HOST, reset to its state at start."""
    emu = _session_emulator
    emu.reset()
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emu.imds_url)
    monkeypatch.delenv("MSAL_MI_DISABLE_IMDS_V2", raising=False)
    yield emu
    emu.reset()
