"""What every sample shares: ``--emulator`` (the local MSI v2 emulator) or real Azure.

With ``--emulator`` the emulator starts in this process, ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` points the
credential at its IMDS, its CA bundle is trusted through ``connection_verify`` (never by switching
verification off), and the binding key is an in-memory software key. On an Azure VM, nothing of that is
needed: the credential finds IMDS itself and uses KeyGuard on Windows (``--software-key`` elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

from azure_msiv2_credential import SoftwareKeyProvider


@dataclass
class Target:
    """Where a sample talks to and the keyword arguments its credential and transport need."""

    resource_url: str
    options: dict[str, Any] = field(default_factory=dict)  # e.g. connection_verify, for both
    credential_options: dict[str, Any] = field(default_factory=dict)  # e.g. key_provider
    client_options: dict[str, Any] = field(default_factory=dict)  # SDK client extras
    emulator: Optional[Any] = None


def parser(description: str, url_help: str, url_env: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--emulator", action="store_true", help="run against a local MSI v2 emulator")
    p.add_argument("--url", default=os.environ.get(url_env), help=f"{url_help} (default: ${url_env})")
    p.add_argument("--client-id", help="a user-assigned identity's client id (default: system-assigned)")
    p.add_argument("--software-key", action="store_true", help="use an in-memory key instead of KeyGuard")
    p.add_argument("--ca-bundle", help="CA bundle to trust (default: the system's)")
    return p


@contextlib.contextmanager
def target(args: argparse.Namespace) -> Iterator[Target]:
    """The emulator (started and stopped here) or the Azure resource named on the command line."""
    if not args.emulator:
        if not args.url:
            raise SystemExit("pass --url (or set the environment variable), or --emulator")
        credential_options: dict[str, Any] = {}
        if args.client_id:
            credential_options["client_id"] = args.client_id
        if args.software_key:
            credential_options["key_provider"] = SoftwareKeyProvider()
        options = {"connection_verify": args.ca_bundle} if args.ca_bundle else {}
        yield Target(args.url, options, credential_options)
        return

    from azure_msiv2_credential.emulator import Emulator

    with Emulator() as emu:
        previous = os.environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST")
        os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = emu.imds_url
        try:
            yield Target(
                emu.resource_url,
                options={"connection_verify": emu.ca_bundle_path},
                credential_options={"key_provider": SoftwareKeyProvider()},
                # Key Vault checks that the challenge's resource is a parent domain of the vault's; the
                # emulator serves both on localhost, so that check cannot pass there.
                client_options={"verify_challenge_resource": False},
                emulator=emu,
            )
        finally:
            if previous is None:
                os.environ.pop("AZURE_POD_IDENTITY_AUTHORITY_HOST", None)
            else:
                os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = previous
