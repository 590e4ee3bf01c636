"""Fixtures: the session emulator made pristine for transport tests, and hand-made MSI v2 bindings."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Iterator
from typing import Any

import pytest

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
def emu(emulator: Emulator) -> Iterator[Emulator]:
    """The suite's emulator (IMDS env set, faults cleared) with its data and last record restored too."""
    saved_secrets, saved_blobs = dict(emulator.secrets), copy.deepcopy(emulator.blobs)
    emulator.last_resource_request = None
    yield emulator
    emulator.secrets, emulator.blobs = saved_secrets, saved_blobs


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
    """The credential class (sync or async), or skip while it does not exist yet."""
    module = "azure_msiv2_credential.aio" if asynchronous else "azure_msiv2_credential"
    try:
        return importlib.import_module(module).MsiV2ManagedIdentityCredential
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"MsiV2ManagedIdentityCredential is not available yet: {exc}")
