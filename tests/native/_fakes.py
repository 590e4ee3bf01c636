"""Build the fake Windows DLLs in ``tests/native/fakes`` with gcc + OpenSSL and drive them from tests.

``libfakewin.so`` (every ``fake_*.c`` but ``fake_attestation.c``, plus ``fakewin_common.c``) stands in for
ncrypt.dll, crypt32.dll and winhttp.dll; ``libfakeattest.so`` for AttestationClientLib.dll. Builds are
cached in ``tests/native/build/<source hash>/``. Control functions are declared in the C sources between
``BEGIN PYTHON CDEF`` / ``END PYTHON CDEF`` and reached through :attr:`FakeWin.ctl` / :attr:`FakeWin.attest_ctl`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cffi import FFI

from azure_msiv2_credential._native import NativeLibraries

HERE = Path(__file__).resolve().parent
FAKES = HERE / "fakes"
BUILD = HERE / "build"
ATTESTATION_SOURCE = "fake_attestation.c"
CFLAGS = ["-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra", "-std=gnu11", f"-I{FAKES}"]
LIBS = ["-lssl", "-lcrypto", "-lpthread"]
_CDEF = re.compile(r"BEGIN PYTHON CDEF(.*?)END PYTHON CDEF", re.S)
_RESET = re.compile(r"\b(Fake\w*_Reset)\s*\(")
_ATTESTATION_MODES = {"ok": 0, "fail": 1, "empty": 2, "http_fail": 3, "null": 4}
_VBS_OFF_REFUSE, _VBS_ON, _VBS_OFF_SILENT, _VBS_OFF_NOT_SUPPORTED = 0, 1, 2, 3


class FakesUnavailable(Exception):
    """gcc or the OpenSSL headers are missing: native tests skip with this reason."""


def _fakewin_sources() -> list[Path]:
    fakes = sorted(p for p in FAKES.glob("fake_*.c") if p.name != ATTESTATION_SOURCE)
    return [FAKES / "fakewin_common.c", *fakes]


def _control_cdef(sources: list[Path]) -> str:
    """The marked prototypes; a leading `` * `` of a block comment's lines is dropped."""
    blocks = (m.group(1) for src in sources for m in _CDEF.finditer(src.read_text(encoding="utf-8")))
    return "\n".join(re.sub(r"(?m)^\s*\*(?!/)\s?", "", block) for block in blocks)


def _check_toolchain() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FakesUnavailable("gcc not found: the fake Windows DLLs cannot be built")
    probe = subprocess.run(
        [gcc, "-fsyntax-only", "-x", "c", "-"], input=b"#include <openssl/evp.h>\n", capture_output=True, check=False
    )
    if probe.returncode != 0:
        raise FakesUnavailable("OpenSSL 3 headers not found (install libssl-dev): the fakes cannot be built")
    return gcc


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"building the fakes failed:\n{' '.join(cmd)}\n{result.stderr}")


def build() -> tuple[Path, Path]:
    """Compile (or reuse) the two libraries; returns their absolute paths."""
    gcc = _check_toolchain()
    inputs = sorted(FAKES.glob("*.[ch]"))
    digest = hashlib.sha256(" ".join(CFLAGS).encode())
    for path in inputs:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out = BUILD / digest.hexdigest()[:16]
    fakewin, attest = out / "libfakewin.so", out / "libfakeattest.so"
    if fakewin.is_file() and attest.is_file():
        return fakewin, attest
    BUILD.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=BUILD))
    try:
        fakewin_out, attest_out = tmp / "libfakewin.so", tmp / "libfakeattest.so"
        sources = [str(p) for p in _fakewin_sources()]
        _run([gcc, *CFLAGS, "-Wl,-soname,libfakewin.so", "-o", str(fakewin_out), *sources, *LIBS])
        # rpath $ORIGIN: the attestation fake finds the same libfakewin.so the bindings load by absolute path
        attest_src = str(FAKES / ATTESTATION_SOURCE)
        _run([gcc, *CFLAGS, "-o", str(attest_out), attest_src, f"-L{tmp}", "-lfakewin", "-Wl,-rpath,$ORIGIN", *LIBS])
        try:
            os.rename(tmp, out)
        except OSError:  # another process built the same sources first
            if not fakewin.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return fakewin, attest


def _open(path: Path, sources: list[Path]) -> tuple[Any, list[str]]:
    ffi = FFI()
    cdef = _control_cdef(sources)
    ffi.cdef(cdef)
    return ffi.dlopen(str(path)), _RESET.findall(cdef)


