"""Token and binding caches with their rules; the drivers only add waiting (threads or coroutines).

Token entries are indexed twice: by resource (the cache proper; each entry records the certificate
thumbprint and attested flag it was issued under) and by the caller's scope string, so that a cache hit is
one dict lookup and one clock read, with no parsing and no lock.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from azure.core.credentials import AccessToken, AccessTokenInfo

from ._binding import Binding
from ._errors import MsiV2Error
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
        self._next_mint = 0.0  # after a failed rotation: no new mint before this time
        self._closed = False

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
        with self._lock:
            self._check_open_locked()
            self._prune_locked(now)
            self._by_resource[resource] = entry
            self._index_locked(scope, resource)
            for indexed_scope in self._scopes[resource]:
                self.by_scope[indexed_scope] = entry
        self._registry.register(result.access_token, result.binding, result.expires_on)
        return entry

    def _prune_locked(self, now: float) -> None:
        """Forget expired tokens so a long-lived credential's cache stays as small as its live resources."""
        for resource in [r for r, e in self._by_resource.items() if e.expires_on <= now]:
            del self._by_resource[resource]
            for scope in self._scopes.pop(resource, ()):
                self.by_scope.pop(scope, None)

    def _check_open_locked(self) -> None:
        if self._closed:
            raise MsiV2Error("the credential was closed during this token acquisition")

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
        """The binding to use without minting: one not yet due for rotation, or one past it (but valid) while
        a failed rotation waits ``REFRESH_RETRY_INTERVAL`` before the next try."""
        binding = self._binding
        if binding is None:
            return None
        if now < binding.rotate_at or (now < self._next_mint and self._still_valid(binding, now)):
            return binding
        return None

    def mint_failed(self, now: float) -> Optional[Binding]:
        """A rotation failed: the still-valid binding to fall back on (retrying the mint in 30 s), or None."""
        binding = self._binding
        if binding is None or not self._still_valid(binding, now):
            return None
        self._next_mint = now + REFRESH_RETRY_INTERVAL
        return binding

    @staticmethod
    def _still_valid(binding: Binding, now: float) -> bool:
        return now < binding.not_after - TOKEN_EXPIRY_SKEW

    def store_binding(self, binding: Binding) -> None:
        with self._lock:
            closed, previous = self._closed, self._binding
            if not closed:
                self._binding, self._next_mint = binding, 0.0
        if closed:
            self._registry.deactivate(binding)  # nobody will use it: let the transports retire it
            raise MsiV2Error("the credential was closed during this token acquisition")
        self._registry.activate(binding)
        if previous is not None and previous is not binding:
            self._registry.deactivate(previous)

    def drop_binding(self, binding: Binding) -> None:
        with self._lock:
            if self._binding is not binding:
                return
            self._binding = None
        self._registry.deactivate(binding)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Forget everything; later stores raise, so an acquisition racing ``close()`` cannot revive state."""
        with self._lock:
            self._closed = True
            binding, self._binding = self._binding, None
            self.by_scope.clear()
            self._by_resource.clear()
            self._scopes.clear()
        if binding is not None:
            self._registry.deactivate(binding)


def lookup(index: dict[str, TokenEntry], scope: Any) -> Optional[TokenEntry]:
    """The fast-path lookup; an unhashable "scope" (a list, say) is left to the slow path to reject."""
    try:
        return index.get(scope)
    except TypeError:
        return None
