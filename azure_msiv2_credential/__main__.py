"""Command line: ``python -m azure_msiv2_credential {demo,token,diagnose,emulator}``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional


def _identity_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--client-id", help="user-assigned identity by client id")
    group.add_argument("--object-id", help="user-assigned identity by object (principal) id")
    group.add_argument("--resource-id", help="user-assigned identity by ARM resource id")
    parser.add_argument("--attest", action="store_true", help="attest the KeyGuard key (with_attestation_support)")


def _identity_config(args: argparse.Namespace) -> Optional[dict[str, str]]:
    if args.object_id:
        return {"object_id": args.object_id}
    if args.resource_id:
        return {"resource_id": args.resource_id}
    return None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m azure_msiv2_credential", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the whole MSI v2 flow against the built-in emulator")
    commands.add_parser("emulator", help="run the local IMDS v2 / token service / resource emulator", add_help=False)

    token = commands.add_parser("token", help="acquire an mtls_pop token and describe it (redacted)")
    token.add_argument("resource", help="resource URI, e.g. https://vault.azure.net (or a '/.default' scope)")
    _identity_arguments(token)
    token.add_argument("--software-key", action="store_true", help="use an in-memory software key (non-Windows)")
    token.add_argument("--ca-bundle", help="CA bundle for the token service (the emulator prints one)")
    token.add_argument("--show-token", action="store_true", help="also print the access token itself")
    token.add_argument("--json", action="store_true", help="print JSON")

    diagnose = commands.add_parser("diagnose", help="explain whether MSI v2 can work on this host, and why")
    _identity_arguments(diagnose)
    diagnose.add_argument("--minimum-binding-strength", choices=("software", "keyguard"))
    diagnose.add_argument("--software-key", action="store_true", help="assume a software key provider")
    diagnose.add_argument("--attestation-library", help="absolute path of AttestationClientLib.dll")
    diagnose.add_argument("--json", action="store_true", help="print the documented JSON report")

    args, rest = parser.parse_known_args(argv)
    if args.command == "emulator":
        from .emulator import serve

        return serve(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    if args.command == "token":
        from ._token_command import run_token

        return run_token(
            args.resource,
            client_id=args.client_id,
            identity_config=_identity_config(args),
            attest=args.attest,
            software_key=args.software_key,
            ca_bundle=args.ca_bundle,
            show_token=args.show_token,
            as_json=args.json,
        )
    from ._diagnose import diagnose as run_diagnose
    from .keys import SoftwareKeyProvider

    report = run_diagnose(
        client_id=args.client_id,
        identity_config=_identity_config(args),
        with_attestation_support=args.attest,
        minimum_binding_strength=args.minimum_binding_strength,
        key_provider=SoftwareKeyProvider() if args.software_key else None,
        attestation_library=args.attestation_library,
    )
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.usable else 1


if __name__ == "__main__":
    sys.exit(main())
