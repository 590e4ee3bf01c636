"""The sync credential in a ChainedTokenCredential, the gating table, and close/context-manager forwarding."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import ChainedTokenCredential, CredentialUnavailableError

from azure_msiv2_credential import (
    ErrorCode,
    MsiV2Error,
    MsiV2ManagedIdentityCredential,
    SoftwareKeyProvider,
)
from azure_msiv2_credential.emulator import Emulator

from ._helpers import (
    RESOURCE,
    SCOPE,
    Factory,
    StaticCredential,
    acquire,
    calls,
    closed_port_url,
    credential,
)

COLD = {"getplatformmetadata": 1, "issuecredential": 1, "token": 1}
#: The chain's first IMDS contact is a ~1 s probe; anything near the 3 s injected delay means no probe.
PROBE_BUDGET = 2.0


def _no_sleep(seconds: float) -> None:
    """Retries happen at once here; the retry *rule* is tested in test_imds.py."""


# --- 4. chain semantics: unavailable -> the chain moves on ---------------------------------------------
def test_chain_moves_on_when_imds_is_unreachable(
    emulator: Emulator, make: Factory, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", closed_port_url())
    fallback = StaticCredential()
    chain = ChainedTokenCredential(make(), fallback)
    start = time.monotonic()
    token = acquire(chain, method, SCOPE)
    assert time.monotonic() - start < PROBE_BUDGET
    assert token.token == StaticCredential.TOKEN
    assert fallback.calls == 1


def test_chain_moves_on_on_a_v1_only_host(emulator: Emulator, make: Factory, method: str) -> None:
    emulator.v1_only = True
    fallback = StaticCredential()
    chain = ChainedTokenCredential(make(), fallback)
    start = time.monotonic()
    token = acquire(chain, method, SCOPE)
    assert time.monotonic() - start < PROBE_BUDGET
    assert token.token == StaticCredential.TOKEN
    assert fallback.calls == 1
    assert calls(emulator) == {"getplatformmetadata": 1}  # the probe is not retried


@pytest.mark.parametrize("value", ["1", "true", "TRUE"])
def test_chain_moves_on_when_the_kill_switch_is_set(
    emulator: Emulator, make: Factory, method: str, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MSAL_MI_DISABLE_IMDS_V2", value)
    fallback = StaticCredential()
    token = acquire(ChainedTokenCredential(make(), fallback), method, SCOPE)
    assert token.token == StaticCredential.TOKEN
    assert fallback.calls == 1
    assert calls(emulator) == {}  # no I/O at all


@pytest.mark.parametrize("value", ["0", "false", ""])
def test_kill_switch_other_values_leave_msi_v2_on(
    emulator: Emulator, make: Factory, method: str, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MSAL_MI_DISABLE_IMDS_V2", value)
    fallback = StaticCredential()
    token = acquire(ChainedTokenCredential(make(), fallback), method, SCOPE)
    assert emulator.decode_token(token.token)["aud"] == RESOURCE
    assert fallback.calls == 0


@pytest.mark.parametrize(
    ("endpoint", "fault", "params", "code"),
    [
        ("issuecredential", "status", {"status": 400}, ErrorCode.IMDS_ERROR),
        ("token", "bearer", {}, ErrorCode.TOKEN_RESPONSE_INVALID),
        ("token", "wrong_cnf", {}, ErrorCode.TOKEN_BINDING_MISMATCH),
        ("issuecredential", "foreign_key_cert", {}, ErrorCode.CERTIFICATE_INVALID),
    ],
    ids=["issuecredential-400", "bearer", "wrong-cnf", "foreign-key-cert"],
)
def test_chain_stops_on_a_failure(
    emulator: Emulator, make: Factory, method: str, endpoint: str, fault: str, params: dict[str, Any], code: str
) -> None:
    emulator.inject(endpoint, fault, **params)
    fallback = StaticCredential()
    with pytest.raises(ClientAuthenticationError) as caught:
        acquire(ChainedTokenCredential(make(), fallback), method, SCOPE)
    assert not isinstance(caught.value, CredentialUnavailableError)
    assert code in caught.value.message
    assert fallback.calls == 0  # never reached


# --- 4. the error types themselves ----------------------------------------------------------------------
def _unreachable(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", closed_port_url())


def _v1_only(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator.v1_only = True


def _kill_switch(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSAL_MI_DISABLE_IMDS_V2", "1")


@pytest.mark.parametrize("setup", [_unreachable, _v1_only, _kill_switch], ids=["unreachable", "v1-only", "disabled"])
def test_unavailable_is_both_msiv2_error_and_credential_unavailable(
    emulator: Emulator,
    make: Factory,
    method: str,
    monkeypatch: pytest.MonkeyPatch,
    setup: Callable[[Emulator, pytest.MonkeyPatch], None],
) -> None:
    setup(emulator, monkeypatch)
    cred = make(_sleep=_no_sleep)  # outside a chain a 404 is retried (it may be provisioning)
    with pytest.raises(MsiV2Error) as caught:
        acquire(cred, method, SCOPE)
    assert isinstance(caught.value, CredentialUnavailableError)
    assert isinstance(caught.value, ClientAuthenticationError)


def test_a_failure_is_not_credential_unavailable(emulator: Emulator, make: Factory, method: str) -> None:
    emulator.inject("issuecredential", "status", status=400)
    with pytest.raises(MsiV2Error) as caught:
        acquire(make(), method, SCOPE)
    assert not isinstance(caught.value, CredentialUnavailableError)
    assert caught.value.error_code == ErrorCode.IMDS_ERROR


# --- 4. the chain probe -----------------------------------------------------------------------------------
def test_first_contact_in_a_chain_is_a_short_probe(emulator: Emulator, make: Factory, method: str) -> None:
    emulator.inject("getplatformmetadata", "delay", seconds=3)
    fallback = StaticCredential()
    start = time.monotonic()
    token = acquire(ChainedTokenCredential(make(), fallback), method, SCOPE)
    assert time.monotonic() - start < PROBE_BUDGET
    assert token.token == StaticCredential.TOKEN
    assert calls(emulator) == {"getplatformmetadata": 1}


def test_a_probe_that_answers_lets_the_chain_use_msi_v2(emulator: Emulator, make: Factory, method: str) -> None:
    fallback = StaticCredential()
    chain = ChainedTokenCredential(make(), fallback)
    token = acquire(chain, method, SCOPE)
    assert emulator.decode_token(token.token)["aud"] == RESOURCE
    assert fallback.calls == 0
    assert calls(emulator) == COLD


def test_outside_a_chain_imds_errors_are_retried(emulator: Emulator, make: Factory, method: str) -> None:
    slept: list[float] = []
    emulator.inject("getplatformmetadata", "status", status=500)
    token = acquire(make(_sleep=slept.append), method, SCOPE)
    assert emulator.decode_token(token.token)["aud"] == RESOURCE
    assert calls(emulator) == {"getplatformmetadata": 2, "issuecredential": 1, "token": 1}
    assert len(slept) == 1
    assert 0.5 <= slept[0] <= 1.5  # the first backoff step is about 1 s


def test_inside_a_chain_a_probe_that_reaches_imds_retries(emulator: Emulator, make: Factory, method: str) -> None:
    # A transient 500 from IMDS itself is retried by the usual rule: one blip must not stop the chain.
    slept: list[float] = []
    emulator.inject("getplatformmetadata", "status", status=500)
    token = acquire(ChainedTokenCredential(make(_sleep=slept.append), StaticCredential()), method, SCOPE)
    assert token.token != StaticCredential.TOKEN
    assert len(slept) == 1
    assert calls(emulator)["getplatformmetadata"] == 2


def test_inside_a_chain_a_v1_only_probe_is_not_retried(emulator: Emulator, make: Factory, method: str) -> None:
    slept: list[float] = []
    emulator.v1_only = True
    cred = make(_sleep=slept.append)
    token = acquire(ChainedTokenCredential(cred, StaticCredential()), method, SCOPE)
    assert token.token == StaticCredential.TOKEN
    assert slept == []
    assert calls(emulator) == {"getplatformmetadata": 1}
    # The verdict is remembered: the next call moves on without asking IMDS again.
    acquire(ChainedTokenCredential(cred, StaticCredential()), method, SCOPE)
    assert calls(emulator) == {"getplatformmetadata": 1}


# --- 5. gating table (DESIGN.md §2) -----------------------------------------------------------------------
def test_pop_false_delegates_to_azure_identity_v1(emulator: Emulator, method: str) -> None:
    with MsiV2ManagedIdentityCredential() as cred:
        token = acquire(cred, method, SCOPE)
    assert calls(emulator) == {"v1token": 1}
    claims = emulator.decode_token(token.token)
    assert claims["aud"] == RESOURCE
    assert claims["appid"] == emulator.system_identity.client_id
    assert "cnf" not in claims
    if method == "get_token_info":
        assert token.token_type == "Bearer"  # type: ignore[union-attr]
    with pytest.raises(AttributeError):
        _ = cred.binding_registry


def test_pop_false_user_assigned_is_forwarded(emulator: Emulator) -> None:
    uami = emulator.identities[1]
    with MsiV2ManagedIdentityCredential(client_id=uami.client_id) as cred:
        token = cred.get_token(SCOPE)
    assert emulator.decode_token(token.token)["appid"] == uami.client_id
    assert calls(emulator) == {"v1token": 1}


@pytest.mark.parametrize("key_provider", [None, "software"])
def test_attestation_without_pop_is_a_configuration_error_before_io(emulator: Emulator, key_provider: Any) -> None:
    kwargs = {"key_provider": SoftwareKeyProvider()} if key_provider else {}
    with pytest.raises(MsiV2Error) as caught:
        MsiV2ManagedIdentityCredential(with_attestation_support=True, **kwargs)
    assert caught.value.error_code == ErrorCode.ATTESTATION_REQUIRES_POP == "MSI_V2_ATTESTATION_REQUIRES_POP"
    assert isinstance(caught.value, ValueError)
    assert not isinstance(caught.value, CredentialUnavailableError)
    assert calls(emulator) == {}


@pytest.mark.parametrize("option", ["key_provider", "minimum_binding_strength"])
def test_v2_options_without_pop_are_refused(emulator: Emulator, option: str) -> None:
    value = SoftwareKeyProvider() if option == "key_provider" else "keyguard"
    with pytest.raises(ValueError, match=option):
        MsiV2ManagedIdentityCredential(**{option: value})
    assert calls(emulator) == {}


def test_attestation_with_a_software_key_is_refused_before_io(emulator: Emulator) -> None:
    with pytest.raises(MsiV2Error) as caught:
        credential(emulator, with_attestation_support=True)
    assert caught.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE
    assert calls(emulator) == {}


# --- 6. close and the context manager forward exactly once ----------------------------------------------
class CountingTransport(RequestsTransport):
    """A real transport that counts how often it is entered, exited and closed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = self.exited = self.closed = 0

    def __enter__(self) -> CountingTransport:
        self.entered += 1
        super().__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        self.exited += 1
        super().__exit__(*args)

    def close(self) -> None:
        self.closed += 1
        super().close()


