"""Emulated token-bound resource: a Key Vault secrets surface and a read-only Blob surface.

Like a real token-binding endpoint it asks for a client certificate but serves connections without
one (SDK clients first fetch a 401 challenge unauthenticated), and it accepts an ``mtls_pop`` token
only when the token's ``cnf.x5t#S256`` names the certificate presented on the same connection.
"""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
import time
from collections.abc import Mapping
from email.utils import formatdate
from typing import cast
from urllib.parse import unquote
from xml.sax.saxutils import escape, quoteattr

from . import _jwt
from ._http import BaseHandler
from ._state import ResourceRequest, thumbprint

STORAGE_VERSION = "2025-11-05"
KEY_VAULT_AUDIENCE = "https://vault.azure.net"
STORAGE_AUDIENCE = "https://storage.azure.com"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_NBF_LEEWAY = 300


class _Unauthorized(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def secret_version(name: str) -> str:
    """A stable 32-hex version id per secret name."""
    return hashlib.sha256(f"version:{name}".encode()).hexdigest()[:32]


def _http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def _etag(content: bytes) -> str:
    return '"0x8D' + hashlib.sha256(content).hexdigest()[:13].upper() + '"'


def _md5_b64(content: bytes) -> str:
    return base64.b64encode(hashlib.md5(content, usedforsecurity=False).digest()).decode("ascii")


class ResourceHandler(BaseHandler):
    """Authorizes every request by its ``mtls_pop`` token and connection certificate, then serves it."""

    _record: tuple[str | None, str | None, bool] = (None, None, False)

    def reset_request(self) -> None:
        # Kept-alive connections reuse this handler: an answer sent before handle_request (411, 413,
        # duplicate parameter) must not be recorded with the previous request's facts.
        super().reset_request()
        self._record = (None, None, False)

    def handle_request(self) -> None:
        peer = cast("ssl.SSLSocket", self.connection).getpeercert(binary_form=True)
        cert_thumbprint = thumbprint(peer) if peer else None
        authorization = self.headers.get("Authorization")
        scheme = authorization.split(" ", 1)[0] if authorization else None
        bound = (self.headers.get("x-ms-tokenboundauth") or "").lower() == "true"
        self._record = (scheme, cert_thumbprint, bound)
        is_key_vault = self.path_only == "/secrets" or self.path_only.startswith("/secrets/")

        self.begin_call("resource")
        if self.fault_answered:
            return
        try:
            self._authorize(authorization, cert_thumbprint, key_vault=is_key_vault, token_bound_auth=bound)
        except _Unauthorized as exc:
            self._unauthorized(exc, key_vault=is_key_vault)
            return
        if is_key_vault:
            self._key_vault()
        else:
            self._blob()

    def record_response(self, status: int) -> None:
        scheme, cert_thumbprint, bound = self._record
        self.state.record_resource_request(
            ResourceRequest(
                method=self.command,
                path=self.path_only,
                status=status,
                auth_scheme=scheme,
                cert_thumbprint=cert_thumbprint,
                token_bound_auth=bound,
            )
        )

    # --- authorization ----------------------------------------------------------------------

    def _authorize(
        self, authorization: str | None, cert_thumbprint: str | None, *, key_vault: bool, token_bound_auth: bool
    ) -> None:
        if not authorization:
            raise _Unauthorized("NoAuthenticationInformation", "Authorization header is missing")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "mtls_pop":
            raise _Unauthorized("InvalidAuthenticationInfo", "Authorization scheme must be mtls_pop")
        try:
            claims = self.state.decode_token(token.strip())
        except _jwt.JwtError as exc:
            raise _Unauthorized("InvalidAuthenticationInfo", f"access token rejected: {exc}") from exc
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(exp, int) or exp <= now:
            raise _Unauthorized("InvalidAuthenticationInfo", "access token has expired")
        if not isinstance(nbf, int) or nbf > now + _NBF_LEEWAY:
            raise _Unauthorized("InvalidAuthenticationInfo", "access token is not yet valid")
        cnf = claims.get("cnf")
        bound_to = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if not bound_to:
            raise _Unauthorized("InvalidAuthenticationInfo", "access token is not bound to a certificate (no cnf)")
        if cert_thumbprint is None:
            raise _Unauthorized("InvalidAuthenticationInfo", "no client certificate was presented on this connection")
        if bound_to != cert_thumbprint:
            raise _Unauthorized(
                "InvalidAuthenticationInfo", "access token is bound to a different certificate than this connection's"
            )
        service = KEY_VAULT_AUDIENCE if key_vault else STORAGE_AUDIENCE
        if claims.get("aud") not in (self.state.resource_url, service):
            raise _Unauthorized(
                "InvalidAuthenticationInfo",
                f"access token audience must be {self.state.resource_url} or {service}",
            )
        if key_vault and not token_bound_auth:
            raise _Unauthorized("InvalidAuthenticationInfo", "token-bound requests must send x-ms-tokenboundauth: true")

    def _unauthorized(self, problem: _Unauthorized, *, key_vault: bool) -> None:
        challenge = (
            f'Bearer authorization="https://login.microsoftonline.com/{self.state.tenant_id}", '
            f'resource="{self.state.resource_url}"'
        )
        headers = {"WWW-Authenticate": challenge}
        if key_vault:
            self.respond_json(401, {"error": {"code": "Unauthorized", "message": problem.message}}, headers)
        else:
            self._storage_error(401, problem.code, problem.message, headers)

    # --- Key Vault --------------------------------------------------------------------------

    def _kv_error(self, status: int, code: str, message: str) -> None:
        self.respond_json(status, {"error": {"code": code, "message": message}})

    def _key_vault(self) -> None:
        if self.command != "GET":
            self._kv_error(405, "MethodNotAllowed", "only GET is emulated for secrets")
            return
        if not self.query.get("api-version"):
            self._kv_error(400, "BadParameter", "The api-version query parameter is missing")
            return
        parts = self.path_only.split("/")[2:]
        if parts and parts[-1] == "":
            parts.pop()
        if not parts or len(parts) > 2:
            self._kv_error(400, "BadParameter", "expected /secrets/<name>[/<version>]")
            return
        name = unquote(parts[0])
        version = secret_version(name)
        value = self.state.secrets.get(name)
        if value is None or (len(parts) == 2 and parts[1] != version):
            self._kv_error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {name} was not found in this key vault.",
            )
            return
        created = self.state.created_at
        self.respond_json(
            200,
            {
                "value": value,
                "id": f"{self.state.resource_url}/secrets/{name}/{version}",
                "attributes": {
                    "enabled": True,
                    "created": created,
                    "updated": created,
                    "recoveryLevel": "Recoverable+Purgeable",
                    "recoverableDays": 90,
                },
                "tags": {},
            },
        )

    # --- Blob -------------------------------------------------------------------------------

    def _storage_headers(self) -> dict[str, str]:
        return {"x-ms-version": self.headers.get("x-ms-version") or STORAGE_VERSION}

    def _storage_error(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
        ).encode()
        all_headers = {**self._storage_headers(), "x-ms-error-code": code, **(headers or {})}
        self.respond(status, body, "application/xml", all_headers)

    def _blob(self) -> None:
        if self.command not in ("GET", "HEAD"):
            self._storage_error(405, "UnsupportedHttpVerb", "The emulated blob service is read-only.")
            return
        container, _, blob = unquote(self.path_only).lstrip("/").partition("/")
        if not container:
            self._storage_error(400, "InvalidUri", "Account-level operations are not emulated.")
            return
        blobs = self.state.blobs.get(container)
        if not blob:
            if self.query.get("restype") != "container":
                self._storage_error(400, "InvalidUri", "The requested URI does not represent a resource.")
            elif blobs is None:
                self._storage_error(404, "ContainerNotFound", "The specified container does not exist.")
            elif self.query.get("comp") == "list":
                self._list_blobs(container, blobs)
            elif "comp" in self.query:
                self._storage_error(400, "UnsupportedQueryParameter", "This comp value is not emulated.")
            else:
                self._container_properties(blobs)
            return
        if blobs is None:
            self._storage_error(404, "ContainerNotFound", "The specified container does not exist.")
        elif "comp" in self.query:
            self._storage_error(400, "UnsupportedQueryParameter", "This comp value is not emulated.")
        elif blob not in blobs:
            self._storage_error(404, "BlobNotFound", "The specified blob does not exist.")
        else:
            self._download(blobs[blob])

    def _container_properties(self, blobs: Mapping[str, bytes]) -> None:
        headers = {
            **self._storage_headers(),
            "ETag": _etag("\n".join(sorted(blobs)).encode()),
            "Last-Modified": _http_date(self.state.created_at),
            "x-ms-lease-status": "unlocked",
            "x-ms-lease-state": "available",
            "x-ms-has-immutability-policy": "false",
            "x-ms-has-legal-hold": "false",
            "x-ms-default-encryption-scope": "$account-encryption-key",
            "x-ms-deny-encryption-scope-override": "false",
            "x-ms-immutable-storage-with-versioning-enabled": "false",
        }
        self.respond(200, b"", None, headers)

    def _blob_headers(self, content: bytes) -> dict[str, str]:
        modified = _http_date(self.state.created_at)
        return {
            **self._storage_headers(),
            "ETag": _etag(content),
            "Last-Modified": modified,
            "x-ms-creation-time": modified,
            "x-ms-blob-type": "BlockBlob",
            "x-ms-lease-status": "unlocked",
            "x-ms-lease-state": "available",
            "x-ms-server-encrypted": "true",
            "x-ms-access-tier": "Hot",
            "x-ms-access-tier-inferred": "true",
            "Accept-Ranges": "bytes",
        }

    def _download(self, content: bytes) -> None:
        headers = self._blob_headers(content)
        size = len(content)
        requested = self.headers.get("x-ms-range") or self.headers.get("Range")
        match = _RANGE.fullmatch(requested.strip()) if requested else None
        if match is None or self.command == "HEAD":
            headers["Content-MD5"] = _md5_b64(content)
            headers["Content-Length"] = str(size)
            self.respond(200, content, "application/octet-stream", headers)
            return
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        if start >= size or end < start:
            headers["Content-Range"] = f"bytes */{size}"
            self._storage_error(416, "InvalidRange", "The range specified is invalid for the current size.", headers)
            return
        part = content[start : end + 1]
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if (self.headers.get("x-ms-range-get-content-md5") or "").lower() == "true":
            headers["Content-MD5"] = _md5_b64(part)
        else:
            headers["x-ms-blob-content-md5"] = _md5_b64(content)
        self.respond(206, part, "application/octet-stream", headers)

    def _list_blobs(self, container: str, blobs: Mapping[str, bytes]) -> None:
        prefix = self.query.get("prefix", "")
        modified = _http_date(self.state.created_at)
        items = []
        for name in sorted(blobs):
            if not name.startswith(prefix):
                continue
            content = blobs[name]
            items.append(
                f"<Blob><Name>{escape(name)}</Name><Properties>"
                f"<Creation-Time>{modified}</Creation-Time><Last-Modified>{modified}</Last-Modified>"
                f"<Etag>{escape(_etag(content))}</Etag><Content-Length>{len(content)}</Content-Length>"
                "<Content-Type>application/octet-stream</Content-Type>"
                f"<Content-MD5>{_md5_b64(content)}</Content-MD5><BlobType>BlockBlob</BlobType>"
                "<AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred>"
                "<LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState>"
                "<ServerEncrypted>true</ServerEncrypted></Properties><OrMetadata /></Blob>"
            )
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<EnumerationResults ServiceEndpoint={quoteattr(self.state.resource_url + '/')} "
            f"ContainerName={quoteattr(container)}>"
            f"<Prefix>{escape(prefix)}</Prefix><Blobs>{''.join(items)}</Blobs><NextMarker /></EnumerationResults>"
        ).encode()
        self.respond(200, body, "application/xml", self._storage_headers())
