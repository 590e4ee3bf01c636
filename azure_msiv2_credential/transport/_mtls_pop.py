"""The per-request decision shared by the sync and async transports and policies: is this token ours?

A request is token-bound when its ``Authorization`` header carries a token the credential registered (SDK
policies write ``Bearer <token>``; a re-sent request may already say ``mtls_pop <token>``). Such a request
must go over TLS with the token's own certificate and say ``mtls_pop``. Anything else — another
credential's token, no token at all (Key Vault's unauthenticated challenge request) — is left untouched
and sent without a client certificate, so a certificate is never shown where no bound token goes.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Optional

from .._binding import Binding
from .._registry import BindingRegistry

AUTHORIZATION = "Authorization"
MTLS_POP_SCHEME = "mtls_pop"
#: Key Vault's token-binding endpoints expect this header next to an mtls_pop token (PROTOCOL.md §7).
TOKEN_BOUND_AUTH_HEADER = "x-ms-tokenboundauth"
#: The transport keyword (and pipeline context option) that carries a binding to a binding transport.
BINDING_OPTION = "msiv2_binding"

_SCHEMES = frozenset({"bearer", MTLS_POP_SCHEME})


class InsecureBindingError(ValueError):
    """A token-bound request was about to leave over plain HTTP."""


def bind_request(
    headers: MutableMapping[str, str], registry: BindingRegistry, token_bound_auth_header: bool
) -> Optional[Binding]:
    """Rewrite ``headers`` for a registered token and return its binding; else change nothing, return None."""
    value = headers.get(AUTHORIZATION)
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() not in _SCHEMES:
        return None
    token = token.strip()
    binding = registry.lookup(token)
    if binding is None:
        return None
    headers[AUTHORIZATION] = f"{MTLS_POP_SCHEME} {token}"
    if token_bound_auth_header:
        headers[TOKEN_BOUND_AUTH_HEADER] = "true"
    return binding


def require_https(url: str) -> None:
    """Token-bound requests need TLS: the certificate is the token's proof, and the token must stay secret."""
    if not url[:8].lower().startswith("https://"):
        raise InsecureBindingError("a token-bound (mtls_pop) request must use an https:// URL")


def pop_binding(kwargs: dict[str, Any]) -> Optional[Binding]:
    """Take the binding a caller (the token leg, or the policy through the context) passed, if any."""
    binding = kwargs.pop(BINDING_OPTION, None)
    if binding is not None and not isinstance(binding, Binding):
        raise TypeError(f"{BINDING_OPTION} must be a Binding, not {type(binding).__name__}")
    return binding
