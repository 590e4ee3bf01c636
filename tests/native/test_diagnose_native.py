"""``diagnose`` verdicts that need the native fakes: KeyGuard with VBS on/off, the attestation library."""

from __future__ import annotations

import pytest

from azure_msiv2_credential._diagnose import diagnose
from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.keys.keyguard import KeyGuardKeyProvider

from ._fakes import FakeWin


def _check(report, check_id: str):  # type: ignore[no-untyped-def]
    return next(c for c in report.checks if c.id == check_id)


@pytest.mark.parametrize("attest", [False, True])
def test_keyguard_host(emulator: Emulator, fakewin: FakeWin, attest: bool) -> None:
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as provider:
        report = diagnose(
            key_provider=provider,
            with_attestation_support=attest,
            minimum_binding_strength="keyguard",
            attestation_library=fakewin.libraries.attestation,
        )
    assert report.usable
    assert report.capabilities.max_binding_strength == "keyguard"
    assert _check(report, "keyguard").status == "pass"
    library = _check(report, "attestation_library")
    assert library.status == "pass" and "sha256" in library.detail
    assert emulator.calls["issuecredential"] == 0


def test_vbs_off(emulator: Emulator, fakewin: FakeWin) -> None:
    fakewin.set_vbs(False)
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as provider:
        plain = diagnose(key_provider=provider)
        attested = diagnose(
            key_provider=provider, with_attestation_support=True, attestation_library=fakewin.libraries.attestation
        )
    # Without attestation a software-strength fallback is not what the provider offers: KeyGuard failing is
    # a warning for the plain options and a failure when attestation needs it.
    assert _check(plain, "keyguard").status == "warn"
    assert plain.capabilities.max_binding_strength == "software"  # a SoftwareKeyProvider would work
    assert not plain.usable  # ... but the configured KeyGuard provider cannot make a key
    keyguard = _check(attested, "keyguard")
    assert keyguard.status == "fail" and "Virtualization-based Security" in (keyguard.fix or "")
    assert not attested.usable


def test_attestation_library_missing(emulator: Emulator, fakewin: FakeWin, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("AZURE_MSIV2_ATTESTATION_LIB", raising=False)
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as provider:
        report = diagnose(
            key_provider=provider,
            with_attestation_support=True,
            attestation_library=str(tmp_path / "AttestationClientLib.dll"),
        )
        relative = diagnose(
            key_provider=provider, with_attestation_support=True, attestation_library="AttestationClientLib.dll"
        )
    missing = _check(report, "attestation_library")
    assert missing.status == "fail" and "AZURE_MSIV2_ATTESTATION_LIB" in (missing.fix or "")
    assert not report.usable
    assert "absolute" in _check(relative, "attestation_library").detail
