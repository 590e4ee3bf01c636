"""``diagnose``: each verdict against the emulator (native verdicts live in tests/native/test_diagnose_native.py)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from azure_msiv2_credential.__main__ import main
from azure_msiv2_credential._diagnose import SCHEMA_VERSION, diagnose
from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.keys import SoftwareKeyProvider


def _status(report, check_id: str) -> str:  # type: ignore[no-untyped-def]
    return next(c.status for c in report.checks if c.id == check_id)


def test_usable_with_software_key(emulator: Emulator) -> None:
    report = diagnose(key_provider=SoftwareKeyProvider())
    assert report.usable
    assert report.capabilities.max_binding_strength == "software"
    assert [_status(report, c) for c in ("kill_switch", "imds_reachable", "imds_v2", "identity")] == ["pass"] * 4
    assert emulator.calls["issuecredential"] == 0  # diagnose never mints


def test_keyguard_floor_is_not_met_with_software_key(emulator: Emulator) -> None:
    report = diagnose(key_provider=SoftwareKeyProvider(), minimum_binding_strength="keyguard")
    assert not report.usable
    assert _status(report, "binding_strength") == "fail"


def test_unknown_identity(emulator: Emulator) -> None:
    report = diagnose(client_id="00000000-0000-0000-0000-000000000000", key_provider=SoftwareKeyProvider())
    assert not report.usable
    check = next(c for c in report.checks if c.id == "identity")
    assert check.status == "fail" and check.fix


def test_v1_only_host(emulator: Emulator) -> None:
    emulator.v1_only = True
    report = diagnose(key_provider=SoftwareKeyProvider())
    # The probe (no Metadata header) still answers 400 on a v1-only emulator? It must not pass as v2.
    assert not report.usable
    assert report.capabilities.max_binding_strength == "none"
    assert [_status(report, c) for c in ("imds_reachable", "imds_v2", "identity")] == ["pass", "fail", "skip"]


def test_kill_switch(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSAL_MI_DISABLE_IMDS_V2", "1")
    report = diagnose(key_provider=SoftwareKeyProvider())
    assert not report.usable
    assert _status(report, "kill_switch") == "fail"
    assert report.capabilities.max_binding_strength == "none"


def test_unreachable_imds_is_bounded_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # A listening socket that never answers: the probe must give up on its own timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        report = diagnose(key_provider=SoftwareKeyProvider())
        elapsed = time.monotonic() - started
    assert not report.usable
    assert _status(report, "imds_reachable") == "fail"
    assert elapsed < 5


def test_attestation_requested_without_keyguard(emulator: Emulator) -> None:
    report = diagnose(key_provider=SoftwareKeyProvider(), with_attestation_support=True)
    assert not report.usable
    assert _status(report, "keyguard") == "fail"
    assert _status(report, "attestation_library") == "fail"


def test_json_schema_and_exit_code(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", "--software-key", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["schema_version"] == SCHEMA_VERSION
    assert set(document) == {
        "schema_version",
        "msi_v2_usable",
        "max_binding_strength",
        "options",
        "capabilities",
        "checks",
        "elapsed_seconds",
    }
    assert document["msi_v2_usable"] is True
    assert set(document["capabilities"]) == {
        "imds_reachable",
        "imds_v2",
        "keyguard",
        "attestation_library",
        "kill_switch",
        "max_binding_strength",
    }
    for check in document["checks"]:
        assert set(check) == {"id", "status", "detail", "fix"}
        assert check["status"] in {"pass", "fail", "warn", "skip"}
    emulator.v1_only = True
    assert main(["diagnose", "--software-key", "--json"]) == 1


def test_get_capabilities_sync(emulator: Emulator) -> None:
    from ._factories import sync_credential

    with sync_credential(emulator) as credential:
        caps = credential.get_capabilities()
    assert caps.imds_v2 and caps.max_binding_strength == "software" and not caps.kill_switch
    assert emulator.calls["issuecredential"] == 0


async def test_get_capabilities_async(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure_msiv2_credential.aio import MsiV2ManagedIdentityCredential

    from ._factories import v2_options

    monkeypatch.setenv("MSAL_MI_DISABLE_IMDS_V2", "true")
    async with MsiV2ManagedIdentityCredential(**v2_options(emulator, _sleep=None)) as credential:
        caps = await credential.get_capabilities()
    assert caps.kill_switch and caps.max_binding_strength == "none"
