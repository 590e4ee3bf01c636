"""MSI v2 first, Azure CLI second: ``ChainedTokenCredential`` with the mtls_pop transport.

    python samples/chained_credential.py --emulator
    python samples/chained_credential.py --url https://<vault>.vault.azure.net --secret <name>

Where MSI v2 cannot run (no IMDS v2, a v1-only host, ``MSAL_MI_DISABLE_IMDS_V2=1``) the credential says
"unavailable" and the chain moves on to the Azure CLI; its Bearer token passes through
``MtlsPopTransport`` untouched, without a certificate. Any other MSI v2 failure stops the chain: it never
falls back to a weaker token silently. ``--no-msi`` demonstrates the fallback by disabling MSI v2.
"""

from __future__ import annotations

import os
import sys

from _setup import parser, target
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import AzureCliCredential, ChainedTokenCredential
from azure.keyvault.secrets import SecretClient

from azure_msiv2_credential import MsiV2ManagedIdentityCredential, MtlsPopTransport


def main(argv: list[str]) -> int:
    p = parser(__doc__.splitlines()[0], "the vault URL", "AZURE_KEYVAULT_URL")
    p.add_argument("--secret", default="demo-secret")
    p.add_argument("--no-msi", action="store_true", help="disable MSI v2 (MSAL_MI_DISABLE_IMDS_V2=1)")
    args = p.parse_args(argv)
    if args.no_msi:
        os.environ["MSAL_MI_DISABLE_IMDS_V2"] = "1"
    with target(args) as where:
        msi = MsiV2ManagedIdentityCredential(mtls_proof_of_possession=True, **where.credential_options, **where.options)
        chain = ChainedTokenCredential(msi, AzureCliCredential())
        # The transport needs the MSI v2 credential itself: its registry knows which tokens are bound.
        transport = MtlsPopTransport(msi, **where.options)
        scope = f"{where.resource_url.rstrip('/')}/.default"
        try:
            token = chain.get_token_info(scope)
        except ClientAuthenticationError as exc:  # every credential was unavailable, or one failed
            print(f"no credential could authenticate: {exc.message.splitlines()[0]}")
            return 2
        bound = msi.binding_registry.lookup(token.token) is not None
        print(f"authenticated by {'MSI v2 (mtls_pop, certificate-bound)' if bound else 'Azure CLI (bearer)'}")
        with chain, SecretClient(where.resource_url, chain, transport=transport, **where.client_options) as client:
            secret = client.get_secret(args.secret)
            print(f"secret {secret.name!r}: {secret.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
