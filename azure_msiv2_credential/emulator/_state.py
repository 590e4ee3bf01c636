"""What the three emulated services share: identities, keys, settings, counters and faults.

The request handlers read this state on every request, so settings changed by a test at run time
(``require_attestation``, ``v1_only``, lifetimes, secrets...) apply to the very next call.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import _jwt
from ._ca import CLOCK_SKEW, CertificateAuthority, new_rsa_key, utcnow
from ._faults import HANDSHAKE_FAULTS, Fault, FaultQueue
from ._identity import Identity, default_identities

DEFAULT_ATTESTATION_ENDPOINT = "https://sharedeus2.eus2.attest.azure.net"
SELECTORS_V2 = ("client_id", "object_id", "mi_res_id")
SETTINGS = (
    "require_attestation",
    "cert_lifetime",
    "token_lifetime",
    "refresh_in",
    "v1_only",
    "cu_id",
    "attestation_endpoint",
    "secrets",
    "blobs",
)
"""The run-time settings :meth:`EmulatorState.reset` restores to their values when the emulator started."""


@dataclass(frozen=True)
class ResourceRequest:
    """What the token-bound resource saw on its last request (no token, only facts about it)."""

    method: str
    path: str
    status: int
    auth_scheme: str | None
    """The scheme of the ``Authorization`` header as sent (``"mtls_pop"``, ``"Bearer"``...), or None."""
    cert_thumbprint: str | None
    """x5t#S256 of the client certificate presented on that connection, or None."""
    token_bound_auth: bool
    """True when ``x-ms-tokenboundauth: true`` was sent."""


def thumbprint(cert_der: bytes) -> str:
    """x5t#S256: base64url (no padding) of the SHA-256 of the certificate DER."""
    return _jwt.b64url_encode(hashlib.sha256(cert_der).digest())


