"""Emulated mTLS token service (the ``mtls_authentication_endpoint``).

The TLS layer already demanded a client certificate chaining to the emulator CA; this handler
checks the form, matches ``client_id`` to the certificate, and mints an ``mtls_pop`` token whose
``cnf.x5t#S256`` binds it to the certificate presented on this connection.
"""

from __future__ import annotations

import json
import re
import ssl
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ._http import BaseHandler, DuplicateParameter, single_values
from ._state import thumbprint

_TOKEN_PATH = re.compile(r"^/([^/]+)/oauth2/v2\.0/token$")


class _OAuthError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class TokenServiceHandler(BaseHandler):
    """``POST /{tenant}/oauth2/v2.0/token`` over mutual TLS."""

    def handle_request(self) -> None:
        match = _TOKEN_PATH.match(self.path_only)
        if match is None:
            self.json_error(404, "not_found", "no such path on the token service")
            return
        fault = self.begin_call("token")
        if self.fault_answered:
            return
        if fault is not None and fault.name == "invalid_client":
            self.json_error(400, "invalid_client", "AADSTS7000215: injected invalid_client")
            return
        try:
            if self.command != "POST":
                raise _OAuthError("invalid_request", "AADSTS900561: the token endpoint only accepts POST")
            claims = self._mint(match.group(1))
        except _OAuthError as exc:
            self.json_error(400, exc.error, exc.description)
            return
        fault_name = fault.name if fault else None
        if fault_name == "wrong_cnf":
            claims["cnf"] = {"x5t#S256": thumbprint(self.state.ca_certificate.public_bytes(Encoding.DER))}
        response: dict[str, Any] = {
            "access_token": self.state.sign_token(claims),
            "token_type": "Bearer" if fault_name == "bearer" else "mtls_pop",
            "expires_in": int(self.state.token_lifetime),
        }
        if self.state.refresh_in is not None:
            response["refresh_in"] = int(self.state.refresh_in)
        self.respond_json(200, response)

    def _mint(self, tenant: str) -> dict[str, Any]:
        """Validate the request and return the claims of the token to issue."""
        if tenant.lower() != self.state.tenant_id.lower():
            raise _OAuthError("invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
        content_type = (self.headers.get("Content-Type") or "").lower()
        if not content_type.startswith("application/x-www-form-urlencoded"):
            raise _OAuthError("invalid_request", "body must be application/x-www-form-urlencoded")
        try:
            form = single_values(self.body.decode("utf-8"))
        except (UnicodeDecodeError, DuplicateParameter) as exc:
            raise _OAuthError("invalid_request", f"malformed form body: {exc}") from exc
        if form.get("grant_type") != "client_credentials":
            raise _OAuthError("unsupported_grant_type", "AADSTS70003: grant_type must be client_credentials")
        client_id = form.get("client_id")
        if not client_id:
            raise _OAuthError("invalid_request", "AADSTS900144: The request body must contain 'client_id'.")
        scope = form.get("scope", "")
        if not scope or " " in scope.strip() or not scope.endswith("/.default"):
            raise _OAuthError("invalid_scope", "AADSTS1002012: scope must be exactly one '<resource>/.default'")
        if form.get("token_type") != "mtls_pop":
            raise _OAuthError("invalid_request", "token_type must be mtls_pop")
        raw_claims = form.get("claims")
        if raw_claims is not None:
            try:
                parsed = json.loads(raw_claims)
            except json.JSONDecodeError as exc:
                raise _OAuthError("invalid_request", "AADSTS50022: claims is not valid JSON") from exc
            if not isinstance(parsed, dict):
                raise _OAuthError("invalid_request", "AADSTS50022: claims must be a JSON object")

        cert_der = cast("ssl.SSLSocket", self.connection).getpeercert(binary_form=True)
        if not cert_der:  # CERT_REQUIRED makes this unreachable; keep the check next to its reason.
            raise _OAuthError("invalid_client", "AADSTS700027: no client certificate on this connection")
        cert = x509.load_der_x509_certificate(cert_der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(names) != 1 or names[0].value != client_id:
            raise _OAuthError("invalid_client", "AADSTS700027: client_id does not match the certificate subject")
        identity = self.state.find_identity("client_id", client_id)
        if identity is None:
            raise _OAuthError("invalid_client", f"AADSTS700016: Application with identifier '{client_id}' not found")

        claims = self.state.base_claims(identity, scope[: -len("/.default")], self.state.token_lifetime)
        claims["cnf"] = {"x5t#S256": thumbprint(cert_der)}
        if raw_claims is not None:
            claims["xms_claims"] = raw_claims
        return claims
