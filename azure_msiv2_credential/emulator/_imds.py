"""Emulated IMDS (plain HTTP): getplatformmetadata and issuecredential (v2), and the v1 token endpoint."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from . import _jwt
from ._ca import new_rsa_key
from ._csr import CsrRejected, validate_csr
from ._faults import Fault
from ._http import BaseHandler
from ._identity import Identity
from ._state import SELECTORS_V2, spki_sha256

IMDS_SERVER_HEADER = "IMDS/150.870.65.1854"
METADATA_PATH = "/metadata/identity/getplatformmetadata"
ISSUE_PATH = "/metadata/identity/issuecredential"
V1_TOKEN_PATH = "/metadata/identity/oauth2/token"

ATTESTATION_MISSING = "Attestation Token is missing / empty in the issue credential request"
METADATA_HEADER_MISSING = "Required metadata header not specified"
UNSUPPORTED_QUERY = "Unsupported query variables"
IDENTITY_NOT_FOUND = "Identity not found"
CLIENT_REQUEST_ID_INVALID = "x-ms-client-request-id must be a UUID"
_V1_SELECTORS = ("client_id", "object_id", "msi_res_id", "mi_res_id")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PARAMETER = re.compile(r'\s*;\s*[!#$%&\'*+.^_`|~0-9A-Za-z-]+=(?:[!#$%&\'*+.^_`|~0-9A-Za-z-]+|"(?:[^"\\]|\\.)*")')


def is_json_media_type(content_type: str | None) -> bool:
    """True for exactly ``application/json`` (any case), optionally followed by ``; name=value`` parameters."""
    if not content_type:
        return False
    media_type, separator, rest = content_type.partition(";")
    if media_type.strip().lower() != "application/json":
        return False
    if not separator:
        return True
    position, params = 0, ";" + rest
    while params[position:].strip():
        match = _PARAMETER.match(params, position)
        if match is None:
            return False
        position = match.end()
    return position > 0


class _Rejected(Exception):
    """A request IMDS answers with 400 ``invalid_request`` and this description."""


class ImdsHandler(BaseHandler):
    """Routes the three IMDS paths; every answer carries ``Server: IMDS/...`` unless a fault drops it."""

    server_header = IMDS_SERVER_HEADER

    def handle_request(self) -> None:
        routes = {
            METADATA_PATH: ("getplatformmetadata", "GET", self._platform_metadata),
            ISSUE_PATH: ("issuecredential", "POST", self._issue_credential),
            V1_TOKEN_PATH: ("v1token", "GET", self._v1_token),
        }
        route = routes.get(self.path_only)
        if route is None:
            self.respond_json(404, {"error": "not_found", "error_description": "no such IMDS path"})
            return
        endpoint, method, answer = route
        client_request_id = self.headers.get("x-ms-client-request-id")
        self.state.record_imds_request(endpoint, client_request_id)
        fault = self.begin_call(endpoint)
        if self.fault_answered:
            return
        if self.command != method:
            self.respond_json(405, {"error": "invalid_request", "error_description": f"use {method}"})
            return
        if self.state.v1_only and endpoint != "v1token":
            self.respond_json(404, {"error": "not_found", "error_description": "MSI v2 is not available"})
            return
        if self.headers.get_all("Metadata") != ["true"]:  # exactly one header, exactly "true"
            self.json_error(400, "invalid_request", METADATA_HEADER_MISSING)
            return
        request_ids = self.headers.get_all("x-ms-client-request-id") or []
        if endpoint != "v1token" and (len(request_ids) != 1 or not _UUID.fullmatch(request_ids[0])):
            self.json_error(400, "invalid_request", CLIENT_REQUEST_ID_INVALID)
            return
        try:
            answer(fault)
        except _Rejected as exc:
            self.json_error(400, "invalid_request", str(exc))

    # --- IMDS v2 ----------------------------------------------------------------------------

    def _select_v2(self) -> Identity:
        """Validate the v2 query and find the identity it selects (none = system-assigned)."""
        if set(self.query) - {"cred-api-version", *SELECTORS_V2}:
            raise _Rejected(UNSUPPORTED_QUERY)
        if self.query.get("cred-api-version") != "2.0":
            raise _Rejected("cred-api-version must be 2.0")
        chosen = [name for name in SELECTORS_V2 if name in self.query]
        if len(chosen) > 1:
            raise _Rejected("Only one of client_id, object_id or mi_res_id may be specified")
        selector = chosen[0] if chosen else None
        identity = self.state.find_identity(selector, self.query.get(selector) if selector else None)
        if identity is None:
            raise _Rejected(IDENTITY_NOT_FOUND)
        return identity

    def _platform_metadata(self, fault: Fault | None) -> None:
        identity = self._select_v2()
        payload: dict[str, Any] = {
            "clientId": identity.client_id,
            "tenantId": self.state.tenant_id,
            "cuId": {k: v for k, v in self.state.cu_id.items() if v},
            "attestationEndpoint": self.state.attestation_endpoint,
        }
        self.respond_json(200, _without_field(payload, fault))

    def _issue_credential(self, fault: Fault | None) -> None:
        identity = self._select_v2()
        csr_der, attestation = self._read_issue_body()
        if self.state.require_attestation and not attestation:
            raise _Rejected(ATTESTATION_MISSING)
        try:
            csr, key = validate_csr(
                csr_der,
                client_id=identity.client_id,
                tenant_id=self.state.tenant_id,
                cuid_json=self.state.cuid_json(),
            )
        except CsrRejected as exc:
            raise _Rejected(str(exc)) from exc
        if attestation is not None:
            _check_attestation(attestation, spki_sha256(key))
        fault_name = fault.name if fault else None
        cert_key = new_rsa_key().public_key() if fault_name == "foreign_key_cert" else key
        cert = self.state.issue_client_certificate(csr.subject, cert_key, expired=fault_name == "expired_cert")
        payload: dict[str, Any] = {
            "client_id": identity.client_id,
            "tenant_id": self.state.tenant_id,
            "certificate": base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii"),
            "identity_type": "SystemAssigned" if identity.system_assigned else "UserAssigned",
            "mtls_authentication_endpoint": self.state.token_service_url,
        }
        self.respond_json(200, _without_field(payload, fault))

    def _read_issue_body(self) -> tuple[bytes, str | None]:
        """The CSR DER and the attestation token (None when omitted) from the JSON body."""
        if not is_json_media_type(self.headers.get("Content-Type")):
            raise _Rejected("Content-Type must be application/json")
        try:
            body = json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Rejected("request body is not JSON") from exc
        if not isinstance(body, dict):
            raise _Rejected("request body must be a JSON object")
        unexpected = set(body) - {"csr", "attestation_token"}
        if unexpected:
            raise _Rejected(f"unexpected field(s) in request body: {', '.join(sorted(unexpected))}")
        csr = body.get("csr")
        if not isinstance(csr, str) or not csr:
            raise _Rejected("csr is missing")
        try:
            csr_der = base64.b64decode(csr, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Rejected("csr is not valid base64 (one line, no PEM armour)") from exc
        attestation = body.get("attestation_token")
        if attestation is not None and not isinstance(attestation, str):
            raise _Rejected("attestation_token must be a string")
        if attestation == "" and not self.state.require_attestation:
            raise _Rejected("attestation token invalid: empty (omit the field when not attesting)")
        return csr_der, attestation

    # --- IMDS v1 ----------------------------------------------------------------------------

    def _v1_token(self, fault: Fault | None) -> None:
        if not self.query.get("api-version"):
            raise _Rejected("Required query variable 'api-version' is missing")
        resource = self.query.get("resource")
        if not resource:
            raise _Rejected("Required audience parameter not specified")
        chosen = [name for name in _V1_SELECTORS if self.query.get(name)]
        if len(chosen) > 1:
            raise _Rejected("Only one of client_id, object_id or msi_res_id may be specified")
        selector = chosen[0] if chosen else None
        identity = self.state.find_identity(selector, self.query.get(selector) if selector else None)
        if identity is None:
            raise _Rejected(IDENTITY_NOT_FOUND)
        lifetime = int(self.state.token_lifetime)
        claims = self.state.base_claims(identity, resource, lifetime)
        claims["iss"] = f"https://sts.windows.net/{self.state.tenant_id}/"
        self.respond_json(
            200,
            {
                "access_token": self.state.sign_token(claims),
                "client_id": identity.client_id,
                "expires_in": str(lifetime),
                "expires_on": str(claims["exp"]),
                "ext_expires_in": str(lifetime),
                "not_before": str(claims["nbf"]),
                "resource": resource,
                "token_type": "Bearer",
            },
        )


def _without_field(payload: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
    if fault is not None and fault.name == "missing_field":
        payload.pop(str(fault.params["field"]), None)
    return payload


def _check_attestation(token: str, expected_spki: str) -> None:
    """A fake-attestation JWT must be unexpired and name the CSR's key; its signature is not checked."""
    try:
        claims = _jwt.unverified_payload(token)
    except _jwt.JwtError as exc:
        raise _Rejected(f"attestation token invalid: {exc}") from exc
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise _Rejected("attestation token invalid: exp is missing")
    if exp <= time.time():
        raise _Rejected("attestation token invalid: expired")
    if claims.get("keyguard_spki_sha256") != expected_spki:
        raise _Rejected("attestation token invalid: keyguard_spki_sha256 does not match the CSR key")
