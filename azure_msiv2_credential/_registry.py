"""Token -> binding registry: where the credential and the transports meet (neither imports the other).

An mtls_pop token is only usable over TLS with the certificate it was bound to. SDK policies cache tokens
on their own schedule, so a transport must find *that token's* binding, not merely the newest. Entries
live as long as their token; a binding no token refers to and the credential no longer uses is *retired*,
and transports are told so they can close its connection pools (bounded memory over days of rotation).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Callable, Optional, Protocol

from ._binding import Binding

RetireListener = Callable[[Binding], None]


class BindingRegistry:
    """Thread-safe map from issued token to (binding, expires_on)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[Binding, float]] = {}
        self._token_counts: dict[Binding, int] = {}
        self._active: set[Binding] = set()
        self._listeners: list[Callable[[], Optional[RetireListener]]] = []

    def lookup(self, token: str) -> Optional[Binding]:
        """The binding ``token`` was issued for, or ``None`` if it is not ours or has expired."""
        entry = self._tokens.get(token)
        if entry is not None and entry[1] > self._clock():
            return entry[0]
        return None

    def register(self, token: str, binding: Binding, expires_on: float) -> None:
        with self._lock:
            previous = self._tokens.get(token)
            if previous is None:
                self._token_counts[binding] = self._token_counts.get(binding, 0) + 1
            self._tokens[token] = (binding, expires_on)
            retired = self._prune_locked()
        self._notify(retired)

    def activate(self, binding: Binding) -> None:
        """The credential uses ``binding`` for new tokens."""
        with self._lock:
            self._active.add(binding)

    def deactivate(self, binding: Binding) -> None:
        """The credential has replaced or dropped ``binding``; it retires once its tokens expire."""
        with self._lock:
            self._active.discard(binding)
            retired = self._prune_locked()
            if binding not in self._token_counts and binding not in retired:
                retired.append(binding)  # never carried a token (e.g. dropped after invalid_client)
        self._notify(retired)

    def add_retire_listener(self, listener: RetireListener) -> None:
        """Call ``listener(binding)`` when a binding retires. Bound methods are held weakly."""
        ref: Callable[[], Optional[RetireListener]]
        if hasattr(listener, "__self__") and hasattr(listener, "__func__"):
            ref = weakref.WeakMethod(listener)
        else:
            ref = lambda: listener  # noqa: E731
        with self._lock:
            self._listeners.append(ref)

    def __len__(self) -> int:
        return len(self._tokens)

    def _prune_locked(self) -> list[Binding]:
        now = self._clock()
        for token in [t for t, (_, expires_on) in self._tokens.items() if expires_on <= now]:
            binding, _ = self._tokens.pop(token)
            self._token_counts[binding] -= 1
        retired = [b for b, n in self._token_counts.items() if n <= 0 and b not in self._active]
        for binding in retired:
            del self._token_counts[binding]
        self._listeners = [ref for ref in self._listeners if ref() is not None]
        return retired

    def _notify(self, retired: list[Binding]) -> None:
        if not retired:
            return
        for ref in list(self._listeners):
            listener = ref()
            if listener is not None:
                for binding in retired:
                    listener(binding)

    def __repr__(self) -> str:
        return f"BindingRegistry(tokens={len(self._tokens)}, active_bindings={len(self._active)})"


class HasBindingRegistry(Protocol):
    """What a transport needs from a credential: its registry (the credential type stays unknown)."""

    @property
    def binding_registry(self) -> BindingRegistry: ...