def test_v2_close_and_context_manager_close_once(emulator: Emulator, method: str) -> None:
    transport = CountingTransport()
    cred = credential(emulator, transport=transport)
    with cred as entered:
        assert entered is cred
        acquire(cred, method, SCOPE)
    assert (transport.exited, transport.closed) == (1, 1)
    cred.close()
    cred.close()
    assert (transport.exited, transport.closed) == (1, 1)


def test_v2_close_without_use(emulator: Emulator) -> None:
    transport = CountingTransport()
    cred = credential(emulator, transport=transport)
    cred.close()
    with cred:
        pass
    assert (transport.exited, transport.closed) == (1, 1)
    assert calls(emulator) == {}


def test_v1_delegate_context_manager_forwards_once(emulator: Emulator, method: str) -> None:
    transport = CountingTransport()
    cred = MsiV2ManagedIdentityCredential(transport=transport)
    with cred as entered:
        assert entered is cred
        assert transport.entered == 1
        acquire(cred, method, SCOPE)
    assert (transport.entered, transport.exited) == (1, 1)
    assert calls(emulator) == {"v1token": 1}


def test_v1_delegate_close_forwards_once(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    cred = MsiV2ManagedIdentityCredential()
    counts = {"close": 0, "__enter__": 0, "__exit__": 0}
    for name in counts:

        def counted(*args: Any, _name: str = name) -> Any:
            counts[_name] += 1
            return None

        monkeypatch.setattr(cred._delegate, name, counted)  # stubs: count what *we* forward, nothing else
    cred.close()
    assert counts == {"close": 1, "__enter__": 0, "__exit__": 0}
    with cred as entered:
        assert entered is cred
        assert counts == {"close": 1, "__enter__": 1, "__exit__": 0}
    assert counts == {"close": 1, "__enter__": 1, "__exit__": 1}
