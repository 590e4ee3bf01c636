"""Exceptions of the native layer: a library that cannot be loaded, and a call that returned a failure.

They carry the function, the status name and its hex code, so a caller can map them to its own errors
(``keys/`` maps them to ``MsiV2Error``) without parsing messages. Nothing secret is ever put in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional


class NativeError(Exception):
    """Base class of every failure raised by ``_native``."""


class NativeLibraryError(NativeError):
    """A DLL could not be loaded: not on this platform, not an absolute path, missing, or not loadable."""


class NativeCallError(NativeError):
    """A native function returned a failure status.

    ``code`` is the unsigned 32-bit value (compare with ``& 0xFFFFFFFF``: NCrypt declares SECURITY_STATUS as a
    signed LONG, so ``NTE_*`` values arrive negative); ``name`` is its symbolic name when known.
    """

    def __init__(self, function: str, code: int, names: Optional[Mapping[int, str]] = None) -> None:
        self.function = function
        self.code = code & 0xFFFFFFFF
        self.name = (names or {}).get(self.code, "unknown status")
        super().__init__(f"{function} failed: {self.name} (0x{self.code:08X})")
