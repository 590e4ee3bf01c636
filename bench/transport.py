"""MtlsPopTransport against a plain azure-core RequestsTransport, in one process, against the emulator.

    python bench/transport.py [--seconds 20] [--strict]

Measures, for both transports calling the emulator's token-bound resource with the same certificate:

- keep-alive throughput: sequential requests over one kept-alive connection (requests per second);
- new-connection cost: the idle connections are dropped before each request (the same urllib3 call for
  both), so each request pays TCP + TLS handshake;
- (ours only) a cold pool: the binding's pool retired before each request.

The baseline is what a user could do without this package: ``RequestsTransport`` given
``connection_cert=(cert_file, key_file)`` and a pre-written ``mtls_pop`` header. It needs the key in a
file, which this package never does; the bench writes one into a private temporary directory and deletes
it at exit. Rounds alternate between the two transports and medians are compared, so both see the same
machine load. Targets: keep-alive >= 0.9x the baseline; a new connection no slower than the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from cryptography.hazmat.primitives import serialization

from azure_msiv2_credential import MsiV2ManagedIdentityCredential, MtlsPopTransport, SoftwareKeyProvider
from azure_msiv2_credential.emulator import Emulator

PATH = "/secrets/demo-secret?api-version=7.5"


def _rate(send: Callable[[], Any], count: int) -> float:
    """Requests per second for ``count`` sequential sends."""
    start = time.perf_counter()
    for _ in range(count):
        send()
    return count / (time.perf_counter() - start)


def _drop_connections(session: Any) -> None:
    """Close the session's idle connections: its next request connects afresh (TCP + TLS handshake)."""
    for adapter in session.adapters.values():
        adapter.poolmanager.clear()


def _expect_ok(response: Any) -> None:
    if response.status_code != 200:
        raise SystemExit(f"unexpected HTTP {response.status_code}: {response.text()[:200]}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="approximate time budget for measuring")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    with Emulator() as emu, tempfile.TemporaryDirectory(prefix="msiv2-bench-") as tmp:
        os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = emu.imds_url
        credential = MsiV2ManagedIdentityCredential(
            mtls_proof_of_possession=True, key_provider=SoftwareKeyProvider(), connection_verify=emu.ca_bundle_path
        )
        scope = f"{emu.resource_url}/.default"
        token = credential.get_token_info(scope).token
        binding = credential.binding_registry.lookup(token)
        assert binding is not None

        # The baseline's files (bench only: this package itself never writes a key to disk).
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_file.write_bytes(binding.certificate.public_bytes(serialization.Encoding.PEM))
        key = binding.key._private_key_for_tls()  # type: ignore[attr-defined]
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        os.chmod(key_file, 0o600)

        ours = MtlsPopTransport(credential, connection_verify=emu.ca_bundle_path)
        base = RequestsTransport(connection_verify=emu.ca_bundle_path, connection_cert=(str(cert_file), str(key_file)))
        url = emu.resource_url + PATH

        def send_ours(close: bool = False) -> None:
            if close:
                _drop_connections(ours._bound[binding][emu.ca_bundle_path].session)
            headers = {"Authorization": f"Bearer {token}"}  # as an SDK policy writes it; we rewrite
            _expect_ok(ours.send(HttpRequest("GET", url, headers=headers)))

        def send_base(close: bool = False) -> None:
            if close:
                _drop_connections(base.session)
            headers = {"Authorization": f"mtls_pop {token}", "x-ms-tokenboundauth": "true"}
            _expect_ok(base.send(HttpRequest("GET", url, headers=headers)))

        def send_cold() -> None:
            ours.retire(binding)
            send_ours()

        with ours, base:
            for _ in range(50):  # warm up: pools, contexts, code paths
                send_ours()
                send_base()

            # Size the rounds from a quick probe so the whole run stays near the budget.
            probe = _rate(send_ours, 100)
            keep_n = max(100, int(probe * args.seconds * 0.5 / 10))
            conn_probe = _rate(lambda: send_base(close=True), 10)
            conn_n = max(10, int(conn_probe * args.seconds * 0.4 / 15))

            keep_ours, keep_base, new_ours, new_base, cold_ours = [], [], [], [], []
            for _ in range(5):
                keep_ours.append(_rate(send_ours, keep_n))
                keep_base.append(_rate(send_base, keep_n))
            for _ in range(5):
                new_ours.append(_rate(lambda: send_ours(close=True), conn_n))
                new_base.append(_rate(lambda: send_base(close=True), conn_n))
                cold_ours.append(_rate(send_cold, conn_n))
        credential.close()

    keep = (statistics.median(keep_ours), statistics.median(keep_base))
    new = (1000 / statistics.median(new_ours), 1000 / statistics.median(new_base))  # ms per request
    cold = 1000 / statistics.median(cold_ours)
    keep_ratio = keep[0] / keep[1]
    new_ratio = new[1] / new[0]  # > 1: ours is faster
    print(f"keep-alive       : MtlsPopTransport {keep[0]:8.0f} req/s | RequestsTransport {keep[1]:8.0f} req/s")
    print(f"new connection   : MtlsPopTransport {new[0]:8.2f} ms    | RequestsTransport {new[1]:8.2f} ms")
    print(f"cold pool (ours) : {cold:8.2f} ms per request (pool retired before each)")
    print(f"ratio keep-alive throughput (ours/baseline): {keep_ratio:.2f}x  (target >= 0.90)")
    print(f"ratio new-connection speed  (baseline/ours): {new_ratio:.2f}x  (target >= 1.00)")
    ok = keep_ratio >= 0.9 and new_ratio >= 1.0
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
