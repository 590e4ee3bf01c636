"""AttestationCache in isolation: reuse, the 5-minute boundary, single flight, failures not cached."""

from __future__ import annotations

import base64
import json
import threading
import time
from types import SimpleNamespace
from typing import cast

import pytest

from azure_msiv2_credential._attestation import ATTESTATION_REFRESH_MARGIN_S, AttestationCache, jwt_expiry
from azure_msiv2_credential._errors import ErrorCode, MsiV2Error
from azure_msiv2_credential.keys.keyguard import KeyGuardKey

ENDPOINT = "https://attest.example"
KEY = cast(KeyGuardKey, SimpleNamespace(key_id="keyguard:k:1"))
OTHER_KEY = cast(KeyGuardKey, SimpleNamespace(key_id="keyguard:k:2"))


def _jwt(claims: object) -> str:
    def enc(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'none'})}.{enc(claims)}.c2ln"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class CountingAttestor:
    def __init__(self, clock: Clock, lifetime: float = 3600, delay: float = 0.0) -> None:
        self.clock, self.lifetime, self.delay = clock, lifetime, delay
        self.calls = 0
        self.fail = False
        self._lock = threading.Lock()

    def attest(self, endpoint: str, key: KeyGuardKey, client_id: str) -> str:
        with self._lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)
        if self.fail:
            raise MsiV2Error("boom", error_code=ErrorCode.ATTESTATION_FAILED)
        return _jwt({"exp": self.clock.now + self.lifetime, "n": n, "kid": key.key_id, "cid": client_id})


def test_reuses_until_five_minutes_before_exp() -> None:
    clock = Clock()
    attestor = CountingAttestor(clock)
    cache = AttestationCache(attestor, clock=clock)
    first = cache.attest(ENDPOINT, KEY, "c")
    clock.now += 3600 - ATTESTATION_REFRESH_MARGIN_S - 1  # 301 s left: still fresh
    assert cache.attest(ENDPOINT, KEY, "c") == first
    clock.now += 1  # exactly 300 s left: refresh
    second = cache.attest(ENDPOINT, KEY, "c")
    assert second != first
    assert attestor.calls == 2
    assert ATTESTATION_REFRESH_MARGIN_S == 300


def test_entries_are_per_endpoint_key_and_client() -> None:
    clock = Clock()
    attestor = CountingAttestor(clock)
    cache = AttestationCache(attestor, clock=clock)
    cache.attest(ENDPOINT, KEY, "c")
    cache.attest("https://other.example", KEY, "c")
    cache.attest(ENDPOINT, OTHER_KEY, "c")
    cache.attest(ENDPOINT, KEY, "d")
    cache.attest(ENDPOINT, KEY, "c")
    assert attestor.calls == 4


def test_short_lived_and_exp_less_tokens_are_not_reused() -> None:
    clock = Clock()
    attestor = CountingAttestor(clock, lifetime=ATTESTATION_REFRESH_MARGIN_S)
    cache = AttestationCache(attestor, clock=clock)
    cache.attest(ENDPOINT, KEY, "c")
    cache.attest(ENDPOINT, KEY, "c")
    assert attestor.calls == 2


def test_24_threads_make_one_call() -> None:
    clock = Clock()
    attestor = CountingAttestor(clock, delay=0.05)
    cache = AttestationCache(attestor, clock=clock)
    barrier = threading.Barrier(24)
    tokens: list[str] = []

    def run() -> None:
        barrier.wait()
        tokens.append(cache.attest(ENDPOINT, KEY, "c"))

    threads = [threading.Thread(target=run) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert attestor.calls == 1
    assert len(tokens) == 24 and len(set(tokens)) == 1


def test_waiters_share_the_error_and_failures_are_not_cached() -> None:
    clock = Clock()
    attestor = CountingAttestor(clock, delay=0.05)
    attestor.fail = True
    cache = AttestationCache(attestor, clock=clock)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        try:
            cache.attest(ENDPOINT, KEY, "c")
        except MsiV2Error as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert attestor.calls == 1
    assert len(errors) == 8 and len({id(e) for e in errors}) == 1
    attestor.fail = False
    cache.attest(ENDPOINT, KEY, "c")
    assert attestor.calls == 2


def test_clear_forgets_tokens() -> None:
    clock = Clock()
    attestor = CountingAttestor(clock)
    cache = AttestationCache(attestor, clock=clock)
    cache.attest(ENDPOINT, KEY, "c")
    cache.clear()
    cache.attest(ENDPOINT, KEY, "c")
    assert attestor.calls == 2
    assert repr(cache) == "AttestationCache(entries=1)"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (_jwt({"exp": 123}), 123.0),
        (_jwt({"exp": 1.5}), 1.5),
        (_jwt({"exp": "123"}), None),
        (_jwt({"exp": True}), None),
        (_jwt({}), None),
        (_jwt([1]), None),
        ("not-a-jwt", None),
        ("a.!!!.c", None),
        ("a.bm90IGpzb24.c", None),
    ],
)
def test_jwt_expiry(token: str, expected: float | None) -> None:
    assert jwt_expiry(token) == expected
