"""Logs, reprs and errors of the sync credential carry no secrets; the success and failure logs say enough."""

from __future__ import annotations

import base64
import logging
import time
import traceback
from typing import Any

import pytest
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import ChainedTokenCredential
from cryptography.hazmat.primitives import serialization

from azure_msiv2_credential import MsiV2Error, MsiV2ManagedIdentityCredential
from azure_msiv2_credential.emulator import Emulator

from ._helpers import (
    CLAIMS_CHALLENGE,
    HOUR,
    RESOURCE,
    SCOPE,
    Factory,
    FakeClock,
    StaticCredential,
    acquire,
    latest_certificate,
    secret_leaks,
    thumbprint,
)

LOGGER = "azure_msiv2_credential"


class RecordingTransport(RequestsTransport):
    """A real IMDS transport that remembers the correlation id of every request it sends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.correlation_ids: list[str] = []

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.correlation_ids.append(request.headers.get("x-ms-client-request-id", ""))
        return super().send(request, **kwargs)


def record_texts(records: list[logging.LogRecord]) -> list[str]:
    """Everything a handler could print for each record: message, exception and stack."""
    formatter = logging.Formatter()
    texts = []
    for record in records:
        text = record.getMessage()
        if record.exc_info:
            text += formatter.formatException(record.exc_info)
        if record.stack_info:
            text += record.stack_info
        texts.append(text)
    return texts


def error_texts(error: BaseException) -> list[str]:
    return [str(error), repr(error), "".join(traceback.format_exception(type(error), error, error.__traceback__))]


def test_a_full_acquisition_with_failures_logs_no_secret(
    emulator: Emulator, make: Factory, clock: FakeClock, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, azure-core's HTTP logging, urllib3...
    cred = make()
    tokens = [acquire(cred, method, SCOPE), acquire(cred, method, SCOPE, claims=CLAIMS_CHALLENGE)]
    errors: list[BaseException] = []

    # a refresh the service answers with a Bearer token, then one with a token bound to another certificate:
    # both are refused and the cached token is served (with a WARNING each)
    cached = tokens[0]
    for fault in ("bearer", "wrong_cnf"):
        clock.advance(HOUR - 300 + 1)  # past refresh_on of the cached token
        emulator.inject("token", fault)
        assert acquire(cred, method, SCOPE).token == cached.token
        emulator.inject("token", fault)
        with pytest.raises(MsiV2Error) as caught:
            acquire(cred, method, SCOPE, claims=CLAIMS_CHALLENGE)  # claims: no cached token to fall back to
        errors.append(caught.value)
        clock.advance(31)
        tokens.append(acquire(cred, method, SCOPE))  # the next refresh succeeds
        assert tokens[-1].token != cached.token
        cached = tokens[-1]
    # a failed certificate request
    other = make()
    emulator.inject("issuecredential", "status", status=400)
    with pytest.raises(MsiV2Error) as caught:
        acquire(other, method, SCOPE)
    errors.append(caught.value)
    tokens.append(acquire(other, method, SCOPE))

    key = cred.binding_registry.lookup(cached.token).key  # type: ignore[union-attr]
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    secrets = [t.token for t in tokens] + [t.token.split(".")[1] for t in tokens]
    secrets.append(base64.b64encode(spki).decode("ascii")[:120])

    texts = record_texts(caplog.records)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith(LOGGER)]
    assert len(warnings) >= 5  # two stale-served refreshes, two claims failures, one certificate failure
    for error in errors:
        texts += error_texts(error)
    binding = cred.binding_registry.lookup(cached.token)
    texts += [repr(cred), str(cred), repr(binding), str(binding), repr(cred.binding_registry)]
    texts += [repr(cred._cache.token(RESOURCE)), repr(cred._cache.binding)]
    assert secret_leaks(texts, secrets) == []


def test_success_log_is_info_with_correlation_id_identity_thumbprint_and_expiry(
    emulator: Emulator, make: Factory, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    transport = RecordingTransport()
    cred = make(transport=transport)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        token = acquire(cred, method, SCOPE)
    correlation_ids = set(transport.correlation_ids)
    assert len(correlation_ids) == 1  # one id per acquisition, reused across its IMDS calls
    (correlation_id,) = correlation_ids
    cert = latest_certificate(emulator)
    success = [r for r in caplog.records if r.name.startswith(LOGGER) and "acquired" in r.getMessage()]
    assert len(success) == 1
    assert success[0].levelno == logging.INFO
    message = success[0].getMessage()
    assert correlation_id in message
    assert "system-assigned" in message
    assert thumbprint(cert) in message
    assert cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%S") in message  # certificate expiry
    assert time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(token.expires_on)) in message  # token expiry
    assert RESOURCE in message
    assert not any(r.levelno >= logging.WARNING for r in caplog.records if r.name.startswith(LOGGER))


def test_success_inside_a_chain_is_debug(
    emulator: Emulator, make: Factory, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        acquire(ChainedTokenCredential(make(), StaticCredential()), method, SCOPE)
    success = [r for r in caplog.records if r.name.startswith(LOGGER) and "acquired" in r.getMessage()]
    assert [r.levelno for r in success] == [logging.DEBUG]


def test_failure_log_is_a_warning_with_the_correlation_id(
    emulator: Emulator, make: Factory, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    transport = RecordingTransport()
    cred = make(transport=transport)
    emulator.inject("issuecredential", "status", status=400)
    with caplog.at_level(logging.DEBUG, logger=LOGGER), pytest.raises(MsiV2Error) as caught:
        acquire(cred, method, SCOPE)
    (correlation_id,) = set(transport.correlation_ids)
    assert caught.value.correlation_id == correlation_id
    assert correlation_id in str(caught.value)
    failures = [r for r in caplog.records if r.name.startswith(LOGGER) and r.levelno >= logging.WARNING]
    assert len(failures) == 1
    assert failures[0].levelno == logging.WARNING
    assert correlation_id in failures[0].getMessage()
    assert "system-assigned" in failures[0].getMessage()


def test_unavailable_inside_a_chain_is_not_a_warning(
    emulator: Emulator,
    make: Factory,
    method: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator.v1_only = True
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        token = acquire(ChainedTokenCredential(make(), StaticCredential()), method, SCOPE)
    assert token.token == StaticCredential.TOKEN
    ours = [r for r in caplog.records if r.name.startswith(LOGGER)]
    assert any("could not acquire" in r.getMessage() for r in ours)
    assert all(r.levelno < logging.WARNING for r in ours)


def test_secret_leaks_finds_what_it_should() -> None:
    """The checker itself: a test that cannot fail proves nothing."""
    jwt = "eyJhbGciOiJSUzI1NiJ9." + "A" * 300 + ".sig"
    assert secret_leaks([f"token {jwt}"], []) != []
    assert secret_leaks(["x" * 10 + "QUJD" * 60], []) != []
    assert secret_leaks(["a short message about abc"], ["abc"]) != []
    assert secret_leaks(["https://localhost:1234/tenant/oauth2/v2.0/token", "thumbprint " + "a" * 43], ["zzz"]) == []


def test_reprs_of_a_fresh_credential(emulator: Emulator, make: Factory) -> None:
    cred = make()
    assert "MsiV2ManagedIdentityCredential" in repr(cred)
    assert "system-assigned" in repr(cred)
    v1 = MsiV2ManagedIdentityCredential()
    assert "mtls_proof_of_possession=False" in repr(v1)