@dataclass
class FakeWin:
    """The built fakes plus their controls; one per test session (state is reset before each test)."""

    fakewin_path: Path
    attest_path: Path
    ctl: Any = field(repr=False)
    attest_ctl: Any = field(repr=False)
    _resets: list[Any] = field(repr=False, default_factory=list)

    @classmethod
    def load(cls) -> FakeWin:
        fakewin_path, attest_path = build()
        ctl, ctl_resets = _open(fakewin_path, _fakewin_sources())
        attest_ctl, attest_resets = _open(attest_path, [FAKES / ATTESTATION_SOURCE])
        resets = [getattr(ctl, n) for n in ctl_resets] + [getattr(attest_ctl, n) for n in attest_resets]
        return cls(fakewin_path, attest_path, ctl, attest_ctl, resets)

    @property
    def libraries(self) -> NativeLibraries:
        """Every DLL path pointing at the fakes."""
        win = str(self.fakewin_path)
        return NativeLibraries(ncrypt=win, crypt32=win, winhttp=win, attestation=str(self.attest_path))

    def reset(self) -> None:
        """Call every ``Fake*_Reset`` the sources declare: empty key store, VBS on, attestation ok."""
        for reset in self._resets:
            reset()

    def set_vbs(self, on: bool, *, silently: bool = False, not_supported: bool = False) -> None:
        """VBS off: finalizing an isolated key fails with 0x80890014 (what Windows returns when VBS key
        isolation is unavailable), with NTE_NOT_SUPPORTED (``not_supported``: a Windows that does not know
        the flag), or (``silently``) succeeds with ``"Virtual Iso"`` reading 0."""
        if on:
            mode = _VBS_ON
        elif silently:
            mode = _VBS_OFF_SILENT
        else:
            mode = _VBS_OFF_NOT_SUPPORTED if not_supported else _VBS_OFF_REFUSE
        self.ctl.FakeNCrypt_SetVbs(mode)

    def set_virtual_iso_size(self, size: int) -> None:
        """``"Virtual Iso"`` reads as ``size`` bytes (default 4), the isolation flag in the first byte."""
        self.ctl.FakeNCrypt_SetVirtualIsoSize(size)

    def prop78_sets(self) -> int:
        """How many times CERT_NCRYPT_KEY_HANDLE_PROP_ID was set on any context since the last reset."""
        return int(self.ctl.FakeCrypt32_Prop78Sets())

    def set_pre_tls_notify(self, mode: int) -> None:
        """Proxied requests: 1 = SENDING_REQUEST also fires once before the CONNECT tunnel (no TLS yet);
        2 = it fires only then, never after the handshake; 0 = only after the handshake (default)."""
        self.ctl.FakeWinHttp_SetPreTlsNotify(mode)

    def last_access_type(self) -> int:
        """``dwAccessType`` of the latest ``WinHttpOpen`` (-1 = none since the reset)."""
        return int(self.ctl.FakeWinHttp_LastAccessType())

    def reboot(self) -> None:
        """Per-boot keys stay in the store but go stale: open works, signing fails with NTE_BAD_KEYSET."""
        self.ctl.FakeNCrypt_Reboot()

    def live_handles(self) -> int:
        return int(self.ctl.FakeWin_LiveHandles())

    def bad_frees(self) -> int:
        return int(self.ctl.FakeWin_BadFrees())

    def stored_keys(self) -> int:
        return int(self.ctl.FakeNCrypt_StoredKeys())

    def calls(self, function: str) -> int:
        return int(self.ctl.FakeNCrypt_Calls(function.encode()))

    def fail_next(self, function: str, status: int) -> None:
        """The next call of an NCrypt ``function`` returns ``status`` (unsigned hex is fine)."""
        signed = status - (1 << 32) if status >= 1 << 31 else status
        self.ctl.FakeNCrypt_FailNext(function.encode(), signed)

    def set_attestation_mode(self, mode: str) -> None:
        """``"ok"`` | ``"fail"`` (-6) | ``"http_fail"`` (-5) | ``"empty"`` / ``"null"`` (rc 0, no token)."""
        self.attest_ctl.FakeAttest_SetMode(_ATTESTATION_MODES[mode])

    def attestation_calls(self) -> int:
        return int(self.attest_ctl.FakeAttest_Calls())
