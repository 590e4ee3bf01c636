"""The Wine smoke (DESIGN.md section 5, layer 4) and unit tests of the pure-Python parts of its script.

``test_wine_smoke`` runs ``tools/wine_smoke/run.sh`` only when ``MSIV2_WINE_SMOKE=1`` and Wine is installed
(CI does not install Wine). Everything else here is fast and always runs on Linux: the reporting rules that
decide the smoke's exit status, the stub-package import of ``_native``, the RSA blob / PSS / certificate
helpers and the loopback server the script uses inside Wine.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import ssl
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

import azure_msiv2_credential
from azure_msiv2_credential._native import ncrypt
from azure_msiv2_credential._native.ncrypt import NativeCallError

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "wine_smoke"
SKIPPED = 77


def _load_smoke() -> ModuleType:
    spec = importlib.util.spec_from_file_location("msiv2_wine_smoke", TOOL / "smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke = _load_smoke()


def _wine() -> str | None:
    """wine64 on PATH; else Debian's loader, which the wine64 package installs off PATH; else ``wine``."""
    found = shutil.which("wine64")
    if found is None and os.access("/usr/lib/wine/wine64", os.X_OK):
        found = "/usr/lib/wine/wine64"
    return found or shutil.which("wine")


# -- the smoke itself (opt-in) ---------------------------------------------------------------------


