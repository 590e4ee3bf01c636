"""The whole KeyGuard path on Linux: fake NCrypt key -> CSR -> fake attestation -> issuecredential ->
fake WinHTTP mTLS token leg -> bound resource call, through the unchanged binding code and the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from azure_msiv2_credential import MsiV2Error, MsiV2ManagedIdentityCredential
from azure_msiv2_credential._errors import ErrorCode
from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.keys.keyguard import KeyGuardKeyProvider

from ._fakes import FakeWin


@pytest.fixture
def keyguard_host(emulator: Emulator, fakewin: FakeWin, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """The emulator, trusted by the fake WinHTTP's 'machine store' as it would be on a Windows test VM."""
    monkeypatch.setenv("FAKE_WINHTTP_TRUSTED_CA_FILE", emulator.ca_bundle_path)
    yield emulator


@contextmanager
def _credential(emu: Emulator, fakewin: FakeWin, **options: object) -> Iterator[MsiV2ManagedIdentityCredential]:
    """A KeyGuard credential; the caller's provider is the caller's to close (after the credential)."""
    with (
        KeyGuardKeyProvider(libraries=fakewin.libraries) as provider,
        MsiV2ManagedIdentityCredential(
            mtls_proof_of_possession=True,
            key_provider=provider,
            connection_verify=emu.ca_bundle_path,
            _sleep=lambda _: None,
            **options,  # type: ignore[arg-type]
        ) as credential,
    ):
        yield credential


@pytest.mark.parametrize("attest", [False, True])
def test_keyguard_flow_end_to_end(keyguard_host: Emulator, fakewin: FakeWin, attest: bool) -> None:
    emu = keyguard_host
    emu.require_attestation = attest
    with _credential(emu, fakewin, with_attestation_support=attest) as credential:
        info = credential.get_token_info(f"{emu.resource_url}/.default")
        binding = credential.binding_registry.lookup(info.token)
        assert binding is not None
        assert (binding.strength, binding.attested) == ("keyguard", attest)
        assert info.token_type == "mtls_pop"
        claims = emu.decode_token(info.token)
        assert claims["cnf"]["x5t#S256"] == binding.thumbprint
        # a second call is a cache hit: no native attestation, no HTTP
        assert credential.get_token_info(f"{emu.resource_url}/.default") is info
    assert dict(emu.calls) == {"getplatformmetadata": 1, "issuecredential": 1, "token": 1}
    assert fakewin.attestation_calls() == (1 if attest else 0)


def test_attestation_failure_is_fatal_and_never_downgrades(keyguard_host: Emulator, fakewin: FakeWin) -> None:
    fakewin.set_attestation_mode("fail")
    credential = _credential(keyguard_host, fakewin, with_attestation_support=True)
    with credential as cred, pytest.raises(MsiV2Error) as info:
        cred.get_token_info(f"{keyguard_host.resource_url}/.default")
    assert info.value.error_code == ErrorCode.ATTESTATION_FAILED
    assert keyguard_host.calls["issuecredential"] == 0  # no non-attested request instead


def test_no_vbs_means_keyguard_unavailable(keyguard_host: Emulator, fakewin: FakeWin) -> None:
    fakewin.set_vbs(False)
    credential = _credential(keyguard_host, fakewin, with_attestation_support=True)
    with credential as cred, pytest.raises(MsiV2Error) as info:
        cred.get_token_info(f"{keyguard_host.resource_url}/.default")
    assert info.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE
    assert keyguard_host.calls["issuecredential"] == 0


def test_keyguard_floor_met(keyguard_host: Emulator, fakewin: FakeWin) -> None:
    with _credential(keyguard_host, fakewin, minimum_binding_strength="keyguard") as credential:
        assert credential.get_token_info(f"{keyguard_host.resource_url}/.default").token_type == "mtls_pop"


def test_stale_key_after_reboot_is_recreated(keyguard_host: Emulator, fakewin: FakeWin) -> None:
    with _credential(keyguard_host, fakewin) as credential:
        first = credential.binding_registry.lookup(
            credential.get_token_info(f"{keyguard_host.resource_url}/.default").token
        )
    fakewin.reboot()
    with _credential(keyguard_host, fakewin) as credential:
        second = credential.binding_registry.lookup(
            credential.get_token_info(f"{keyguard_host.resource_url}/.default").token
        )
    assert first is not None and second is not None
    assert first.key.public_key().public_numbers() != second.key.public_key().public_numbers()
