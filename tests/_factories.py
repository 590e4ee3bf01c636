"""Credential factories for tests against the emulator (sync and async share the options)."""

from __future__ import annotations

from typing import Any

from azure_msiv2_credential import MsiV2ManagedIdentityCredential, SoftwareKeyProvider
from azure_msiv2_credential.emulator import Emulator


def _no_sleep(_: float) -> None:
    """Retries in tests happen at once: the retry *rule* is tested on its own in test_imds.py."""


def v2_options(emu: Emulator, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "mtls_proof_of_possession": True,
        "key_provider": SoftwareKeyProvider(),
        "connection_verify": emu.ca_bundle_path,
        "_sleep": _no_sleep,
    }
    options.update(overrides)
    return options


def sync_credential(emu: Emulator, **overrides: Any) -> MsiV2ManagedIdentityCredential:
    return MsiV2ManagedIdentityCredential(**v2_options(emu, **overrides))
