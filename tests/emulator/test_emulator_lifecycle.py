"""Start/stop, loopback binding, TLS material handling, custom identities and the CLI."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from azure_msiv2_credential.emulator import Emulator, Identity, _tls, serve

from ._helpers import METADATA, build_csr, fake_attestation, issue, valid_csr


def emulator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("msiv2-emulator") and t.is_alive()]


def test_lifecycle_binds_loopback_and_cleans_up() -> None:
    others = set(emulator_threads())  # e.g. the suite's session emulator: not this test's business
    emu = Emulator()
    with pytest.raises(RuntimeError):
        _ = emu.imds_url
    with pytest.raises(RuntimeError):
        _ = emu.ca_bundle_path
    with emu:
        assert urlsplit(emu.imds_url).hostname == "127.0.0.1"
        assert urlsplit(emu.token_service_url).hostname == "localhost"
        assert urlsplit(emu.resource_url).hostname == "localhost"
        for server in emu._servers:  # white-box: the listening sockets themselves
            assert server.socket.getsockname()[0] == "127.0.0.1"
        bundle = emu.ca_bundle_path
        assert x509.load_pem_x509_certificate(Path(bundle).read_bytes()) == emu.ca_certificate
        with pytest.raises(RuntimeError):
            emu.start()
        # A kept-alive connection must not keep a worker thread alive after stop().
        session = requests.Session()
        assert session.get(f"{emu.resource_url}/demo/hello.txt", verify=bundle, timeout=10).status_code == 401
        assert len(set(emulator_threads()) - others) >= 4
    assert set(emulator_threads()) - others == set()
    assert not os.path.exists(bundle)
    emu.stop()  # idempotent
    session.close()


def test_stop_interrupts_a_delay_fault() -> None:
    others = set(emulator_threads())
    emu = Emulator().start()
    emu.inject("getplatformmetadata", "delay", seconds=60)
    results: list[Any] = []

    def slow_call() -> None:
        try:
            results.append(
                requests.get(
                    f"{emu.imds_url}/metadata/identity/getplatformmetadata?cred-api-version=2.0",
                    headers=METADATA,
                    timeout=30,
                ).status_code
            )
        except requests.RequestException as exc:
            results.append(exc)

    caller = threading.Thread(target=slow_call)
    caller.start()
    while emu.calls["getplatformmetadata"] == 0:
        time.sleep(0.01)
    started = time.monotonic()
    emu.stop()
    caller.join(10)
    assert time.monotonic() - started < 10  # not the 60 s of the delay
    assert set(emulator_threads()) - others == set()
    assert results


def test_server_certificate_names_localhost_and_loopback_ip() -> None:
    with Emulator() as emu:
        port = urlsplit(emu.resource_url).port
        assert port is not None
        context = ssl.create_default_context(cafile=emu.ca_bundle_path)
        for host in ("localhost", "127.0.0.1"):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert cert.issuer == emu.ca_certificate.subject


def test_tls_key_goes_through_memfd_not_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _tls.memfd_available():
        pytest.skip("no memfd_create on this platform")

    def no_files(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a temporary file was created for the TLS key")

    monkeypatch.setattr("azure_msiv2_credential.emulator._tls.tempfile.mkstemp", no_files)
    with Emulator() as emu:
        assert emu.token_service_url


def test_tls_key_fallback_is_encrypted_and_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tls, "memfd_available", lambda: False)
    seen: dict[str, bytes] = {}
    real_unlink = os.unlink
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real_mkstemp(*args, **kwargs)
        seen[path] = b""
        return fd, path

    def reading_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if path in seen:
            seen[path] = Path(path).read_bytes()
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr("azure_msiv2_credential.emulator._tls.tempfile.mkstemp", recording_mkstemp)
    monkeypatch.setattr("azure_msiv2_credential.emulator._tls.os.unlink", reading_unlink)
    with Emulator() as emu:
        response = requests.get(f"{emu.resource_url}/secrets/x?api-version=7.5", verify=emu.ca_bundle_path, timeout=10)
        assert response.status_code == 401
    assert len(seen) == 3  # token service (its own and the reject_handshake one) and resource contexts
    for path, content in seen.items():
        assert not os.path.exists(path)
        assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in content
        assert b"-----BEGIN PRIVATE KEY-----" not in content


def test_custom_identities_and_tenant(key: rsa.RSAPrivateKey) -> None:
    only = Identity(
        client_id="11111111-1111-1111-1111-111111111111",
        object_id="22222222-2222-2222-2222-222222222222",
        resource_id="/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u",
    )
    with Emulator([only], tenant_id="contoso-tenant", token_lifetime=60, refresh_in=30) as emu:
        assert emu.identities == (only,)
        assert emu.tenant_id == "contoso-tenant"
        with pytest.raises(LookupError):
            _ = emu.system_identity
        url = f"{emu.imds_url}/metadata/identity/getplatformmetadata?cred-api-version=2.0"
        assert requests.get(url, headers=METADATA, timeout=10).status_code == 400  # no system identity
        response = requests.get(f"{url}&client_id={only.client_id.upper()}", headers=METADATA, timeout=10)
        assert response.json()["clientId"] == only.client_id  # ids compare case-insensitively
        assert issue(emu, valid_csr(emu, key, only), f"&mi_res_id={only.resource_id}").status_code == 200


def test_default_identities() -> None:
    emu = Emulator()
    assert len(emu.identities) == 3
    assert [i.system_assigned for i in emu.identities] == [True, False, False]
    assert len({i.client_id for i in emu.identities}) == 3
    for identity in emu.identities[1:]:
        assert "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" in identity.resource_id
    assert Emulator().tenant_id != emu.tenant_id


def test_cli_serves_until_stopped(capsys: pytest.CaptureFixture[str], key: rsa.RSAPrivateKey) -> None:
    others = set(emulator_threads())
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(
        target=lambda: result.append(
            serve(["--cert-lifetime", "7200", "--token-lifetime", "90", "--require-attestation"], stop=stop)
        )
    )
    runner.start()
    try:
        output = ""
        deadline = time.monotonic() + 10
        while "Press Ctrl-C" not in output and time.monotonic() < deadline:
            time.sleep(0.02)
            output += capsys.readouterr().out
        lines = dict(line.split("=", 1) for line in output.splitlines() if line.startswith("AZURE_POD"))
        imds = lines["AZURE_POD_IDENTITY_AUTHORITY_HOST"]
        assert imds.startswith("http://127.0.0.1:")
        assert "CA bundle:" in output and "resource:" in output and "https://localhost:" in output
        assert output.count("client_id=") == 3
        client_id = output.split("identity (system-assigned): client_id=")[1].split()[0]

        metadata = requests.get(
            f"{imds}/metadata/identity/getplatformmetadata?cred-api-version=2.0", headers=METADATA, timeout=10
        ).json()
        assert metadata["clientId"] == client_id
        response = requests.post(
            f"{imds}/metadata/identity/issuecredential?cred-api-version=2.0",
            json={"csr": "AAAA"},
            headers=METADATA,
            timeout=10,
        )
        assert response.json()["error_description"].startswith("Attestation Token is missing")

        csr_der = build_csr(
            key,
            cn=client_id,
            dc=metadata["tenantId"],
            cuid=json.dumps(metadata["cuId"], separators=(",", ":")),
        )
        response = requests.post(
            f"{imds}/metadata/identity/issuecredential?cred-api-version=2.0",
            json={"csr": base64.b64encode(csr_der).decode(), "attestation_token": fake_attestation(key)},
            headers=METADATA,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        cert = x509.load_der_x509_certificate(base64.b64decode(response.json()["certificate"]))
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() == 7200
    finally:
        stop.set()
        runner.join(10)
    assert result == [0]
    assert set(emulator_threads()) - others == set()
