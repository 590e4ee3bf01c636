"""The command line: ``demo`` and ``token`` (``diagnose`` is in test_diagnose.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from azure_msiv2_credential.__main__ import main
from azure_msiv2_credential.emulator import Emulator


def test_demo_runs_and_summarises() -> None:
    env = {k: v for k, v in os.environ.items() if k != "AZURE_POD_IDENTITY_AUTHORITY_HOST"}
    result = subprocess.run(
        [sys.executable, "-m", "azure_msiv2_credential", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ("x5t#S256", "mtls_pop", "token bound to this certificate: yes", "HTTP 200"):
        assert expected in result.stdout
    assert "eyJ" not in result.stdout  # the token itself is never printed


def test_token_command_redacts(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["token", emulator.resource_url, "--software-key", "--ca-bundle", emulator.ca_bundle_path, "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    facts = json.loads(out)
    assert facts["token_type"] == "mtls_pop"
    assert facts["cnf"] == "matches the certificate"
    assert "access_token" not in facts and "eyJ" not in out


def test_token_command_show_token(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    user = next(i for i in emulator.identities if not i.system_assigned)
    rc = main(
        [
            "token",
            emulator.resource_url,
            "--software-key",
            "--ca-bundle",
            emulator.ca_bundle_path,
            "--object-id",
            user.object_id,
            "--show-token",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "access_token" in out and "eyJ" in out
    assert user.client_id in out


def test_token_command_reports_errors(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    emulator.inject("token", "bearer")
    rc = main(["token", emulator.resource_url, "--software-key", "--ca-bundle", emulator.ca_bundle_path])
    captured = capsys.readouterr()
    assert rc == 1
    assert "MSI_V2_TOKEN_RESPONSE_INVALID" in captured.err


def test_unknown_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--bogus"])
    assert info.value.code == 2