def spki_sha256(key: rsa.RSAPublicKey) -> str:
    """base64url (no padding) SHA-256 of a key's DER SubjectPublicKeyInfo, as attestation tokens carry it."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _jwt.b64url_encode(hashlib.sha256(der).digest())


class EmulatorState:
    """Configuration and bookkeeping of one emulator instance (see :class:`Emulator`)."""

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
        self.identities: tuple[Identity, ...] = tuple(identities) if identities is not None else default_identities()
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.cert_lifetime = cert_lifetime
        self.token_lifetime = token_lifetime
        self.refresh_in = refresh_in
        self.require_attestation = require_attestation
        self.v1_only = False
        self.cu_id: dict[str, str] = {"vmId": str(uuid.uuid4()), "vmssId": str(uuid.uuid4())}
        self.attestation_endpoint = DEFAULT_ATTESTATION_ENDPOINT
        self.secrets: dict[str, str] = {"demo-secret": "hello from the token-bound resource"}
        self.blobs: dict[str, dict[str, bytes]] = {"demo": {"hello.txt": b"hello blob"}}
        self.calls: Counter[str] = Counter()
        self.tls_rejections: Counter[str] = Counter()
        self.issued_certificates: list[x509.Certificate] = []
        self.last_resource_request: ResourceRequest | None = None
        self.resource_requests: list[ResourceRequest] = []
        """Every request the resource answered, in order (append-only; cleared by :meth:`reset`)."""
        self.imds_requests: list[tuple[str, str | None]] = []
        """``(endpoint, x-ms-client-request-id)`` of every routed IMDS call, in order (cleared by :meth:`reset`)."""
        self.created_at = int(time.time())

        self._lock = threading.Lock()
        self._faults = FaultQueue()
        self._stopping = threading.Event()
        self._ca = CertificateAuthority()
        self._token_key = new_rsa_key()
        self._token_kid = spki_sha256(self._token_key.public_key())[:27]
        self._urls: dict[str, str] = {}
        self._settings: dict[str, Any] = {}
        self.snapshot_settings()

    # --- identities -------------------------------------------------------------------------

    @property
    def system_identity(self) -> Identity:
        """The system-assigned identity; LookupError if this VM has none."""
        for identity in self.identities:
            if identity.system_assigned:
                return identity
        raise LookupError("this emulator has no system-assigned identity")

    def find_identity(self, selector: str | None, value: str | None) -> Identity | None:
        """The identity a selector names (ids compare case-insensitively), or the system one for None."""
        if selector is None:
            return next((i for i in self.identities if i.system_assigned), None)
        attribute = {
            "client_id": "client_id",
            "object_id": "object_id",
            "mi_res_id": "resource_id",
            "msi_res_id": "resource_id",
        }[selector]
        wanted = (value or "").lower()
        return next((i for i in self.identities if getattr(i, attribute).lower() == wanted), None)

    def cuid_json(self) -> str:
        """The compact JSON the CSR attribute must carry: vmId then vmssId, absent members omitted."""
        ordered = {k: self.cu_id[k] for k in ("vmId", "vmssId") if self.cu_id.get(k)}
        return json.dumps(ordered, separators=(",", ":"))

    # --- calls and faults -------------------------------------------------------------------

    def begin_call(self, endpoint: str) -> Fault | None:
        """Count a call of ``endpoint`` and take its fault, sleeping first for a ``delay`` fault."""
        with self._lock:
            self.calls[endpoint] += 1
        fault = self._faults.next(endpoint)
        if fault is not None and fault.name == "delay":
            self._stopping.wait(float(fault.params["seconds"]))
        return fault

    def record_tls_rejection(self, server: str) -> None:
        with self._lock:
            self.tls_rejections[server] += 1

    def record_resource_request(self, request: ResourceRequest) -> None:
        with self._lock:
            self.resource_requests.append(request)
            self.last_resource_request = request

    def record_imds_request(self, endpoint: str, client_request_id: str | None) -> None:
        with self._lock:
            self.imds_requests.append((endpoint, client_request_id))

    def take_handshake_fault(self, server: str) -> Fault | None:
        """The handshake fault queued for ``server``'s endpoint, consumed, or None."""
        return self._faults.next_if(server, HANDSHAKE_FAULTS)

    def snapshot_settings(self) -> None:
        """Remember the current value of every setting in :data:`SETTINGS` for :meth:`reset`."""
        self._settings = {name: copy.deepcopy(getattr(self, name)) for name in SETTINGS}

    def reset(self) -> None:
        """Back to the state at start: settings restored; faults, counters and records cleared."""
        for name, value in self._settings.items():
            setattr(self, name, copy.deepcopy(value))
        self._faults.clear()
        with self._lock:
            self.calls.clear()
            self.tls_rejections.clear()
            self.issued_certificates.clear()
            self.resource_requests.clear()
            self.imds_requests.clear()
            self.last_resource_request = None

    def reset_calls(self) -> None:
        """Zero ``calls`` and ``tls_rejections``."""
        with self._lock:
            self.calls.clear()
            self.tls_rejections.clear()

    def inject(self, endpoint: str, fault: str, count: int = 1, **params: Any) -> None:
        """Make the next ``count`` calls of ``endpoint`` misbehave as ``fault`` says (FIFO)."""
        self._faults.inject(endpoint, fault, count, **params)

    def clear_faults(self) -> None:
        self._faults.clear()

    # --- certificates and tokens ------------------------------------------------------------

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self._ca.certificate

    @property
    def token_signing_public_key(self) -> rsa.RSAPublicKey:
        """The key access tokens are signed with (RS256); distinct from the CA key."""
        return self._token_key.public_key()

    def issue_client_certificate(
        self, subject: x509.Name, public_key: rsa.RSAPublicKey, *, expired: bool = False
    ) -> x509.Certificate:
        """Issue a client certificate valid for ``cert_lifetime`` (or one that already expired)."""
        lifetime = datetime.timedelta(seconds=self.cert_lifetime)
        not_before = utcnow() - CLOCK_SKEW
        if expired:
            not_before -= lifetime + datetime.timedelta(hours=1)
        cert = self._ca.issue_client_certificate(subject, public_key, not_before, not_before + lifetime)
        with self._lock:
            self.issued_certificates.append(cert)
        return cert

    def sign_token(self, claims: dict[str, Any]) -> str:
        return _jwt.sign_rs256(claims, self._token_key, self._token_kid)

    def decode_token(self, token: str) -> dict[str, Any]:
        """The claims of an access token this emulator signed (ValueError if the signature fails)."""
        return _jwt.verify_rs256(token, self._token_key.public_key())

    def base_claims(self, identity: Identity, audience: str, lifetime: float) -> dict[str, Any]:
        now = int(time.time())
        return {
            "aud": audience,
            "iss": f"https://login.microsoftonline.com/{self.tenant_id}/v2.0",
            "tid": self.tenant_id,
            "appid": identity.client_id,
            "azp": identity.client_id,
            "oid": identity.object_id,
            "sub": identity.object_id,
            "xms_mirid": identity.resource_id,
            "idtyp": "app",
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "uti": uuid.uuid4().hex,
        }

    # --- lifecycle helpers for the handlers -------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up when the emulator stops."""
        self._stopping.wait(seconds)

    def _url(self, name: str) -> str:
        try:
            return self._urls[name]
        except KeyError:
            raise RuntimeError("the emulator is not running; call start() first") from None

    @property
    def imds_url(self) -> str:
        """``http://127.0.0.1:<port>``: the value for ``AZURE_POD_IDENTITY_AUTHORITY_HOST``."""
        return self._url("imds")

    @property
    def token_service_url(self) -> str:
        """``https://localhost:<port>``: returned as ``mtls_authentication_endpoint``."""
        return self._url("token")

    @property
    def resource_url(self) -> str:
        """``https://localhost:<port>``: the token-bound resource (Key Vault and Blob shapes)."""
        return self._url("resource")
