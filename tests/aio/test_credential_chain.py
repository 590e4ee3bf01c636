"""The async credential in azure-identity's async ChainedTokenCredential, the gating table, close forwarding."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import AioHttpTransport
from azure.identity import CredentialUnavailableError
from azure.identity.aio import ChainedTokenCredential

from azure_msiv2_credential import ErrorCode, MsiV2Error, SoftwareKeyProvider
from azure_msiv2_credential.aio import MsiV2ManagedIdentityCredential
from azure_msiv2_credential.emulator import Emulator

from .._helpers import (
    RESOURCE,
    SCOPE,
    AsyncStaticCredential,
    Factory,
    aacquire,
    async_credential,
    calls,
    closed_port_url,
)

COLD = {"getplatformmetadata": 1, "issuecredential": 1, "token": 1}
#: The chain's first IMDS contact is a ~1 s probe; anything near the 3 s injected delay means no probe.
PROBE_BUDGET = 2.0


async def _no_sleep(seconds: float) -> None:
    """Retries happen at once here; the retry *rule* is tested in test_imds.py."""


class RecordingSleep:
    """An async ``_sleep`` that records the delays it is asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


# --- 4. chain semantics: unavailable -> the chain moves on ---------------------------------------------
async def test_chain_moves_on_when_imds_is_unreachable(
    emulator: Emulator, make: Factory, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", closed_port_url())
    fallback = AsyncStaticCredential()
    chain = ChainedTokenCredential(make(), fallback)
    start = time.monotonic()
    token = await aacquire(chain, method, SCOPE)
    assert time.monotonic() - start < PROBE_BUDGET
    assert token.token == AsyncStaticCredential.TOKEN
    assert fallback.calls == 1


async def test_chain_moves_on_on_a_v1_only_host(emulator: Emulator, make: Factory, method: str) -> None:
    emulator.v1_only = True
    fallback = AsyncStaticCredential()
    chain = ChainedTokenCredential(make(), fallback)
    start = time.monotonic()
    token = await aacquire(chain, method, SCOPE)
    assert time.monotonic() - start < PROBE_BUDGET
    assert token.token == AsyncStaticCredential.TOKEN
    assert fallback.calls == 1
    assert calls(emulator) == {"getplatformmetadata": 1}  # the probe is not retried


@pytest.mark.parametrize("value", ["1", "true", "TRUE"])
async def test_chain_moves_on_when_the_kill_switch_is_set(
    emulator: Emulator, make: Factory, method: str, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MSAL_MI_DISABLE_IMDS_V2", value)
    fallback = AsyncStaticCredential()
    token = await aacquire(ChainedTokenCredential(make(), fallback), method, SCOPE)
    assert token.token == AsyncStaticCredential.TOKEN
    assert fallback.calls == 1
    assert calls(emulator) == {}  # no I/O at all


@pytest.mark.parametrize("value", ["0", "false", ""])
async def test_kill_switch_other_values_leave_msi_v2_on(
    emulator: Emulator, make: Factory, method: str, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MSAL_MI_DISABLE_IMDS_V2", value)
    fallback = AsyncStaticCredential()
    token = await aacquire(ChainedTokenCredential(make(), fallback), method, SCOPE)
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
async def test_chain_stops_on_a_failure(
    emulator: Emulator, make: Factory, method: str, endpoint: str, fault: str, params: dict[str, Any], code: str
) -> None:
    emulator.inject(endpoint, fault, **params)
    fallback = AsyncStaticCredential()
    with pytest.raises(ClientAuthenticationError) as caught:
        await aacquire(ChainedTokenCredential(make(), fallback), method, SCOPE)
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
async def test_unavailable_is_both_msiv2_error_and_credential_unavailable(
    emulator: Emulator,
    make: Factory,
    method: str,
    monkeypatch: pytest.MonkeyPatch,
    setup: Callable[[Emulator, pytest.MonkeyPatch], None],
) -> None:
    setup(emulator, monkeypatch)
    cred = make(_sleep=_no_sleep)  # outside a chain a 404 is retried (it may be provisioning)
    with pytest.raises(MsiV2Error) as caught:
        await aacquire(cred, method, SCOPE)
    assert isinstance(caught.value, CredentialUnavailableError)
    assert isinstance(caught.value, ClientAuthenticationError)


async def test_a_failure_is_not_credential_unavailable(emulator: Emulator, make: Factory, method: str) -> None:
    emulator.inject("issuecredential", "status", status=400)
    with pytest.raises(MsiV2Error) as caught:
        await aacquire(make(), method, SCOPE)
    assert not isinstance(caught.value, CredentialUnavailableError)
    assert caught.value.error_code == ErrorCode.IMDS_ERROR


# --- 4. the chain probe -----------------------------------------------------------------------------------
async def test_first_contact_in_a_chain_is_a_short_probe(emulator: Emulator, make: Factory, method: str) -> None:
    emulator.inject("getplatformmetadata", "delay", seconds=3)
    fallback = AsyncStaticCredential()
    start = time.monotonic()
    token = await aacquire(ChainedTokenCredential(make(), fallback), method, SCOPE)
    assert time.monotonic() - start < PROBE_BUDGET
    assert token.token == AsyncStaticCredential.TOKEN
    assert calls(emulator) == {"getplatformmetadata": 1}


async def test_a_probe_that_answers_lets_the_chain_use_msi_v2(emulator: Emulator, make: Factory, method: str) -> None:
    fallback = AsyncStaticCredential()
    chain = ChainedTokenCredential(make(), fallback)
    token = await aacquire(chain, method, SCOPE)
    assert emulator.decode_token(token.token)["aud"] == RESOURCE
    assert fallback.calls == 0
    assert calls(emulator) == COLD


async def test_outside_a_chain_imds_errors_are_retried(emulator: Emulator, make: Factory, method: str) -> None:
    slept = RecordingSleep()
    emulator.inject("getplatformmetadata", "status", status=500)
    token = await aacquire(make(_sleep=slept), method, SCOPE)
    assert emulator.decode_token(token.token)["aud"] == RESOURCE
    assert calls(emulator) == {"getplatformmetadata": 2, "issuecredential": 1, "token": 1}
    assert len(slept.delays) == 1
    assert 0.5 <= slept.delays[0] <= 1.5  # the first backoff step is about 1 s


async def test_inside_a_chain_a_probe_that_reaches_imds_retries(emulator: Emulator, make: Factory, method: str) -> None:
    # A transient 500 from IMDS itself is retried by the usual rule: one blip must not stop the chain.
    slept = RecordingSleep()
    emulator.inject("getplatformmetadata", "status", status=500)
    token = await aacquire(ChainedTokenCredential(make(_sleep=slept), AsyncStaticCredential()), method, SCOPE)
    assert token.token != AsyncStaticCredential.TOKEN
    assert len(slept.delays) == 1
    assert calls(emulator)["getplatformmetadata"] == 2


async def test_inside_a_chain_a_v1_only_probe_is_not_retried(emulator: Emulator, make: Factory, method: str) -> None:
    slept = RecordingSleep()
    emulator.v1_only = True
    cred = make(_sleep=slept)
    token = await aacquire(ChainedTokenCredential(cred, AsyncStaticCredential()), method, SCOPE)
    assert token.token == AsyncStaticCredential.TOKEN
    assert slept.delays == []
    assert calls(emulator) == {"getplatformmetadata": 1}
    # The verdict is remembered: the next call moves on without asking IMDS again.
    await aacquire(ChainedTokenCredential(cred, AsyncStaticCredential()), method, SCOPE)
    assert calls(emulator) == {"getplatformmetadata": 1}


# --- 5. gating table (DESIGN.md §2) -----------------------------------------------------------------------
async def test_pop_false_delegates_to_azure_identity_v1(emulator: Emulator, method: str) -> None:
    async with MsiV2ManagedIdentityCredential() as cred:
        token = await aacquire(cred, method, SCOPE)
    assert calls(emulator) == {"v1token": 1}
    claims = emulator.decode_token(token.token)
    assert claims["aud"] == RESOURCE
    assert claims["appid"] == emulator.system_identity.client_id
    assert "cnf" not in claims
    if method == "get_token_info":
        assert token.token_type == "Bearer"  # type: ignore[union-attr]
    with pytest.raises(AttributeError):
        _ = cred.binding_registry


async def test_pop_false_user_assigned_is_forwarded(emulator: Emulator) -> None:
    uami = emulator.identities[1]
    async with MsiV2ManagedIdentityCredential(client_id=uami.client_id) as cred:
        token = await cred.get_token(SCOPE)
    assert emulator.decode_token(token.token)["appid"] == uami.client_id
    assert calls(emulator) == {"v1token": 1}


@pytest.mark.parametrize("key_provider", [None, "software"])
async def test_attestation_without_pop_is_a_configuration_error_before_io(
    emulator: Emulator, key_provider: Any
) -> None:
    kwargs = {"key_provider": SoftwareKeyProvider()} if key_provider else {}
    with pytest.raises(MsiV2Error) as caught:
        MsiV2ManagedIdentityCredential(with_attestation_support=True, **kwargs)
    assert caught.value.error_code == ErrorCode.ATTESTATION_REQUIRES_POP == "MSI_V2_ATTESTATION_REQUIRES_POP"
    assert isinstance(caught.value, ValueError)
    assert not isinstance(caught.value, CredentialUnavailableError)
    assert calls(emulator) == {}


@pytest.mark.parametrize("option", ["key_provider", "minimum_binding_strength"])
async def test_v2_options_without_pop_are_refused(emulator: Emulator, option: str) -> None:
    value = SoftwareKeyProvider() if option == "key_provider" else "keyguard"
    with pytest.raises(ValueError, match=option):
        MsiV2ManagedIdentityCredential(**{option: value})
    assert calls(emulator) == {}


async def test_attestation_with_a_software_key_is_refused_before_io(emulator: Emulator) -> None:
    with pytest.raises(MsiV2Error) as caught:
        async_credential(emulator, with_attestation_support=True)
    assert caught.value.error_code == ErrorCode.KEYGUARD_UNAVAILABLE
    assert calls(emulator) == {}


# --- 6. close and the context manager forward exactly once ----------------------------------------------
class CountingTransport(AioHttpTransport):
    """A real aiohttp transport that counts how often it is entered, exited and closed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = self.exited = self.closed = 0

    async def __aenter__(self) -> CountingTransport:
        self.entered += 1
        await super().__aenter__()
        return self

    async def __aexit__(self, *args: Any) -> None:
        self.exited += 1
        await super().__aexit__(*args)

    async def close(self) -> None:
        self.closed += 1
        await super().close()


async def test_v2_close_and_context_manager_close_once(emulator: Emulator, method: str) -> None:
    transport = CountingTransport()
    cred = async_credential(emulator, transport=transport)
    async with cred as entered:
        assert entered is cred
        await aacquire(cred, method, SCOPE)
    assert (transport.exited, transport.closed) == (1, 1)
    await cred.close()
    await cred.close()
    assert (transport.exited, transport.closed) == (1, 1)


async def test_v2_close_without_use(emulator: Emulator) -> None:
    transport = CountingTransport()
    cred = async_credential(emulator, transport=transport)
    await cred.close()
    async with cred:
        pass
    assert (transport.exited, transport.closed) == (1, 1)
    assert calls(emulator) == {}


async def test_v1_delegate_context_manager_forwards_once(emulator: Emulator, method: str) -> None:
    transport = CountingTransport()
    cred = MsiV2ManagedIdentityCredential(transport=transport)
    async with cred as entered:
        assert entered is cred
        assert transport.entered == 1
        await aacquire(cred, method, SCOPE)
    assert transport.entered == 1
    assert transport.closed >= 1  # azure-identity closes its own pipeline; we forwarded once (below)
    assert calls(emulator) == {"v1token": 1}


async def test_v1_delegate_close_forwards_once(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    cred = MsiV2ManagedIdentityCredential()
    counts = {"close": 0, "__aenter__": 0, "__aexit__": 0}
    for name in counts:

        async def counted(*args: Any, _name: str = name) -> Any:
            counts[_name] += 1
            return None

        monkeypatch.setattr(cred._delegate, name, counted)  # stubs: count what *we* forward, nothing else
    await cred.close()
    assert counts == {"close": 1, "__aenter__": 0, "__aexit__": 0}
    async with cred as entered:
        assert entered is cred
        assert counts == {"close": 1, "__aenter__": 1, "__aexit__": 0}
    assert counts == {"close": 1, "__aenter__": 1, "__aexit__": 1}
