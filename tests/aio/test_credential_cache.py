"""The async credential's request rules, caches, refresh and single-flight, against the emulator.

Real sockets and TLS; time moves only through the credential's ``_clock`` (a :class:`FakeClock`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional

import pytest

from azure_msiv2_credential import ErrorCode, MsiV2Error
from azure_msiv2_credential.emulator import Emulator

from .._helpers import (
    CLAIMS_CHALLENGE,
    DAY,
    HOUR,
    OTHER_SCOPE,
    RESOURCE,
    SCOPE,
    Factory,
    FakeClock,
    aacquire,
    calls,
    cert_window,
    expected_rotation,
    latest_certificate,
    refresh_on_of,
    thumbprint,
)

COLD = {"getplatformmetadata": 1, "issuecredential": 1, "token": 1}
CLAIMS = CLAIMS_CHALLENGE


# --- 1. request rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scopes",
    [
        (),
        (SCOPE, OTHER_SCOPE),
        (SCOPE, SCOPE),
        ("",),
        (" ",),
        ("https://vault.azure.net /.default",),
        (SCOPE + "\n",),
        ("/.default",),
    ],
    ids=["zero", "two", "two-same", "empty", "blank", "inner-space", "newline", "only-default"],
)
async def test_scope_rules_reject_before_any_io(
    emulator: Emulator, make: Factory, method: str, scopes: tuple[str, ...]
) -> None:
    cred = make()
    with pytest.raises(ValueError):
        await aacquire(cred, method, *scopes)
    assert calls(emulator) == {}


async def test_bare_resource_and_default_scope_share_one_token(emulator: Emulator, make: Factory, method: str) -> None:
    cred = make()
    first = await aacquire(cred, method, SCOPE)
    second = await aacquire(cred, method, RESOURCE)
    assert second.token == first.token
    assert calls(emulator) == COLD
    claims = emulator.decode_token(first.token)
    assert claims["aud"] == RESOURCE
    assert claims["cnf"]["x5t#S256"] == thumbprint(latest_certificate(emulator))


async def test_claims_bypass_the_token_cache_but_reuse_the_certificate(
    emulator: Emulator, make: Factory, method: str
) -> None:
    cred = make()
    cached = await aacquire(cred, method, SCOPE)
    assert "xms_claims" not in emulator.decode_token(cached.token)
    emulator.reset_calls()

    with_claims = await aacquire(cred, method, SCOPE, claims=CLAIMS)
    again = await aacquire(cred, method, SCOPE, claims=CLAIMS)
    assert calls(emulator) == {"token": 2}  # two token requests, no new certificate
    assert len({cached.token, with_claims.token, again.token}) == 3
    assert emulator.decode_token(with_claims.token)["xms_claims"] == CLAIMS
    assert emulator.decode_token(again.token)["xms_claims"] == CLAIMS
    # the transport can still find the claims token's certificate
    binding = cred.binding_registry.lookup(with_claims.token)
    assert binding is not None
    assert binding is cred.binding_registry.lookup(cached.token)

    # ...and the cached (claims-free) token is untouched
    assert (await aacquire(cred, method, SCOPE)).token == cached.token
    assert calls(emulator) == {"token": 2}


async def test_tenant_id_and_enable_cae_are_ignored_with_a_debug_log(
    emulator: Emulator, make: Factory, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    cred = make()
    with caplog.at_level(logging.DEBUG, logger="azure_msiv2_credential"):
        token = await aacquire(cred, method, SCOPE, tenant_id="another-tenant", enable_cae=True)
    assert emulator.decode_token(token.token)["tid"] == emulator.tenant_id
    ignored = [r for r in caplog.records if r.levelno == logging.DEBUG and "ignores" in r.getMessage()]
    assert any("tenant_id" in r.getMessage() for r in ignored)
    assert any("enable_cae" in r.getMessage() for r in ignored)
    assert calls(emulator) == COLD


async def test_unknown_option_keys_are_ignored(emulator: Emulator, make: Factory, method: str) -> None:
    cred = make()
    first = await aacquire(cred, method, SCOPE, some_future_option="x", pop=None)
    assert (await aacquire(cred, method, SCOPE, another_unknown=1)).token == first.token
    assert calls(emulator) == COLD


# --- 2. caches -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cert_lifetime", "regime"),
    [(3 * DAY, "notAfter-24h"), (4 * HOUR, "half-life")],
)
async def test_certificate_rotation_boundary(
    emulator: Emulator, make: Factory, clock: FakeClock, method: str, cert_lifetime: float, regime: str
) -> None:
    emulator.cert_lifetime = cert_lifetime
    emulator.token_lifetime = 3 * DAY  # the handed-out token outlives the rotation (clamped to notAfter)
    cred = make()
    first = await aacquire(cred, method, SCOPE)
    first_cert = latest_certificate(emulator)
    not_before, not_after = cert_window(first_cert)
    rotate_at = expected_rotation(first_cert)
    if regime == "notAfter-24h":
        assert rotate_at == not_after - DAY
    else:
        assert rotate_at == not_before + (not_after - not_before) / 2 > not_after - DAY
    emulator.cert_lifetime = 10 * DAY  # the next certificate is fresh at any time this test visits

    # 1 s before: a request that needs the certificate (claims skip the token cache) reuses it
    clock.set(rotate_at - 1)
    emulator.reset_calls()
    probe = await aacquire(cred, method, SCOPE, claims=CLAIMS)
    assert calls(emulator) == {"token": 1}
    before = await aacquire(cred, method, SCOPE)
    assert "issuecredential" not in calls(emulator)
    old_binding = cred.binding_registry.lookup(first.token)
    assert old_binding is not None
    assert old_binding.thumbprint == thumbprint(first_cert)
    assert cred.binding_registry.lookup(probe.token) is old_binding
    assert cred.binding_registry.lookup(before.token) is old_binding

    # 1 s after: a new certificate, and the cached token (due: it follows the certificate) is replaced
    clock.set(rotate_at + 1)
    emulator.reset_calls()
    after = await aacquire(cred, method, SCOPE)
    assert calls(emulator) == {"getplatformmetadata": 1, "issuecredential": 1, "token": 1}
    new_cert = latest_certificate(emulator)
    assert new_cert is not first_cert
    assert after.token not in (first.token, before.token)
    assert emulator.decode_token(after.token)["cnf"]["x5t#S256"] == thumbprint(new_cert)

    # a rotation never changes a token already handed out: each still maps to its own certificate
    for handed_out in (first, probe, before):
        assert cred.binding_registry.lookup(handed_out.token) is old_binding
        assert emulator.decode_token(handed_out.token)["cnf"]["x5t#S256"] == thumbprint(first_cert)
    new_binding = cred.binding_registry.lookup(after.token)
    assert new_binding is not None
    assert new_binding is not old_binding
    assert new_binding.thumbprint == thumbprint(new_cert)


async def test_token_cache_is_per_resource(emulator: Emulator, make: Factory, method: str) -> None:
    cred = make()
    vault = await aacquire(cred, method, SCOPE)
    storage = await aacquire(cred, method, OTHER_SCOPE)
    assert calls(emulator) == {"getplatformmetadata": 1, "issuecredential": 1, "token": 2}
    assert emulator.decode_token(vault.token)["aud"] == RESOURCE
    assert emulator.decode_token(storage.token)["aud"] == "https://storage.azure.com"
    assert (await aacquire(cred, method, SCOPE)).token == vault.token
    assert (await aacquire(cred, method, OTHER_SCOPE)).token == storage.token
    assert calls(emulator) == {"getplatformmetadata": 1, "issuecredential": 1, "token": 2}


async def test_expires_on_is_clamped_to_the_certificate(emulator: Emulator, make: Factory, method: str) -> None:
    emulator.cert_lifetime = 1800
    emulator.token_lifetime = 3600
    cred = make()
    token = await aacquire(cred, method, SCOPE)
    _, not_after = cert_window(latest_certificate(emulator))
    assert token.expires_on == int(not_after)
    assert emulator.decode_token(token.token)["exp"] > not_after  # the service said longer


def _half_life(t0: float, cert: Any) -> float:
    return t0 + 2 * HOUR


def _refresh_in(t0: float, cert: Any) -> float:
    return t0 + 600


def _five_minutes(t0: float, cert: Any) -> float:
    return t0 + HOUR - 300


def _rotation(t0: float, cert: Any) -> float:
    return expected_rotation(cert)


@pytest.mark.parametrize(
    ("cert_lifetime", "token_lifetime", "refresh_in", "expected"),
    [
        (2 * DAY, 4 * HOUR, None, _half_life),
        (2 * DAY, 4 * HOUR, 600, _refresh_in),
        (2 * DAY, HOUR, None, _five_minutes),
        (4 * HOUR, 4 * HOUR, 3 * 3600, _rotation),  # never later than the certificate rotation
    ],
    ids=["half-life", "refresh_in", "expiry-5min", "cert-rotation"],
)
async def test_refresh_on_rules(
    emulator: Emulator,
    make: Factory,
    clock: FakeClock,
    method: str,
    cert_lifetime: float,
    token_lifetime: float,
    refresh_in: Optional[float],
    expected: Callable[[float, Any], float],
) -> None:
    emulator.cert_lifetime = cert_lifetime
    emulator.token_lifetime = token_lifetime
    emulator.refresh_in = refresh_in
    cred = make()
    t0 = clock()
    first = await aacquire(cred, method, SCOPE)
    cert = latest_certificate(emulator)
    refresh_on = expected(t0, cert)
    if expected is _rotation:
        assert refresh_on < t0 + refresh_in  # type: ignore[operator]
    if method == "get_token_info":
        assert refresh_on_of(first) == int(refresh_on)
    emulator.cert_lifetime = 10 * DAY

    clock.set(refresh_on - 1)
    emulator.reset_calls()
    assert (await aacquire(cred, method, SCOPE)).token == first.token
    assert calls(emulator) == {}

    clock.set(refresh_on + 1)
    refreshed = await aacquire(cred, method, SCOPE)
    assert refreshed.token != first.token
    if expected is _rotation:
        assert calls(emulator) == COLD
    else:  # a refresh with a cached certificate is exactly one request
        assert calls(emulator) == {"token": 1}


@pytest.mark.parametrize(
    ("status", "count", "token_calls"),
    [(500, 2, 2), (400, 1, 1)],
    ids=["500-retried-once", "400"],
)
async def test_failed_refresh_serves_the_cached_token_and_retries_after_30s(
    emulator: Emulator,
    make: Factory,
    clock: FakeClock,
    method: str,
    status: int,
    count: int,
    token_calls: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cred = make()
    t0 = clock()
    first = await aacquire(cred, method, SCOPE)
    refresh_on = t0 + HOUR - 300

    clock.set(refresh_on + 1)
    emulator.reset_calls()
    emulator.inject("token", "status", count=count, status=status)
    with caplog.at_level(logging.WARNING, logger="azure_msiv2_credential"):
        served = await aacquire(cred, method, SCOPE)
    assert served.token == first.token
    assert served.expires_on == first.expires_on
    assert calls(emulator) == {"token": token_calls}
    assert any("serving the cached token" in r.getMessage() for r in caplog.records)

    clock.advance(29)  # within 30 s of the failed attempt: no request
    assert (await aacquire(cred, method, SCOPE)).token == first.token
    assert calls(emulator) == {"token": token_calls}

    clock.advance(2)  # 31 s after: it tries again, and now succeeds
    refreshed = await aacquire(cred, method, SCOPE)
    assert refreshed.token != first.token
    assert calls(emulator) == {"token": token_calls + 1}
    clock.advance(1)
    assert (await aacquire(cred, method, SCOPE)).token == refreshed.token
    assert calls(emulator) == {"token": token_calls + 1}


async def test_a_failed_rotation_keeps_the_valid_certificate_and_waits_30s(
    emulator: Emulator, make: Factory, clock: FakeClock, method: str
) -> None:
    emulator.cert_lifetime = 3 * DAY
    cred = make()
    await aacquire(cred, method, SCOPE)
    first_cert = latest_certificate(emulator)
    emulator.cert_lifetime = 10 * DAY

    clock.set(expected_rotation(first_cert) + 1)
    emulator.reset_calls()
    emulator.inject("issuecredential", "status", status=400)
    degraded = await aacquire(cred, method, SCOPE)  # re-minting fails: the still-valid certificate is used
    assert calls(emulator) == {"getplatformmetadata": 1, "issuecredential": 1, "token": 1}
    assert emulator.decode_token(degraded.token)["cnf"]["x5t#S256"] == thumbprint(first_cert)
    binding = cred.binding_registry.lookup(degraded.token)
    assert binding is not None
    assert binding.thumbprint == thumbprint(first_cert)

    for _ in range(3):  # no retry storm: within 30 s the token just fetched is served, no request
        clock.advance(9)
        assert (await aacquire(cred, method, SCOPE)).token == degraded.token
    assert calls(emulator) == {"getplatformmetadata": 1, "issuecredential": 1, "token": 1}

    clock.advance(4)  # 31 s after the failed mint: it tries again, and now succeeds
    rotated = await aacquire(cred, method, SCOPE)
    assert calls(emulator) == {"getplatformmetadata": 2, "issuecredential": 2, "token": 2}
    assert emulator.decode_token(rotated.token)["cnf"]["x5t#S256"] == thumbprint(latest_certificate(emulator))
    assert latest_certificate(emulator) is not first_cert


async def test_expired_token_is_not_served_after_a_failed_refresh(
    emulator: Emulator, make: Factory, clock: FakeClock, method: str
) -> None:
    cred = make()
    t0 = clock()
    await aacquire(cred, method, SCOPE)
    clock.set(t0 + HOUR + 1)
    emulator.inject("token", "status", status=400)
    with pytest.raises(MsiV2Error) as caught:
        await aacquire(cred, method, SCOPE)
    assert caught.value.error_code == ErrorCode.TOKEN_REQUEST_FAILED


# --- 3. single-flight ------------------------------------------------------------------------------------
async def test_50_coroutines_cold_make_one_flow(emulator: Emulator, make: Factory, method: str) -> None:
    cred = make()
    emulator.inject("getplatformmetadata", "delay", seconds=0.3)
    results = await asyncio.gather(*(aacquire(cred, method, SCOPE) for _ in range(50)), return_exceptions=True)
    assert calls(emulator) == COLD
    assert all(not isinstance(r, BaseException) for r in results), results
    assert len({r.token for r in results}) == 1  # type: ignore[union-attr]


async def test_50_coroutines_share_one_failure_which_is_not_cached(
    emulator: Emulator, make: Factory, method: str
) -> None:
    cred = make()
    emulator.inject("getplatformmetadata", "delay", seconds=0.3)
    emulator.inject("issuecredential", "status", status=400)
    results = await asyncio.gather(*(aacquire(cred, method, SCOPE) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, MsiV2Error) for r in results), results
    assert {r.error_code for r in results} == {ErrorCode.IMDS_ERROR}  # type: ignore[union-attr]
    assert len({r.correlation_id for r in results}) == 1  # type: ignore[union-attr]
    assert calls(emulator) == {"getplatformmetadata": 1, "issuecredential": 1}

    token = await aacquire(cred, method, SCOPE)  # a new flow, which succeeds
    assert calls(emulator) == {"getplatformmetadata": 2, "issuecredential": 2, "token": 1}
    assert emulator.decode_token(token.token)["aud"] == RESOURCE


async def test_a_cancelled_caller_does_not_cancel_the_others(emulator: Emulator, make: Factory, method: str) -> None:
    cred = make()
    emulator.inject("getplatformmetadata", "delay", seconds=0.3)
    first = asyncio.ensure_future(aacquire(cred, method, SCOPE))  # starts the flow
    await asyncio.sleep(0.05)
    others = [asyncio.ensure_future(aacquire(cred, method, SCOPE)) for _ in range(10)]
    await asyncio.sleep(0.05)
    first.cancel()  # e.g. asyncio.wait_for timing out for that one caller
    results = await asyncio.gather(*others, return_exceptions=True)
    assert first.cancelled()
    assert all(not isinstance(r, BaseException) for r in results), results
    assert len({r.token for r in results}) == 1  # type: ignore[union-attr]
    assert calls(emulator) == COLD
