"""Read a Key Vault secret asynchronously with an MSI v2 (mtls_pop) token.

    python samples/secret_client_async.py --emulator
    python samples/secret_client_async.py --url https://<vault>.vault.azure.net --secret <name>

The async twins live in ``azure_msiv2_credential.aio`` under the same names.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from _setup import parser, target
from azure.keyvault.secrets.aio import SecretClient

from azure_msiv2_credential.aio import MsiV2ManagedIdentityCredential, MtlsPopTransport


async def read_secrets(
    url: str,
    names: list[str],
    options: dict[str, Any],
    credential_options: dict[str, Any],
    client_options: dict[str, Any],
) -> None:
    credential = MsiV2ManagedIdentityCredential(mtls_proof_of_possession=True, **credential_options, **options)
    transport = MtlsPopTransport(credential, **options)
    async with credential, SecretClient(url, credential, transport=transport, **client_options) as client:
        # Concurrent reads share one token, one binding and one TLS session pool.
        secrets = await asyncio.gather(*(client.get_secret(name) for name in names))
        for secret in secrets:
            print(f"secret {secret.name!r} (version {secret.properties.version}): {secret.value}")


def main(argv: list[str]) -> int:
    p = parser(__doc__.splitlines()[0], "the vault URL", "AZURE_KEYVAULT_URL")
    p.add_argument("--secret", action="append", help="a secret's name (repeatable; default demo-secret)")
    args = p.parse_args(argv)
    with target(args) as where:
        asyncio.run(
            read_secrets(
                where.resource_url,
                args.secret or ["demo-secret"],
                where.options,
                where.credential_options,
                where.client_options,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
