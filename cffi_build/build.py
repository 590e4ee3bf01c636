"""Build the out-of-line ABI-mode cffi module ``azure_msiv2_credential._native._winapi``.

ABI mode: the generated module is pure Python (type tables only), so installing needs no compiler and
the same wheel serves every Windows architecture. setuptools runs this through ``cffi_modules`` in
``setup.py``; ``python cffi_build/build.py [OUT]`` regenerates the committed copy (or writes OUT).
"""

from __future__ import annotations

import pathlib
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
MODULE = "azure_msiv2_credential._native._winapi"
SHIPPED = HERE.parent / "azure_msiv2_credential" / "_native" / "_winapi.py"
#: One cdef file per DLL. ncrypt.h comes first: it defines the NCRYPT handle types the others may use.
HEADERS = ("ncrypt.h", "crypt32.h", "winhttp.h", "attestation.h")


def cdef_source(folder: pathlib.Path = HERE) -> str:
    """The cdef files of ``HEADERS`` in ``folder``, concatenated in order.

    Every listed header must be there: a missing one would silently drop a DLL's declarations from the
    generated module (and its functions would fail only when first called).
    """
    missing = [name for name in HEADERS if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"cdef header(s) missing from {folder}: {', '.join(missing)}")
    return "\n".join((folder / name).read_text(encoding="utf-8") for name in HEADERS)


ffibuilder = FFI()
ffibuilder.cdef(cdef_source())
ffibuilder.set_source(MODULE, None)

if __name__ == "__main__":
    ffibuilder.emit_python_code(sys.argv[1] if len(sys.argv) > 1 else str(SHIPPED))
