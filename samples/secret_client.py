"""Read a Key Vault secret with an MSI v2 (mtls_pop) token.

    python samples/secret_client.py --emulator
    python samples/secret_client.py --url https://<vault>.vault.azure.net --secret <name>

The only change to ordinary SDK code is ``transport=MtlsPopTransport(credential)``: the SDK's own bearer
policy fetches the token, and the transport sends it as ``mtls_pop`` over TLS with the bound certificate.
"""

from __future__ import annotations

import sys

from _setup import parser, target
from azure.keyvault.secrets import SecretClient

from azure_msiv2_credential import MsiV2ManagedIdentityCredential, MtlsPopTransport


def main(argv: list[str]) -> int:
    p = parser(__doc__.splitlines()[0], "the vault URL", "AZURE_KEYVAULT_URL")
    p.add_argument("--secret", default="demo-secret", help="the secret's name")
    args = p.parse_args(argv)
    with target(args) as where:
        credential = MsiV2ManagedIdentityCredential(
            mtls_proof_of_possession=True, **where.credential_options, **where.options
        )
        transport = MtlsPopTransport(credential, **where.options)
        with (
            credential,
            SecretClient(where.resource_url, credential, transport=transport, **where.client_options) as client,
        ):
            secret = client.get_secret(args.secret)
            print(f"secret {secret.name!r} (version {secret.properties.version}): {secret.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
