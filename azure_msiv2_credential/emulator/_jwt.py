"""Just enough JWT for the emulator: RS256 sign/verify and base64url, on cryptography alone."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class JwtError(ValueError):
    """The token is not a well-formed, correctly signed JWT."""


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url_encode`; rejects characters outside the base64url alphabet."""
    if "=" in text or "+" in text or "/" in text:
        raise JwtError("not base64url without padding")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise JwtError("not base64url") from exc


def _json_segment(value: Mapping[str, Any]) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":")).encode())


def sign_rs256(payload: Mapping[str, Any], key: rsa.RSAPrivateKey, kid: str) -> str:
    """Compact JWS with RS256 (RSASSA-PKCS1-v1_5 with SHA-256)."""
    signing_input = f"{_json_segment({'typ': 'JWT', 'alg': 'RS256', 'kid': kid})}.{_json_segment(payload)}"
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url_encode(signature)}"


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """Decode header and payload (both JSON objects) and the signature, without verifying anything."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("a JWT has three dot-separated parts")
    decoded: list[dict[str, Any]] = []
    for part in parts[:2]:
        try:
            value = json.loads(b64url_decode(part))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise JwtError("JWT segment is not JSON") from exc
        if not isinstance(value, dict):
            raise JwtError("JWT segment is not a JSON object")
        decoded.append(value)
    return decoded[0], decoded[1], b64url_decode(parts[2])


def unverified_payload(token: str) -> dict[str, Any]:
    """The payload of a three-part token, header and signature unchecked (for attestation tokens)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise JwtError("a JWT has three dot-separated parts")
    try:
        value = json.loads(b64url_decode(parts[1]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JwtError("JWT payload is not JSON") from exc
    if not isinstance(value, dict):
        raise JwtError("JWT payload is not a JSON object")
    return value


def verify_rs256(token: str, key: rsa.RSAPublicKey) -> dict[str, Any]:
    """Return the payload of ``token`` if its RS256 signature verifies with ``key``."""
    header, payload, signature = split(token)
    if header.get("alg") != "RS256":
        raise JwtError("JWT alg must be RS256")
    signing_input = token.rsplit(".", 1)[0].encode("ascii")
    try:
        key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as exc:
        raise JwtError("JWT signature does not verify") from exc
    return payload
