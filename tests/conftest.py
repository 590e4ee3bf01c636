"""Fixtures shared by the whole suite: one emulator per session, reset before each test that uses it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from azure_msiv2_credential.emulator import Emulator

from ._helpers import METHODS, Factory, FakeClock, credential

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


@pytest.fixture
def clock() -> FakeClock:
    """The credential's clock, moved by the test (the emulator keeps real time)."""
    return FakeClock()


@pytest.fixture
def make(emulator: Emulator, clock: FakeClock) -> Iterator[Factory]:
    """Builds MSI v2 credentials against the emulator on ``clock``; closes them after the test."""
    made: list[Any] = []

    def _make(**kwargs: Any) -> Any:
        made.append(credential(emulator, clock, **kwargs))
        return made[-1]

    yield _make
    for cred in made:
        cred.close()


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    """Each behaviour test runs through ``get_token`` and through ``get_token_info``."""
    return str(request.param)