def test_wine_smoke() -> None:
    if os.environ.get("MSIV2_WINE_SMOKE") != "1":
        pytest.skip("the Wine smoke is opt-in: set MSIV2_WINE_SMOKE=1 (needs wine64; CI does not install Wine)")
    if _wine() is None:
        pytest.skip("Wine is not installed (Debian: apt-get install wine64)")
    result = subprocess.run(["bash", str(TOOL / "run.sh")], capture_output=True, text=True, timeout=1800, check=False)
    output = result.stdout + result.stderr
    if result.returncode == SKIPPED:
        pytest.skip(f"run.sh skipped: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, output
    assert "\nFAIL " not in "\n" + result.stdout, output
    assert "PASS          ncrypt[ephemeral]: cryptography verifies the PSS signature" in result.stdout, output


def test_run_sh_skips_with_77_when_wine_is_missing(tmp_path: Path) -> None:
    env = dict(os.environ, MSIV2_WINE_LOADER=str(tmp_path / "no-such-wine"))
    env["MSIV2_WINE_SMOKE_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run(
        ["bash", str(TOOL / "run.sh")], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == SKIPPED, result.stdout + result.stderr
    assert "SKIP: Wine is not installed" in result.stderr
    assert not (tmp_path / "cache").exists()  # nothing is prepared before Wine is found


# -- Report: what makes the smoke fail -------------------------------------------------------------


class _Refused(Exception):
    code = 0x80090029


def test_report_passes_with_only_expected_failures_and_notes() -> None:
    lines: list[str] = []
    report = smoke.Report(lines.append)
    assert report.check("ok", lambda: 5, str) == 5
    assert report.check("none is still a pass", lambda: None) is True
    assert report.expect_refusal("wine gap", _raise(_Refused("nope")), "why", _Refused) is None
    report.note("note", lambda: "text")
    assert report.exit_status() == 0
    assert [status for status, _, _ in report.results] == ["PASS", "PASS", "EXPECTED-FAIL", "INFO"]
    assert lines[0] == "PASS          ok: 5"
    assert lines[2] == "EXPECTED-FAIL wine gap: _Refused: nope (0x80090029) [why]"
    assert report.summary() == "2 passed, 0 failed, 1 expected failures, 1 notes"


def test_report_fails_on_an_unexpected_exception() -> None:
    report = smoke.Report(lambda _line: None)
    report.check("ok", lambda: 1)
    # A different exception than the known refusal is a binding problem, not a Wine gap.
    report.expect_refusal("wrong kind", _raise(TypeError("bad cdef")), "why", _Refused)
    assert report.results[-1][0] == "FAIL"
    assert report.exit_status() == 1


def test_report_check_failure_returns_none_and_fails() -> None:
    report = smoke.Report(lambda _line: None)
    assert report.check("boom", _raise(AssertionError("got 1, expected 2"))) is None
    assert report.results == [("FAIL", "boom", "AssertionError: got 1, expected 2")]
    assert report.exit_status() == 1


def test_report_without_any_pass_fails() -> None:
    report = smoke.Report(lambda _line: None)
    report.note("only a note", lambda: "x")
    assert report.exit_status() == 1


def test_report_refusal_that_succeeds_is_a_pass() -> None:
    report = smoke.Report(lambda _line: None)
    assert report.expect_refusal("caught up", lambda: None, "why", _Refused) is True
    assert report.results[0][0] == "PASS"


def test_note_tolerates_only_the_named_exceptions() -> None:
    report = smoke.Report(lambda _line: None)
    report.note("tolerated", _raise(_Refused("x")), (_Refused,))
    report.note("not tolerated", _raise(KeyError("y")), (_Refused,))
    assert [status for status, _, _ in report.results] == ["INFO", "FAIL"]


def test_describe_exception_adds_unsigned_hex_once() -> None:
    error = NativeCallError("NCryptOpenKey", -2146893783, ncrypt.NTE_NAMES)  # negative, as NCrypt returns it
    text = smoke.describe_exception(error)
    assert text == "NativeCallError: NCryptOpenKey failed: NTE_NOT_SUPPORTED (0x80090029)"
    assert smoke.describe_exception(ValueError("x")) == "ValueError: x"


def _raise(exc: BaseException):  # type: ignore[no-untyped-def]
    def action() -> None:
        raise exc

    return action


# -- importing _native without the package __init__ ------------------------------------------------


def test_import_native_skips_the_package_init() -> None:
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("smoke", {str(TOOL / "smoke.py")!r})
        smoke = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(smoke)
        native = smoke.import_native({str(REPO)!r})
        package = sys.modules["azure_msiv2_credential"]
        assert native.NativeLibraries.__module__ == "azure_msiv2_credential._native._loader"
        assert not hasattr(package, "MsiV2ManagedIdentityCredential"), "the real __init__ ran"
        assert not any(name.startswith("azure.core") for name in sys.modules), "azure-core was imported"
        from azure_msiv2_credential._native import crypt32, ncrypt, winhttp
        assert ncrypt.ffi is winhttp.ffi is crypt32.ffi
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=str(TOOL), timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_native_accepts_the_same_package_and_refuses_another(tmp_path: Path) -> None:
    # In this process the real package is already imported (from the work tree or an installed copy).
    root = Path(next(iter(azure_msiv2_credential.__path__))).parent
    assert smoke.import_native(str(root)).__name__ == "azure_msiv2_credential._native"
    other = tmp_path / "azure_msiv2_credential" / "_native"
    other.mkdir(parents=True)
    (other / "_winapi.py").write_text("")
    with pytest.raises(ImportError, match="already imported"):
        smoke.import_native(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is --repo the repository root"):
        smoke.import_native(str(tmp_path / "nowhere"))


# -- the cryptography helpers ----------------------------------------------------------------------


def _rsa_public_blob(key: rsa.RSAPublicKey) -> bytes:
    numbers = key.public_numbers()
    exponent = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    modulus = numbers.n.to_bytes(key.key_size // 8, "big")
    header = struct.pack("<6I", ncrypt.BCRYPT_RSAPUBLIC_MAGIC, key.key_size, len(exponent), len(modulus), 0, 0)
    return header + exponent + modulus


def test_blob_parse_and_pss_verification_round_trip() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = smoke.public_key_from_blob(ncrypt, _rsa_public_blob(private.public_key()))
    assert public.public_numbers() == private.public_key().public_numbers()
    message = b"wine smoke"
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=smoke.PSS_SALT)
    signature = private.sign(message, pss, hashes.SHA256())
    smoke.verify_pss(public, signature, message)
    with pytest.raises(InvalidSignature):
        smoke.verify_pss(public, signature, message + b"!")
    wrong_salt = private.sign(message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20), hashes.SHA256())
    with pytest.raises(InvalidSignature):
        smoke.verify_pss(public, wrong_salt, message)


def test_certificate_for_carries_the_given_public_key() -> None:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    cert = x509.load_der_x509_certificate(smoke.certificate_for(public))
    assert cert.public_key().public_numbers() == public.public_numbers()
    assert cert.version == x509.Version.v3  # the smoke reads CERT_INFO.dwVersion == 2


def test_unique_key_names_differ() -> None:
    first, second = smoke.unique_key_name("x"), smoke.unique_key_name("x")
    assert first != second and first.startswith("msiv2-wine-smoke-x-")


# -- the loopback servers the script runs inside Wine ----------------------------------------------


def test_loopback_server_echoes_over_plain_http() -> None:
    with smoke._LoopbackHttpServer() as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("POST", "/hello?x=1", body=b"body", headers={"X-Smoke": "wine", "X-Second": "2"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("X-Echo") == "wine"
        assert response.read() == b"hello from loopback /hello?x=1 X-Second=2 body=4"
        connection.close()
        assert server.wait_for("/hello") == 1
        assert server.requests_for("/other") == 0


def test_loopback_server_over_tls(tmp_path: Path) -> None:
    context, der = smoke.tls_server_material(str(tmp_path))
    cert = x509.load_der_x509_certificate(der)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    client = ssl.create_default_context(cadata=cert.public_bytes(Encoding.PEM).decode())  # trusts only that one
    with smoke._LoopbackHttpServer(context) as server:
        connection = http.client.HTTPSConnection("localhost", server.port, timeout=10, context=client)
        connection.request("GET", "/checked")
        response = connection.getresponse()
        assert response.read() == b"hello from loopback /checked X-Second=None body=0"
        connection.close()
