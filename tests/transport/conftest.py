"""Fixtures: the session emulator made pristine for transport tests, and hand-made MSI v2 bindings."""

from __future__ import annotations

from typing import Any

import pytest

import azure_msiv2_credential
from azure_msiv2_credential import aio
from azure_msiv2_credential.emulator import Emulator

from ._handmade import HandmadeCredential

_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    """The suite's emulator: IMDS env set, and ``Emulator.reset()`` before and after (by ``emulator``)."""
    return emulator


@pytest.fixture
def imds_env(emu: Emulator) -> Emulator:
    """``emu``, named for tests that rely on AZURE_POD_IDENTITY_AUTHORITY_HOST pointing at it."""
    return emu


@pytest.fixture
def handmade(emu: Emulator) -> HandmadeCredential:
    return HandmadeCredential(emu)


@pytest.fixture(autouse=True)
def _no_ambient_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide about proxies themselves; an inherited proxy or NO_PROXY would change what they test."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def real_credential_class(asynchronous: bool = False) -> Any:
    """The credential class (sync or async); a missing one is a failure, not a skip."""
    return aio.MsiV2ManagedIdentityCredential if asynchronous else azure_msiv2_credential.MsiV2ManagedIdentityCredential
