"""AttestationClientLib.dll: attest a CNG key and get the attestation service's JWT.

The library is process-global (init/uninit), so every use runs init -> attest -> free -> uninit under one
process-wide lock. That lock serialises only *this package's* use of AttestationClientLib: another component
of the same process that loads the DLL and calls it directly is not serialised with us (nor we with it).

Its log callback is bridged to ``logging`` at DEBUG; anything JWT-shaped is redacted. The cffi callback is
made on the first attestation, not at import (making one allocates executable memory, which hardened hosts
may refuse: that must not break importing the package), and then kept for the life of the process.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Optional

from ._errors import NativeError
from ._loader import load, require
from ._winapi import ffi

_log = logging.getLogger(__name__)

#: Return codes the library documents; other negatives are reported generically.
RC_MESSAGES = {-5: "HTTP request to the attestation service failed", -6: "attestation failed"}
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*")

_FUNCTIONS = ("InitAttestationLib", "AttestKeyGuardImportKey", "FreeAttestationToken", "UninitAttestationLib")
#: Serialises the whole init..uninit sequence: the library has one global state per process. Only calls made
#: through this module take it (see the module docstring).
_process_lock = threading.Lock()


class AttestationCallError(NativeError):
    """An AttestationClientLib function failed; ``rc`` is its return code (0 for "no token")."""

    def __init__(self, function: str, rc: int, reason: Optional[str] = None) -> None:
        self.function = function
        self.rc = rc
        self.reason = reason or RC_MESSAGES.get(rc, "failed")
        super().__init__(f"{function} returned {rc}: {self.reason}")


def _on_log(ctx: Any, tag: Any, level: int, func: Any, line: int, msg: Any) -> None:  # noqa: PLR0917 (C signature)
    """The native log callback; must never raise into C."""
    try:
        if not _log.isEnabledFor(logging.DEBUG):
            return
        text = ffi.string(msg).decode("utf-8", "replace") if msg != ffi.NULL else ""
        where = ffi.string(func).decode("utf-8", "replace") if func != ffi.NULL else "?"
        _log.debug("AttestationClientLib[%d] %s:%d %s", level, where, line, _JWT.sub("<redacted>", text))
    except Exception:  # noqa: S110 - a logging failure must not unwind through native frames
        pass


# Created on first use (under _process_lock) and never released: the library may keep the pointer beyond
# our calls. At most one element.
_log_callback: list[Any] = []


def _log_callback_locked() -> Any:
    """The one log callback, made on first use; the caller holds ``_process_lock``."""
    if not _log_callback:
        _log_callback.append(ffi.callback("AttestationLogFunc", _on_log))
    return _log_callback[0]


def attest_keyguard_key(path: str, endpoint: str, key_handle: int, client_id: str) -> str:
    """Attest the CNG key ``key_handle`` (borrowed, not freed) with the service at ``endpoint``. The caller
    keeps the handle open for the whole call (``KeyGuardKey.borrow()``).

    Arguments per PROTOCOL.md §4: auth token ``""`` and client payload ``"{}"`` (NULL yields unusable tokens).
    Raises :class:`AttestationCallError` on a non-zero return code or an empty token.
    """
    lib = load(path)
    require(lib, path, _FUNCTIONS)
    endpoint_c, client_id_c = ffi.new("char[]", endpoint.encode()), ffi.new("char[]", client_id.encode())
    with _process_lock:
        info = ffi.new("AttestationLogInfo *", {"Log": _log_callback_locked(), "Ctx": ffi.NULL})
        rc = int(lib.InitAttestationLib(info))
        if rc != 0:
            raise AttestationCallError("InitAttestationLib", rc, RC_MESSAGES.get(rc, "initialization failed"))
        try:
            token_out = ffi.new("char **")
            rc = int(
                lib.AttestKeyGuardImportKey(
                    endpoint_c, b"", b"{}", ffi.cast("void *", key_handle), token_out, client_id_c
                )
            )
            try:
                if rc != 0:
                    raise AttestationCallError("AttestKeyGuardImportKey", rc)
                raw = ffi.string(token_out[0]) if token_out[0] != ffi.NULL else b""
            finally:
                if token_out[0] != ffi.NULL:
                    lib.FreeAttestationToken(token_out[0])
        finally:
            lib.UninitAttestationLib()
    if not raw:
        raise AttestationCallError("AttestKeyGuardImportKey", 0, "succeeded but returned no token")
    if not raw.isascii():
        raise AttestationCallError("AttestKeyGuardImportKey", 0, "returned a token that is not a JWT")
    return str(raw.decode("ascii"))
