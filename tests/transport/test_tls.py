"""ssl_context_for: one context per (binding, trust), key never on disk in clear, verification never off."""

from __future__ import annotations

import gc
import os
import ssl
import tempfile
import weakref
from dataclasses import replace
from pathlib import Path

import pytest

from azure_msiv2_credential.emulator import Emulator
from azure_msiv2_credential.transport import _tls, plain_ssl_context, ssl_context_for

from ._handmade import HandmadeCredential, mint_binding


def test_context_is_cached_per_binding_and_trust(handmade: HandmadeCredential, emu: Emulator) -> None:
    binding = handmade.binding
    first = ssl_context_for(binding, emu.ca_bundle_path)
    assert ssl_context_for(binding, emu.ca_bundle_path) is first
    assert ssl_context_for(binding, True) is not first
    other = mint_binding(emu)
    assert ssl_context_for(other, emu.ca_bundle_path) is not first
    assert first.verify_mode == ssl.CERT_REQUIRED
    assert first.check_hostname
    assert first.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_context_is_dropped_with_its_binding(emu: Emulator) -> None:
    binding = mint_binding(emu)
    ssl_context_for(binding, emu.ca_bundle_path)
    assert binding in _tls._binding_contexts
    ref = weakref.ref(binding)
    del binding
    gc.collect()
    assert ref() is None  # the cache did not keep the binding (or its key) alive


def test_verification_is_never_switched_off(handmade: HandmadeCredential) -> None:
    with pytest.raises(ValueError, match="never switched off"):
        ssl_context_for(handmade.binding, False)
    with pytest.raises(ValueError):
        plain_ssl_context(False)
    with pytest.raises(TypeError):
        ssl_context_for(handmade.binding, 0)  # type: ignore[arg-type]
    # None is azure-core's and requests' "default": system trust, verification on
    assert ssl_context_for(handmade.binding, None) is ssl_context_for(handmade.binding, True)  # type: ignore[arg-type]


def test_keyguard_binding_is_refused(handmade: HandmadeCredential) -> None:
    class KeyGuardLike:
        strength = "keyguard"

    binding = replace(handmade.binding, key=KeyGuardLike())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="WinHTTP"):
        ssl_context_for(binding, True)


def test_memfd_leaves_no_file(
    handmade: HandmadeCredential, emu: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if not hasattr(os, "memfd_create"):
        pytest.skip("memfd_create is Linux-only")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    context = ssl_context_for(handmade.binding, emu.ca_bundle_path)
    assert context.cert_store_stats()["x509_ca"] >= 1
    assert list(tmp_path.iterdir()) == []


def test_fallback_writes_only_an_encrypted_key_and_deletes_it(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where memfd is missing (macOS, Windows): a password-encrypted temp file, deleted after loading."""
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    written: list[bytes] = []
    real_write_all = _tls._write_all

    def capture(fd: int, data: bytes) -> None:
        written.append(data)
        real_write_all(fd, data)

    monkeypatch.setattr(_tls, "_write_all", capture)
    binding = mint_binding(emu)
    context = ssl_context_for(binding, emu.ca_bundle_path)
    assert isinstance(context, ssl.SSLContext)
    assert len(written) == 1
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in written[0]
    assert b"BEGIN PRIVATE KEY" not in written[0]
    assert list(tmp_path.iterdir()) == []


def test_context_really_presents_the_certificate(handmade: HandmadeCredential, emu: Emulator) -> None:
    """The token service requires a client certificate: the hand-made token leg already proved it; the
    resource records which certificate it saw."""
    info = handmade.get_token_info(emu.resource_url + "/.default")
    assert info.token_type == "mtls_pop"
    assert emu.calls["token"] == 1


def _no_memfd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(_tls, "_DELETE_PAUSE_S", 0.001)


def test_fallback_retries_a_delete_that_fails_for_a_moment(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On Windows a scanner may hold the fresh file open: the delete is retried, quietly."""
    _no_memfd(monkeypatch, tmp_path)
    real_unlink = os.unlink
    failures = [PermissionError(13, "in use"), PermissionError(13, "in use")]

    def flaky_unlink(path: str) -> None:
        if failures:
            raise failures.pop()
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", flaky_unlink)
    with caplog.at_level("WARNING", logger=_tls.__name__):
        context = ssl_context_for(mint_binding(emu), emu.ca_bundle_path)
    assert isinstance(context, ssl.SSLContext)
    assert failures == []
    assert list(tmp_path.iterdir()) == []
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_fallback_delete_failure_is_a_warning_not_an_error(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _no_memfd(monkeypatch, tmp_path)
    attempts: list[str] = []

    def stuck_unlink(path: str) -> None:
        attempts.append(path)
        raise PermissionError(13, "in use")

    monkeypatch.setattr(os, "unlink", stuck_unlink)
    binding = mint_binding(emu)
    with caplog.at_level("WARNING", logger=_tls.__name__):
        context = ssl_context_for(binding, emu.ca_bundle_path)  # the loaded context is not lost
    assert isinstance(context, ssl.SSLContext)
    assert len(attempts) == _tls._DELETE_ATTEMPTS
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and attempts[0] in warnings[0] and "encrypted" in warnings[0]
    [left] = list(tmp_path.iterdir())
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in left.read_bytes()


def test_fallback_delete_failure_does_not_mask_a_load_error(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_memfd(monkeypatch, tmp_path)
    monkeypatch.setattr(os, "unlink", lambda path: (_ for _ in ()).throw(PermissionError(13, "in use")))

    def broken_load(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        raise ssl.SSLError("the real problem")

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", broken_load)
    with pytest.raises(ssl.SSLError, match="the real problem"):
        ssl_context_for(mint_binding(emu), emu.ca_bundle_path)
