"""NativeAttestor against the fake AttestationClientLib: ok / fail / http_fail / empty, library loading, logs."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization

from azure_msiv2_credential._attestation import AttestationCache, NativeAttestor, jwt_expiry
from azure_msiv2_credential._errors import ErrorCode, MsiV2Error
from azure_msiv2_credential._native import load
from azure_msiv2_credential._native._winapi import ffi
from azure_msiv2_credential.keys.keyguard import KeyGuardKey, KeyGuardKeyProvider

from ._fakes import FakeWin

ENDPOINT = "https://sharedeus2.eus2.attest.azure.net"
CLIENT_ID = "0b5c6f8e-1111-4a2b-9c3d-123456789abc"


@pytest.fixture
def key(fakewin: FakeWin) -> Iterator[KeyGuardKey]:
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as provider:
        yield provider.get_key()


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert isinstance(claims, dict)
    return claims


def test_ok_token_binds_the_key(fakewin: FakeWin, key: KeyGuardKey) -> None:
    token = NativeAttestor().attest(ENDPOINT, key, CLIENT_ID)
    claims = _claims(token)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).rstrip(b"=").decode()
    assert claims["keyguard_spki_sha256"] == expected
    assert claims["x-ms-attestation-type"] == "keyguard"
    exp = jwt_expiry(token)
    assert exp is not None and abs(exp - (time.time() + 3600)) < 60
    assert fakewin.attestation_calls() == 1
    assert fakewin.attest_ctl.FakeAttest_Initialized() == 0  # uninitialised again


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("fail", "returned -6: attestation failed"),
        ("http_fail", "returned -5: HTTP request to the attestation service failed"),
        ("empty", "succeeded but returned no token"),
        ("null", "succeeded but returned no token"),
    ],
)
def test_failures(fakewin: FakeWin, key: KeyGuardKey, mode: str, expected: str) -> None:
    fakewin.set_attestation_mode(mode)
    with pytest.raises(MsiV2Error) as info:
        NativeAttestor().attest(ENDPOINT, key, CLIENT_ID)
    assert info.value.error_code == ErrorCode.ATTESTATION_FAILED
    assert expected in str(info.value)
    assert fakewin.attest_ctl.FakeAttest_Initialized() == 0


def test_closed_key_is_refused_before_native_call(fakewin: FakeWin) -> None:
    with KeyGuardKeyProvider(libraries=fakewin.libraries) as provider:
        key = provider.get_key()
    with pytest.raises(MsiV2Error) as info:
        NativeAttestor().attest(ENDPOINT, key, CLIENT_ID)
    assert info.value.error_code == ErrorCode.KEY_ERROR
    assert fakewin.attestation_calls() == 0


@pytest.mark.parametrize("path", [None, "", "AttestationClientLib.dll", "./lib/x.so", "/nonexistent/Attest.dll"])
def test_library_missing_or_relative(fakewin: FakeWin, key: KeyGuardKey, path: str | None) -> None:
    libraries = dataclasses.replace(fakewin.libraries, attestation=path)
    with pytest.raises(MsiV2Error) as info:
        NativeAttestor(libraries).attest(ENDPOINT, key, CLIENT_ID)
    assert info.value.error_code == ErrorCode.ATTESTATION_LIBRARY_MISSING
    assert "AZURE_MSIV2_ATTESTATION_LIB" in str(info.value)
    if path and not path.startswith("/"):
        assert "absolute path only" in str(info.value)
    assert fakewin.attestation_calls() == 0


def test_log_callback_reaches_logging_without_tokens(
    fakewin: FakeWin, key: KeyGuardKey, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="azure_msiv2_credential._native.attestation"):
        token = NativeAttestor().attest(ENDPOINT, key, CLIENT_ID)
    messages = [r.getMessage() for r in caplog.records]
    assert any("attestation library initialized" in m for m in messages)
    assert all(token not in m and token.split(".")[1] not in m for m in messages)


def test_concurrent_attestations_are_serialised(fakewin: FakeWin, key: KeyGuardKey) -> None:
    """The fake fails a second Init before Uninit: every concurrent call succeeding proves the process lock."""
    fakewin.attest_ctl.FakeAttest_SetDelayMs(5)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            NativeAttestor().attest(ENDPOINT, key, CLIENT_ID)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fakewin.attestation_calls() == 6


def test_cache_over_native_makes_one_call(fakewin: FakeWin, key: KeyGuardKey) -> None:
    fakewin.attest_ctl.FakeAttest_SetDelayMs(50)
    cache = AttestationCache(NativeAttestor())
    tokens: list[str] = []
    barrier = threading.Barrier(24)

    def run() -> None:
        barrier.wait()
        tokens.append(cache.attest(ENDPOINT, key, CLIENT_ID))

    threads = [threading.Thread(target=run) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 24 and len(set(tokens)) == 1
    assert fakewin.attestation_calls() == 1
    assert cache.attest(ENDPOINT, key, CLIENT_ID) == tokens[0]
    assert fakewin.attestation_calls() == 1
    assert "ey" not in repr(cache)


def test_wrong_library_is_reported_as_missing(fakewin: FakeWin, key: KeyGuardKey) -> None:
    libraries = dataclasses.replace(fakewin.libraries, attestation=str(fakewin.fakewin_path))
    with pytest.raises(MsiV2Error) as info:
        NativeAttestor(libraries).attest(ENDPOINT, key, CLIENT_ID)
    assert info.value.error_code == ErrorCode.ATTESTATION_LIBRARY_MISSING
    assert "does not export InitAttestationLib" in str(info.value)


def test_fake_requires_the_log_callback(fakewin: FakeWin) -> None:
    lib = load(str(fakewin.attest_path))
    assert lib.InitAttestationLib(ffi.NULL) != 0
    assert lib.InitAttestationLib(ffi.new("AttestationLogInfo *")) != 0
    assert fakewin.attest_ctl.FakeAttest_Initialized() == 0


def test_closing_the_key_waits_for_an_attestation_in_flight(fakewin: FakeWin) -> None:
    """The library uses the key handle during the call: closing the key meanwhile must not free it."""
    fakewin.attest_ctl.FakeAttest_SetDelayMs(300)  # the fake reads the key after the delay
    provider = KeyGuardKeyProvider(libraries=fakewin.libraries)
    key = provider.get_key()
    results: list[object] = []

    def run() -> None:
        try:
            results.append(NativeAttestor().attest(ENDPOINT, key, CLIENT_ID))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 5
    while fakewin.attest_ctl.FakeAttest_Initialized() == 0 and time.monotonic() < deadline:
        time.sleep(0.005)  # wait until the native call is in progress
    provider.close()
    thread.join()
    assert len(results) == 1 and isinstance(results[0], str), results
    assert "keyguard_spki_sha256" in _claims(results[0])
    with pytest.raises(MsiV2Error) as info:  # and once it is over, the key is closed for good
        NativeAttestor().attest(ENDPOINT, key, CLIENT_ID)
    assert info.value.error_code == ErrorCode.KEY_ERROR


def test_log_callback_is_made_on_first_use_not_at_import() -> None:
    """Making a cffi callback needs executable memory, which hardened hosts may refuse: importing the
    package must not depend on it."""
    code = (
        "import azure_msiv2_credential._native.attestation as a, azure_msiv2_credential._native.winhttp as w\n"
        "assert a._log_callback == [], a._log_callback\n"
        "assert w._status_dispatch._trampoline is None\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_log_callback_is_made_once(fakewin: FakeWin, key: KeyGuardKey) -> None:
    from azure_msiv2_credential._native import attestation as native

    NativeAttestor().attest(ENDPOINT, key, CLIENT_ID)
    made = list(native._log_callback)
    NativeAttestor().attest(ENDPOINT, key, CLIENT_ID)
    assert len(made) == 1 and native._log_callback == made
