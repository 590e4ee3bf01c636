"""Read Blob storage with an MSI v2 (mtls_pop) token: container properties and a streamed download.

    python samples/blob_service_client.py --emulator
    python samples/blob_service_client.py --url https://<account>.blob.core.windows.net --container c --blob b

Downloads stream chunk by chunk over the bound connection (``max_chunk_get_size`` sets the chunk size).
"""

from __future__ import annotations

import hashlib
import sys

from _setup import parser, target
from azure.storage.blob import BlobServiceClient

from azure_msiv2_credential import MsiV2ManagedIdentityCredential, MtlsPopTransport


def main(argv: list[str]) -> int:
    p = parser(__doc__.splitlines()[0], "the blob service URL", "AZURE_STORAGE_BLOB_URL")
    p.add_argument("--container", default="demo")
    p.add_argument("--blob", default="hello.txt")
    args = p.parse_args(argv)
    with target(args) as where:
        credential = MsiV2ManagedIdentityCredential(
            mtls_proof_of_possession=True, **where.credential_options, **where.options
        )
        transport = MtlsPopTransport(credential, **where.options)
        with (
            credential,
            BlobServiceClient(
                where.resource_url, credential, transport=transport, max_chunk_get_size=4 * 1024 * 1024
            ) as service,
        ):
            container = service.get_container_client(args.container)
            properties = container.get_container_properties()
            print(f"container {properties.name!r}: last modified {properties.last_modified:%Y-%m-%d %H:%M:%S}")
            digest, size, chunks = hashlib.sha256(), 0, 0
            for chunk in container.download_blob(args.blob).chunks():
                digest.update(chunk)
                size += len(chunk)
                chunks += 1
            print(f"blob {args.blob!r}: {size} bytes in {chunks} chunk(s), sha256 {digest.hexdigest()[:16]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
