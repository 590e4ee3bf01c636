"""The :class:`Emulator`: IMDS, token service and resource on loopback ports, started and stopped together."""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Sequence
from types import TracebackType

from cryptography.hazmat.primitives.serialization import Encoding

from ._ca import CertificateAuthority, new_rsa_key
from ._http import BaseHandler, LoopbackServer
from ._identity import Identity
from ._imds import ImdsHandler
from ._resource import ResourceHandler
from ._state import EmulatorState
from ._tls import server_context
from ._token_service import TokenServiceHandler

_POLL_INTERVAL = 0.05
"""serve_forever's shutdown poll: stop() waits at most this long per server."""


class Emulator(EmulatorState):
    """A local IMDS v2 + mTLS token service + token-bound resource, for tests and demos.

    Settings (``require_attestation``, ``v1_only``, ``cert_lifetime``, ``token_lifetime``,
    ``refresh_in``, ``cu_id``, ``attestation_endpoint``, ``secrets``, ``blobs``) may be changed while
    it runs; :meth:`reset` restores the values they had at :meth:`start` and clears faults, counters
    and records.
    """

    def __init__(
        self,
        identities: Sequence[Identity] | None = None,
        *,
        tenant_id: str | None = None,
        cert_lifetime: float = 2 * 24 * 3600,
        token_lifetime: float = 3600,
        refresh_in: float | None = None,
        require_attestation: bool = False,
    ) -> None:
        super().__init__(
            identities=identities,
            tenant_id=tenant_id,
            cert_lifetime=cert_lifetime,
            token_lifetime=token_lifetime,
            refresh_in=refresh_in,
            require_attestation=require_attestation,
        )
        self._servers: list[LoopbackServer] = []
        self._threads: list[threading.Thread] = []
        self._tmpdir: str | None = None
        self._ca_bundle_path: str | None = None
        self._started = False

    @property
    def ca_bundle_path(self) -> str:
        """PEM file of the CA certificate: the trust anchor for both HTTPS servers."""
        if self._ca_bundle_path is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return self._ca_bundle_path

    def start(self) -> Emulator:
        """Bind the three servers on 127.0.0.1 and serve them from background threads."""
        if self._started:
            raise RuntimeError("an Emulator can be started once")
        self._started = True
        self.snapshot_settings()
        try:
            self._tmpdir = tempfile.mkdtemp(prefix="msiv2-emulator-")
            bundle = os.path.join(self._tmpdir, "ca.pem")
            with open(bundle, "wb") as f:
                f.write(self.ca_certificate.public_bytes(Encoding.PEM))
            self._ca_bundle_path = bundle

            server_key = new_rsa_key()
            server_cert = self._ca.issue_server_certificate(server_key)
            ca = self.ca_certificate
            # The reject_handshake fault: the same server identity, but client certificates must chain to
            # a throwaway CA whose key is dropped at once, so no client certificate can pass.
            nobody = CertificateAuthority("MSI v2 Emulator Reject-All CA").certificate
            plan: list[tuple[str, type[BaseHandler], ssl.SSLContext | None, ssl.SSLContext | None, str]] = [
                ("imds", ImdsHandler, None, None, "http://127.0.0.1:{}"),
                (
                    "token",
                    TokenServiceHandler,
                    server_context(server_cert, server_key, ca, ssl.CERT_REQUIRED),
                    server_context(server_cert, server_key, nobody, ssl.CERT_REQUIRED),
                    "https://localhost:{}",
                ),
                (
                    "resource",
                    ResourceHandler,
                    server_context(server_cert, server_key, ca, ssl.CERT_OPTIONAL),
                    None,
                    "https://localhost:{}",
                ),
            ]
            for name, handler, context, reject, url in plan:
                server = LoopbackServer(name, handler, self, context, reject)
                self._servers.append(server)
                self._urls[name] = url.format(server.port)
            for server in self._servers:
                thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": _POLL_INTERVAL},
                    name=f"msiv2-emulator-{server.name}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving, close every connection, join every thread, delete the CA bundle. Idempotent."""
        self._stopping.set()
        for server, thread in zip(self._servers, self._threads):
            if thread.is_alive():
                server.shutdown()
        for server in self._servers:
            server.close()
        for thread in self._threads:
            thread.join()
        self._servers.clear()
        self._threads.clear()
        self._urls.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self._ca_bundle_path = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
