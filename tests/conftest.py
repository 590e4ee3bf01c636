"""Fixtures shared by the whole suite: one emulator per session, reset before each test that uses it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from azure_msiv2_credential.emulator import Emulator

#: Nothing listens on the discard port of loopback: a test that forgets to point at the emulator gets a fast
#: "connection refused" instead of sending traffic to the real link-local IMDS address.
UNREACHABLE_IMDS = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _never_the_real_imds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", UNREACHABLE_IMDS)
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def _session_emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture
def emulator(_session_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """The emulator, pointed at by AZURE_POD_IDENTITY_AUTHORITY_HOST, with no faults and zeroed counters."""
    emu = _session_emulator
    saved: dict[str, Any] = {
        name: getattr(emu, name)
        for name in ("require_attestation", "cert_lifetime", "token_lifetime", "refresh_in", "v1_only")
    }
    emu.clear_faults()
    emu.reset_calls()
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emu.imds_url)
    monkeypatch.delenv("MSAL_MI_DISABLE_IMDS_V2", raising=False)
    yield emu
    emu.clear_faults()
    for name, value in saved.items():
        setattr(emu, name, value)
