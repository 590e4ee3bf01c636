"""Where the DLLs are and how they are loaded: only by absolute path, never from the cwd or PATH.

``NativeLibraries`` is injectable so the unchanged bindings can run against stand-ins (the Linux fakes
under ``tests/native/fakes``) or against DLLs in a non-default place.
"""

from __future__ import annotations

import ntpath
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Optional

from ._errors import NativeLibraryError
from ._winapi import ffi

#: Environment variable naming AttestationClientLib.dll; it must hold an absolute path.
ATTESTATION_ENV = "AZURE_MSIV2_ATTESTATION_LIB"
ATTESTATION_DLL = "AttestationClientLib.dll"


def package_attestation_path() -> str:
    """The package's own folder, the last place ``for_this_host`` looks for the attestation DLL."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ATTESTATION_DLL)


@dataclass(frozen=True)
class NativeLibraries:
    """Absolute paths of the DLLs the bindings call; ``attestation`` is None when none is configured."""

    ncrypt: str
    crypt32: str
    winhttp: str
    attestation: Optional[str] = None

    @classmethod
    def for_this_host(cls, attestation_path: Optional[str] = None) -> NativeLibraries:
        """The system DLLs from ``%SystemRoot%\\System32``; attestation from ``attestation_path``, then
        ``AZURE_MSIV2_ATTESTATION_LIB``, then the package folder (used only if the file is there).

        A relative attestation path is kept as given and refused when loaded, so the error surfaces where
        attestation is used rather than breaking KeyGuard use without attestation.
        """
        if sys.platform != "win32":
            raise NativeLibraryError(
                "the Windows libraries (ncrypt, crypt32, winhttp) exist only on Windows; "
                "pass NativeLibraries(...) with explicit absolute paths to use stand-ins"
            )
        root = os.environ.get("SYSTEMROOT", "")
        if not ntpath.isabs(root):
            root = "C:\\Windows"
        system32 = ntpath.join(root, "System32")
        attestation = attestation_path or os.environ.get(ATTESTATION_ENV) or None
        if attestation is None and os.path.isfile(package_attestation_path()):
            attestation = package_attestation_path()
        return cls(
            ncrypt=ntpath.join(system32, "ncrypt.dll"),
            crypt32=ntpath.join(system32, "crypt32.dll"),
            winhttp=ntpath.join(system32, "winhttp.dll"),
            attestation=attestation,
        )


_loaded: dict[str, Any] = {}
_lock = threading.Lock()


def load(path: str) -> Any:
    """``ffi.dlopen`` of an absolute path, cached per path (a DLL is never unloaded while in use)."""
    if not os.path.isabs(path):
        raise NativeLibraryError(f"refusing to load {path!r}: native libraries are loaded by absolute path only")
    with _lock:
        lib = _loaded.get(path)
        if lib is None:
            if not os.path.isfile(path):
                raise NativeLibraryError(f"{path} does not exist")
            try:
                lib = ffi.dlopen(path)
            except OSError as exc:
                raise NativeLibraryError(f"{path} could not be loaded: {exc}") from exc
            _loaded[path] = lib
    return lib


def require(lib: Any, path: str, names: tuple[str, ...]) -> None:
    """Fail early, as a load error, when ``path`` is not the DLL we expect (a symbol is missing)."""
    missing = []
    for name in names:
        try:
            getattr(lib, name)
        except (AttributeError, ffi.error):  # cffi reports an unknown symbol as ffi.error
            missing.append(name)
    if missing:
        raise NativeLibraryError(f"{path} does not export {', '.join(missing)}")


def last_error() -> int:
    """``GetLastError()`` of this thread's latest native call; under the Linux fakes, ``errno`` stands in."""
    if sys.platform == "win32":
        return int(ffi.getwinerror()[0]) & 0xFFFFFFFF
    return int(ffi.errno) & 0xFFFFFFFF
