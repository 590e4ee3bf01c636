"""Every sample runs against the emulator, as a user would run it: a subprocess, ``--emulator``, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
EXPECTED = {
    "secret_client.py": ["secret 'demo-secret'", "hello from the token-bound resource"],
    "secret_client_async.py": ["secret 'demo-secret'", "hello from the token-bound resource"],
    "blob_service_client.py": ["container 'demo'", "blob 'hello.txt': 10 bytes"],
    "pipeline_client_policy.py": ["request 1: HTTP 200", "request 2: HTTP 200", "hello from the token-bound"],
    "chained_credential.py": ["authenticated by MSI v2 (mtls_pop", "hello from the token-bound resource"],
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "MSAL_MI_DISABLE_IMDS_V2")
    }
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SAMPLES.parent), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, env=env, cwd=SAMPLES.parent, check=False
    )


def test_every_sample_is_covered() -> None:
    assert {p.name for p in SAMPLES.glob("*.py") if not p.name.startswith("_")} == set(EXPECTED)


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_sample_runs_against_the_emulator(sample: str) -> None:
    result = _run(str(SAMPLES / sample), "--emulator")
    assert result.returncode == 0, result.stdout + result.stderr
    for text in EXPECTED[sample]:
        assert text in result.stdout, result.stdout
    assert "eyJ" not in result.stdout + result.stderr  # never a JWT in the output


def test_chained_credential_moves_on_when_msi_v2_is_disabled() -> None:
    """MSI v2 says "unavailable" (kill switch); the chain tries the Azure CLI next."""
    result = _run(str(SAMPLES / "chained_credential.py"), "--emulator", "--no-msi")
    output = result.stdout + result.stderr
    if "authenticated by Azure CLI" in result.stdout:  # a logged-in az on this machine answered
        return
    assert result.returncode == 2, output
    assert "MSI_V2_DISABLED" in output
    assert "AzureCliCredential" in output


def test_without_emulator_a_url_is_required() -> None:
    result = _run(str(SAMPLES / "secret_client.py"))
    assert result.returncode != 0
    assert "--url" in result.stderr
