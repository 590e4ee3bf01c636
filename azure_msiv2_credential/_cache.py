"""Token and binding caches with their rules; the drivers only add waiting (threads or coroutines).

Token entries are indexed twice: by resource (the cache proper; each entry records the certificate
thumbprint and attested flag it was issued under) and by the caller's scope string, so that a cache hit is
one dict lookup and one clock read, with no parsing and no lock.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from azure.core.credentials import AccessToken, AccessTokenInfo

from ._binding import Binding
from ._flow import TokenResult
from ._lifetimes import REFRESH_RETRY_INTERVAL, TOKEN_EXPIRY_SKEW
from ._registry import BindingRegistry

#: Distinct scope strings remembered for the fast path; beyond it the index is rebuilt (defensive bound).
MAX_SCOPE_INDEX = 256


class TokenEntry:
    """A cached token; ``info``/``access_token`` are built once so a cache hit allocates nothing."""

    __slots__ = ("access_token", "binding", "expires_on", "info", "next_attempt", "refresh_on")

    def __init__(self, result: TokenResult) -> None:
        self.binding = result.binding
        self.expires_on = result.expires_on
        self.refresh_on = result.refresh_on
        self.next_attempt = result.refresh_on
        self.info = AccessTokenInfo(
            result.access_token,
            int(result.expires_on),
            token_type="mtls_pop",
            refresh_on=int(result.refresh_on),
        )
        self.access_token = AccessToken(result.access_token, int(result.expires_on))

    @property
    def thumbprint(self) -> str:
        return self.binding.thumbprint

    def __repr__(self) -> str:
        return f"TokenEntry(expires_on={self.expires_on}, refresh_on={self.refresh_on}, binding={self.binding!r})"


class CredentialCache:
    """The per-credential caches: one binding slot (the credential's selector and attested flag are fixed)
    and the tokens issued under it, per resource."""

    def __init__(self, registry: BindingRegistry, clock: Callable[[], float]) -> None:
        self._registry = registry
        self._clock = clock
        self._lock = threading.Lock()
        self.by_scope: dict[str, TokenEntry] = {}  # fast-path index, read without the lock
        self._by_resource: dict[str, TokenEntry] = {}
        self._scopes: dict[str, set[str]] = {}  # resource -> scope strings that resolved to it
        self._binding: Optional[Binding] = None

    # --- tokens -----------------------------------------------------------------------------------------
    def token(self, resource: str) -> Optional[TokenEntry]:
        return self._by_resource.get(resource)

    def usable(self, entry: Optional[TokenEntry], now: float) -> bool:
        """Still valid long enough to hand out (may already be due for refresh)."""
        return entry is not None and now < entry.expires_on - TOKEN_EXPIRY_SKEW

    def claim_refresh(self, entry: TokenEntry, now: float) -> bool:
        """After ``refresh_on``: True if this caller should try a refresh (at most one try per 30 s)."""
        with self._lock:
            if now < entry.next_attempt:
                return False
            entry.next_attempt = now + REFRESH_RETRY_INTERVAL
            return True

    def store_token(self, scope: str, resource: str, result: TokenResult) -> TokenEntry:
        entry = TokenEntry(result)
        now = self._clock()
        if entry.next_attempt <= now:
            # Due already: issued over a certificate past its rotation because re-minting failed. Without
            # this, every call would retry the failing mint (and fetch yet another token) at once.
            entry.next_attempt = now + REFRESH_RETRY_INTERVAL
        self._registry.register(result.access_token, result.binding, result.expires_on)
        with self._lock:
            self._by_resource[resource] = entry
            self._index_locked(scope, resource)
            for indexed_scope in self._scopes[resource]:
                self.by_scope[indexed_scope] = entry
        return entry

    def index_scope(self, scope: str, resource: str) -> None:
        """Let later calls with this scope string find ``resource``'s entry on the fast path."""
        with self._lock:
            self._index_locked(scope, resource)
            entry = self._by_resource.get(resource)
            if entry is not None:
                self.by_scope[scope] = entry

    def _index_locked(self, scope: str, resource: str) -> None:
        if len(self.by_scope) >= MAX_SCOPE_INDEX:
            self.by_scope.clear()
            self._scopes.clear()
        self._scopes.setdefault(resource, set()).add(scope)

    def register_uncached(self, result: TokenResult) -> None:
        """A token that bypassed the cache (claims) must still be found by the transport."""
        self._registry.register(result.access_token, result.binding, result.expires_on)

    # --- bindings ---------------------------------------------------------------------------------------
    @property
    def binding(self) -> Optional[Binding]:
        return self._binding

    def fresh_binding(self, now: float) -> Optional[Binding]:
        """The cached binding if it is not yet due for rotation."""
        binding = self._binding
        return binding if binding is not None and now < binding.rotate_at else None

    def fallback_binding(self, now: float) -> Optional[Binding]:
        """A binding past its rotation time but still valid: used when a rotation attempt fails."""
        binding = self._binding
        return binding if binding is not None and now < binding.not_after - TOKEN_EXPIRY_SKEW else None

    def store_binding(self, binding: Binding) -> None:
        with self._lock:
            previous, self._binding = self._binding, binding
        self._registry.activate(binding)
        if previous is not None and previous is not binding:
            self._registry.deactivate(previous)

    def drop_binding(self, binding: Binding) -> None:
        with self._lock:
            if self._binding is not binding:
                return
            self._binding = None
        self._registry.deactivate(binding)

    def clear(self) -> None:
        with self._lock:
            binding, self._binding = self._binding, None
            self.by_scope.clear()
            self._by_resource.clear()
            self._scopes.clear()
        if binding is not None:
            self._registry.deactivate(binding)
