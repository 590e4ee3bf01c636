"""Call a token-bound endpoint from your own azure-core ``PipelineClient``.

    python samples/pipeline_client_policy.py --emulator
    python samples/pipeline_client_policy.py --url https://<vault>.vault.azure.net \
        --path "/secrets/<name>?api-version=7.5" --scope https://vault.azure.net/.default

``MtlsPopAuthenticationPolicy`` is azure-core's bearer policy (caching, refresh) speaking ``mtls_pop``; it
hands the token's binding to ``BindingTransport``, which presents the certificate.
"""

from __future__ import annotations

import sys

from _setup import parser, target
from azure.core import PipelineClient
from azure.core.pipeline.policies import RetryPolicy, UserAgentPolicy
from azure.core.rest import HttpRequest, HttpResponse

from azure_msiv2_credential import MsiV2ManagedIdentityCredential, MtlsPopAuthenticationPolicy
from azure_msiv2_credential.transport import BindingTransport


def main(argv: list[str]) -> int:
    p = parser(__doc__.splitlines()[0], "the service URL", "AZURE_KEYVAULT_URL")
    p.add_argument("--path", default="/secrets/demo-secret?api-version=7.5")
    p.add_argument("--scope", help="the token scope (default: <url>/.default)")
    args = p.parse_args(argv)
    with target(args) as where:
        scope = args.scope or f"{where.resource_url.rstrip('/')}/.default"
        credential = MsiV2ManagedIdentityCredential(
            mtls_proof_of_possession=True, **where.credential_options, **where.options
        )
        policies = [
            UserAgentPolicy(sdk_moniker="msiv2-sample"),
            RetryPolicy(),
            MtlsPopAuthenticationPolicy(credential, scope),
        ]
        client: PipelineClient[HttpRequest, HttpResponse] = PipelineClient(
            where.resource_url, policies=policies, transport=BindingTransport(**where.options)
        )
        with credential, client:
            for attempt in (1, 2):  # the second request reuses the cached token and the TLS connection
                response = client.send_request(HttpRequest("GET", where.resource_url.rstrip("/") + args.path))
                response.raise_for_status()
                print(f"request {attempt}: HTTP {response.status_code}, {len(response.content)} bytes")
            print(f"value: {response.json().get('value')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
