"""Fault injection: a FIFO of scripted misbehaviours per endpoint, each consumed by one call."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

IMDS_ENDPOINTS = ("getplatformmetadata", "issuecredential", "v1token")
ENDPOINTS = (*IMDS_ENDPOINTS, "token", "resource")

_GENERIC = frozenset({"status", "delay", "malformed"})
ALLOWED: dict[str, frozenset[str]] = {
    "getplatformmetadata": _GENERIC | {"no_server_header", "server_header", "missing_field"},
    "issuecredential": _GENERIC
    | {"no_server_header", "server_header", "missing_field", "foreign_key_cert", "expired_cert"},
    "v1token": _GENERIC | {"no_server_header", "server_header"},
    "token": _GENERIC | {"bearer", "wrong_cnf", "invalid_client", "reject_handshake"},
    "resource": _GENERIC,
}
_REQUIRED_PARAMS = {
    "status": ("status",),
    "delay": ("seconds",),
    "missing_field": ("field",),
    "server_header": ("value",),
}
HANDSHAKE_FAULTS = frozenset({"reject_handshake"})
"""Faults applied during the TLS handshake, before any HTTP request (and so before the call is counted)."""


@dataclass(frozen=True)
class Fault:
    """A misbehaviour to apply to one call: its name and parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


class FaultQueue:
    """Thread-safe per-endpoint FIFO of faults."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Fault]] = {name: deque() for name in ENDPOINTS}

    def inject(self, endpoint: str, fault: str, count: int = 1, **params: Any) -> None:
        """Queue ``fault`` for the next ``count`` calls of ``endpoint`` (after faults already queued)."""
        if endpoint not in ALLOWED:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {', '.join(ENDPOINTS)}")
        if fault not in ALLOWED[endpoint]:
            raise ValueError(f"fault {fault!r} does not apply to {endpoint!r}")
        missing = [name for name in _REQUIRED_PARAMS.get(fault, ()) if name not in params]
        if missing:
            raise ValueError(f"fault {fault!r} needs parameter(s) {', '.join(missing)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._queues[endpoint].extend(Fault(fault, dict(params)) for _ in range(count))

    def next(self, endpoint: str) -> Fault | None:
        """Take the fault for this call of ``endpoint``, if any.

        A handshake fault at the head of the queue is left for the next TLS handshake: a request on a
        connection that is already established never consumes it.
        """
        with self._lock:
            queue = self._queues[endpoint]
            return queue.popleft() if queue and queue[0].name not in HANDSHAKE_FAULTS else None

    def next_if(self, endpoint: str, names: frozenset[str]) -> Fault | None:
        """Take the fault for ``endpoint`` only when the one at the head of its queue is one of ``names``."""
        with self._lock:
            queue = self._queues[endpoint]
            return queue.popleft() if queue and queue[0].name in names else None

    def pending(self, endpoint: str) -> int:
        with self._lock:
            return len(self._queues[endpoint])

    def clear(self) -> None:
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
