"""Attesting the KeyGuard binding key (PROTOCOL.md §4) and reusing the attestation JWT while it is fresh.

``NativeAttestor`` calls AttestationClientLib.dll; ``AttestationCache`` wraps any :class:`Attestor` so that
concurrent misses make one native call and a token is reused until close to its ``exp``. Tokens are
secrets: they are never logged, put in a repr or in an exception.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Callable, Optional, Protocol

from ._errors import ErrorCode, MsiV2Error
from ._native import NativeLibraries, NativeLibraryError
from ._native._loader import ATTESTATION_DLL, ATTESTATION_ENV, package_attestation_path
from ._native.attestation import AttestationCallError, attest_keyguard_key
from ._singleflight import SingleFlight
from .keys import BindingKey
from .keys.keyguard import KeyGuardKey

#: Reuse a token only while more than this remains before its ``exp`` (PROTOCOL.md §4, the reference's
#: 5 minutes): room for the issuecredential call, with its retries, to present it before it expires.
ATTESTATION_REFRESH_MARGIN_S = 300.0


class Attestor(Protocol):
    """Turns a KeyGuard key into an attestation JWT; raises ``MsiV2Error`` on failure."""

    def attest(self, endpoint: str, key: BindingKey, client_id: str) -> str: ...


class NativeAttestor:
    """AttestationClientLib.dll from ``libraries.attestation`` (default: the key's own ``libraries``)."""

    def __init__(self, libraries: Optional[NativeLibraries] = None) -> None:
        self._libraries = libraries

    def attest(self, endpoint: str, key: BindingKey, client_id: str) -> str:
        if not isinstance(key, KeyGuardKey):
            raise MsiV2Error(
                f"attestation needs a KeyGuard key, not a {key.strength} key", error_code=ErrorCode.KEYGUARD_UNAVAILABLE
            )
        path = (self._libraries or key.libraries).attestation
        if not path:
            raise _library_missing(f"{ATTESTATION_DLL} is not configured")
        try:
            with key.borrow() as handle:  # the key cannot be freed while the library uses its handle
                return attest_keyguard_key(path, endpoint, handle, client_id)
        except NativeLibraryError as exc:
            raise _library_missing(str(exc)) from exc
        except AttestationCallError as exc:
            raise MsiV2Error(
                f"attesting the KeyGuard key with {endpoint} failed: {exc}", error_code=ErrorCode.ATTESTATION_FAILED
            ) from exc

    def __repr__(self) -> str:
        return "NativeAttestor()"


def _library_missing(reason: str) -> MsiV2Error:
    return MsiV2Error(
        f"{reason}. Looked at: the explicit setting, then the environment variable {ATTESTATION_ENV}, then "
        f"{package_attestation_path()}. Set {ATTESTATION_ENV} to the absolute path of {ATTESTATION_DLL}.",
        error_code=ErrorCode.ATTESTATION_LIBRARY_MISSING,
    )


def jwt_expiry(token: str) -> Optional[float]:
    """The ``exp`` claim of a JWT (decoded, not verified: it only bounds our own reuse); None if absent."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


class AttestationCache:
    """Reuses tokens per (endpoint, key, client id) while more than ``ATTESTATION_REFRESH_MARGIN_S`` remain.

    Concurrent misses for the same entry make one call to the wrapped attestor; the others wait and get its
    token or its error. Failures and tokens without a numeric ``exp`` are not cached. The client id is part
    of the entry because one per-boot key serves every identity of the process.
    """

    def __init__(self, attestor: Attestor, *, clock: Callable[[], float] = time.time) -> None:
        self._attestor = attestor
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._flights = SingleFlight()

    def attest(self, endpoint: str, key: BindingKey, client_id: str) -> str:
        entry = (endpoint, key.key_id, client_id)
        return self._cached(entry) or self._flights.do(entry, lambda: self._attest(entry, endpoint, key, client_id))

    def _cached(self, entry: tuple[str, str, str]) -> Optional[str]:
        with self._lock:
            cached = self._tokens.get(entry)
        if cached is not None and cached[1] - self._clock() > ATTESTATION_REFRESH_MARGIN_S:
            return cached[0]
        return None

    def _attest(self, entry: tuple[str, str, str], endpoint: str, key: BindingKey, client_id: str) -> str:
        # A caller that missed just as the previous flight landed finds its token here: no second native call.
        token = self._cached(entry) or self._attestor.attest(endpoint, key, client_id)
        exp = jwt_expiry(token)
        with self._lock:
            if exp is not None:
                self._tokens[entry] = (token, exp)
            else:
                self._tokens.pop(entry, None)
        return token

    def clear(self) -> None:
        """Forget every cached token (e.g. after the key was recreated)."""
        with self._lock:
            self._tokens.clear()

    def __repr__(self) -> str:
        return f"AttestationCache(entries={len(self._tokens)})"
