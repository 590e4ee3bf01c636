"""Why does (or doesn't) MSI v2 work here? Probes, each with a verdict and the fix.

Used by ``python -m azure_msiv2_credential diagnose`` and by the credential's ``get_capabilities()``.
Bounded in time: IMDS is probed with short timeouts and no retries, so an absent IMDS costs seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from azure.core.exceptions import AzureError
from azure.core.pipeline import Pipeline
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest

from . import _imds
from ._core import KILL_SWITCH_ENV, kill_switch_set
from ._errors import MsiV2Error, MsiV2UnavailableError
from ._lifetimes import IMDS_PROBE_TIMEOUT
from .keys import STRENGTH_ORDER, BindingStrength, KeyProvider

#: Version of the ``--json`` document; bump on any incompatible change (README "diagnose --json").
SCHEMA_VERSION = 1

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"


@dataclass(frozen=True)
class Check:
    id: str
    status: str  # pass | fail | warn | skip
    detail: str
    fix: Optional[str] = None


@dataclass
class Capabilities:
    """What this host can do for MSI v2 (``MsiV2ManagedIdentityCredential.get_capabilities()``)."""

    imds_reachable: bool = False
    imds_v2: bool = False
    keyguard: bool = False
    attestation_library: Optional[str] = None
    kill_switch: bool = False
    max_binding_strength: BindingStrength = "none"


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    capabilities: Capabilities = field(default_factory=Capabilities)
    usable: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    def to_json(self) -> str:
        document = {
            "schema_version": SCHEMA_VERSION,
            "msi_v2_usable": self.usable,
            "max_binding_strength": self.capabilities.max_binding_strength,
            "options": self.options,
            "capabilities": asdict(self.capabilities),
            "checks": [asdict(c) for c in self.checks],
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }
        return json.dumps(document, indent=2)

    def to_text(self) -> str:
        marks = {PASS: "ok  ", FAIL: "FAIL", WARN: "warn", SKIP: "skip"}
        lines = [
            f"[{marks[c.status]}] {c.id}: {c.detail}" + (f"\n       fix: {c.fix}" if c.fix else "") for c in self.checks
        ]
        verdict = "MSI v2 can work here" if self.usable else "MSI v2 cannot work here with these options"
        lines.append(f"\nmaximum binding strength: {self.capabilities.max_binding_strength}")
        lines.append(f"verdict: {verdict} ({self.elapsed_seconds:.1f} s)")
        return "\n".join(lines)


def _get(pipeline: Pipeline[Any, Any], url: str, headers: Mapping[str, str]) -> Any:
    request = HttpRequest("GET", url, headers=dict(headers))
    response = pipeline.run(
        request, connection_timeout=IMDS_PROBE_TIMEOUT, read_timeout=IMDS_PROBE_TIMEOUT
    ).http_response
    response.read()
    return response


def _file_facts(path: str) -> str:
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return f"{path} ({os.path.getsize(path)} bytes, sha256 {digest[:16]}…)"


def diagnose(
    *,
    client_id: Optional[str] = None,
    identity_config: Optional[Mapping[str, str]] = None,
    with_attestation_support: bool = False,
    minimum_binding_strength: Optional[str] = None,
    key_provider: Optional[KeyProvider] = None,
    attestation_library: Optional[str] = None,
) -> Report:
    """Run every probe and return the report (never raises for a host problem: that is a verdict)."""
    started = time.monotonic()
    report = Report(
        options={
            "client_id": client_id,
            "identity_config": dict(identity_config or {}),
            "with_attestation_support": with_attestation_support,
            "minimum_binding_strength": minimum_binding_strength or "software",
        }
    )
    checks, caps = report.checks, report.capabilities

    caps.kill_switch = kill_switch_set()
    checks.append(
        Check(
            "kill_switch",
            FAIL,
            f"{KILL_SWITCH_ENV} is set: MSI v2 is disabled",
            f"unset {KILL_SWITCH_ENV} to enable MSI v2",
        )
        if caps.kill_switch
        else Check("kill_switch", PASS, f"{KILL_SWITCH_ENV} is not set")
    )

    metadata_ok = _probe_imds(checks, caps, client_id, identity_config)
    key_ok = _probe_keys(checks, caps, key_provider, with_attestation_support)
    _probe_attestation_library(checks, caps, attestation_library, with_attestation_support)

    if caps.imds_v2 and not caps.kill_switch:
        caps.max_binding_strength = "keyguard" if caps.keyguard else "software"
    floor = minimum_binding_strength or "software"
    strong_enough = STRENGTH_ORDER.index(caps.max_binding_strength) >= STRENGTH_ORDER.index(floor)
    if caps.max_binding_strength == "none":  # no MSI v2 at all: the checks above say why
        checks.append(Check("binding_strength", SKIP, "no binding is possible without IMDS v2 (see above)"))
    else:
        checks.append(
            Check(
                "binding_strength",
                PASS if strong_enough else FAIL,
                f"strongest binding here: {caps.max_binding_strength}; the floor is {floor}",
                None if strong_enough else "run on a Trusted Launch / Confidential VM with VBS on, or lower the floor",
            )
        )
    attest_ok = not with_attestation_support or (caps.keyguard and caps.attestation_library is not None)
    report.usable = bool(
        metadata_ok and caps.imds_v2 and not caps.kill_switch and strong_enough and attest_ok and key_ok
    )
    report.elapsed_seconds = time.monotonic() - started
    return report


def _probe_imds(
    checks: list[Check], caps: Capabilities, client_id: Optional[str], identity_config: Optional[Mapping[str, str]]
) -> bool:
    try:
        authority = _imds.imds_authority()
        selector = _imds.identity_selector(client_id, identity_config)
    except (MsiV2Error, ValueError) as error:
        checks.append(Check("configuration", FAIL, str(error), "fix the option or environment variable named"))
        return False
    with Pipeline(transport=RequestsTransport(use_env_settings=False), policies=[]) as pipeline:  # IMDS: no proxy
        try:
            probe = _get(pipeline, _imds.probe_request(authority).url, {})
        except AzureError as error:
            checks.append(
                Check(
                    "imds_reachable",
                    FAIL,
                    f"no answer from {authority} ({type(error).__name__})",
                    f"run on an Azure VM/VMSS with a managed identity, or set {_imds.AUTHORITY_ENV} to the emulator",
                )
            )
            checks.append(Check("imds_v2", SKIP, "IMDS is not reachable"))
            checks.append(Check("identity", SKIP, "IMDS is not reachable"))
            return False
        caps.imds_reachable = True
        checks.append(Check("imds_reachable", PASS, f"{authority} answered HTTP {probe.status_code}"))
        from_imds = "imds" in (probe.headers.get("Server") or "").lower()
        caps.imds_v2 = from_imds and probe.status_code == 400
        if not caps.imds_v2:
            why = "not from IMDS (no 'Server: IMDS' header)" if not from_imds else f"HTTP {probe.status_code}"
            checks.append(
                Check(
                    "imds_v2",
                    FAIL,
                    f"the v2 probe answered {why}; this host has IMDS v1 only",
                    "MSI v2 needs a VM where IMDS v2 is enabled (Trusted Launch or Confidential, "
                    "allow-listed tenant); use mtls_proof_of_possession=False meanwhile",
                )
            )
            checks.append(Check("identity", SKIP, "no IMDS v2"))
            return False
        checks.append(Check("imds_v2", PASS, "the v2 probe answered 400 as IMDS v2 does"))
        correlation_id = str(uuid.uuid4())
        request = _imds.metadata_request(authority, selector, correlation_id)
        try:
            response = _get(pipeline, request.url, request.headers)
            metadata = _imds.parse_metadata(
                _imds.WireResponse(response.status_code, response.headers, response.content), correlation_id
            )
        except MsiV2UnavailableError as error:  # e.g. 404: the probe's 400 came from a v1-only IMDS
            caps.imds_v2 = False
            checks[-1] = Check("imds_v2", FAIL, str(error), "MSI v2 needs a VM where IMDS v2 is enabled")
            checks.append(Check("identity", SKIP, "no IMDS v2"))
            return False
        except (AzureError, MsiV2Error) as error:
            message = error.message if isinstance(error, AzureError) else str(error)
            checks.append(
                Check(
                    "identity",
                    FAIL,
                    f"{selector}: {message}",
                    "assign this identity to the VM, or fix client_id / identity_config",
                )
            )
            return False
        checks.append(
            Check("identity", PASS, f"{selector}: client id {metadata.client_id}, tenant {metadata.tenant_id}")
        )
        return True


def _probe_keys(checks: list[Check], caps: Capabilities, key_provider: Optional[KeyProvider], attest: bool) -> bool:
    """Whether the configured (or default) key provider can make a key; records KeyGuard availability."""
    if key_provider is not None:
        return _probe_provider(checks, caps, key_provider, attest)
    if sys.platform != "win32":
        checks.append(
            Check(
                "keyguard",
                FAIL,
                "KeyGuard keys need Windows and no key provider was given",
                "on Linux pass key_provider=SoftwareKeyProvider() (command line: --software-key)",
            )
        )
        return False
    from .keys.keyguard import KeyGuardKeyProvider

    with KeyGuardKeyProvider() as provider:  # the default provider: ours to close
        return _probe_provider(checks, caps, provider, attest)


def _probe_provider(checks: list[Check], caps: Capabilities, provider: KeyProvider, attest: bool) -> bool:
    if provider.strength != "keyguard":
        checks.append(
            Check("keyguard", FAIL if attest else SKIP, f"the configured key provider makes {provider.strength} keys")
        )
        return True
    try:
        key = provider.get_key()
    except MsiV2Error as error:
        fix = "enable Virtualization-based Security (Trusted Launch VM, 'Credential Guard' capable)"
        checks.append(Check("keyguard", FAIL if attest else WARN, str(error), fix))
        return False
    caps.keyguard = key.strength == "keyguard"
    checks.append(Check("keyguard", PASS, f"KeyGuard key {key.key_id} is VBS-isolated"))
    return True


def _probe_attestation_library(checks: list[Check], caps: Capabilities, explicit: Optional[str], attest: bool) -> None:
    from ._native._loader import ATTESTATION_DLL, ATTESTATION_ENV, package_attestation_path

    candidates = [p for p in (explicit, os.environ.get(ATTESTATION_ENV), package_attestation_path()) if p]
    for path in candidates:
        if not os.path.isabs(path):
            checks.append(
                Check(
                    "attestation_library",
                    FAIL,
                    f"{path!r} is not an absolute path",
                    f"set {ATTESTATION_ENV} to the absolute path of {ATTESTATION_DLL}",
                )
            )
            return
        if os.path.isfile(path):
            caps.attestation_library = path
            checks.append(Check("attestation_library", PASS, _file_facts(path)))
            return
    looked = ", ".join(candidates)
    checks.append(
        Check(
            "attestation_library",
            FAIL if attest else SKIP,
            f"{ATTESTATION_DLL} not found (looked in {looked})",
            f"place {ATTESTATION_DLL} next to the package or set {ATTESTATION_ENV} to its absolute path"
            if attest
            else None,
        )
    )
