"""``python -m azure_msiv2_credential demo``: the whole MSI v2 flow against the built-in emulator."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Optional, TextIO

from azure.core.pipeline import Pipeline
from azure.core.rest import HttpRequest

from ._errors import MsiV2Error
from ._token_leg import check_cnf
from .emulator import Emulator
from .keys import SoftwareKeyProvider


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def run_demo(out: Optional[TextIO] = None) -> int:
    """Start the emulator, acquire a bound token with a software key, call the bound resource; 0 on success."""
    out = out or sys.stdout
    from . import MsiV2ManagedIdentityCredential, MtlsPopTransport

    started = time.perf_counter()
    with Emulator() as emu:
        previous = os.environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST")
        os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = emu.imds_url
        try:
            credential = MsiV2ManagedIdentityCredential(
                mtls_proof_of_possession=True,
                key_provider=SoftwareKeyProvider(),
                connection_verify=emu.ca_bundle_path,
            )
            with credential:
                info = credential.get_token_info(f"{emu.resource_url}/.default")
                binding = credential.binding_registry.lookup(info.token)
                if binding is None:  # pragma: no cover - the registry always knows our own token
                    raise MsiV2Error("the credential did not register its token")
                check_cnf(info.token, binding, "demo")  # raises if the token is not bound to our certificate
                request = HttpRequest(
                    "GET",
                    f"{emu.resource_url}/secrets/demo-secret?api-version=7.5",
                    headers={"Authorization": f"Bearer {info.token}"},
                )
                with Pipeline(transport=MtlsPopTransport(credential, connection_verify=emu.ca_bundle_path)) as pipe:
                    response = pipe.run(request).http_response
                    response.read()
                secret: Any = json.loads(response.text()).get("value") if response.status_code == 200 else None
        except MsiV2Error as error:
            print(f"demo failed: {error}", file=out)
            return 1
        finally:
            if previous is None:
                os.environ.pop("AZURE_POD_IDENTITY_AUTHORITY_HOST", None)
            else:
                os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = previous
    lines = [
        "MSI v2 demo against the local emulator",
        f"  identity            system-assigned, client id {binding.client_id}",
        f"  binding key         {binding.strength} (RSA-2048, in memory only)",
        f"  certificate         x5t#S256 {binding.thumbprint}",
        f"                      valid until {_when(binding.not_after)}, rotates at {_when(binding.rotate_at)}",
        f"  token               {info.token_type}, expires {_when(info.expires_on)}, "
        f"refresh at {_when(info.refresh_on or 0)}",
        "  cnf check           token bound to this certificate: yes",
        f"  resource call       GET /secrets/demo-secret over mTLS -> HTTP {response.status_code} ({secret!r})",
        f"  emulator calls      {dict(sorted(emu.calls.items()))}",
        f"  elapsed             {time.perf_counter() - started:.2f} s",
    ]
    print("\n".join(lines), file=out)
    return 0 if response.status_code == 200 else 1
