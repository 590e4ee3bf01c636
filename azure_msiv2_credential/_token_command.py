"""``python -m azure_msiv2_credential token RESOURCE``: acquire a token and describe it, redacted."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional, TextIO

from ._errors import MsiV2Error
from ._token_leg import check_cnf


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def run_token(
    resource: str,
    *,
    client_id: Optional[str] = None,
    identity_config: Optional[dict[str, str]] = None,
    attest: bool = False,
    software_key: bool = False,
    ca_bundle: Optional[str] = None,
    show_token: bool = False,
    as_json: bool = False,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Acquire an mtls_pop token for ``resource``; print its type, expiry, certificate and cnf check."""
    out, err = out or sys.stdout, err or sys.stderr
    from . import MsiV2ManagedIdentityCredential
    from .keys import SoftwareKeyProvider

    scope = resource if resource.endswith("/.default") else f"{resource}/.default"
    options: dict[str, Any] = {"mtls_proof_of_possession": True, "with_attestation_support": attest}
    if software_key:
        options["key_provider"] = SoftwareKeyProvider()
    if ca_bundle:
        options["connection_verify"] = ca_bundle
    try:
        with MsiV2ManagedIdentityCredential(client_id=client_id, identity_config=identity_config, **options) as cred:
            info = cred.get_token_info(scope)
            binding = cred.binding_registry.lookup(info.token)
            if binding is None:  # pragma: no cover - our own token is always registered
                raise MsiV2Error("the credential did not register its token")
            try:
                check_cnf(info.token, binding, "token-command")
                cnf = "matches the certificate"
            except MsiV2Error:
                cnf = "DOES NOT match the certificate"
    except (MsiV2Error, ValueError) as error:
        print(f"error: {error}", file=err)
        return 1
    facts = {
        "resource": resource,
        "token_type": info.token_type,
        "expires_on": _iso(info.expires_on),
        "refresh_on": _iso(info.refresh_on) if info.refresh_on else None,
        "client_id": binding.client_id,
        "certificate_thumbprint_x5t_s256": binding.thumbprint,
        "certificate_expires_on": _iso(binding.not_after),
        "binding_strength": binding.strength,
        "attested": binding.attested,
        "cnf": cnf,
    }
    if show_token:
        facts["access_token"] = info.token
    if as_json:
        print(json.dumps(facts, indent=2), file=out)
    else:
        width = max(len(k) for k in facts)
        print("\n".join(f"{k.ljust(width)}  {v}" for k, v in facts.items()), file=out)
    return 0 if cnf.startswith("matches") else 1
