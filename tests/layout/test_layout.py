"""The cdefs against the real Windows headers (mingw-w64), for x86-64 and i686; see ``layoutgen``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .._toolchain import skip_or_fail
from . import layoutgen

COMPILERS = {"x86_64": "x86_64-w64-mingw32-gcc", "i686": "i686-w64-mingw32-gcc"}


def _compile(arch: str, sources: dict[str, str], tmp_path: Path) -> str:
    """Compile every unit; returns the diagnostics of the failing ones ("" when all compile)."""
    cc = shutil.which(COMPILERS[arch])
    if cc is None:
        skip_or_fail(f"{COMPILERS[arch]} not installed (Debian: gcc-mingw-w64)")
    errors = []
    for name, source in sources.items():
        path = tmp_path / f"{arch}-{name}"
        path.write_text(source)
        cmd = [cc, "-std=gnu11", "-fsyntax-only", "-Wall", "-Werror", f"-I{layoutgen.HERE}", str(path)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            errors.append(f"{name}:\n{result.stderr}")
    return "\n".join(errors)


@pytest.mark.parametrize("arch", sorted(COMPILERS))
def test_cdefs_match_the_windows_headers(arch: str, tmp_path: Path) -> None:
    sources = layoutgen.generate()
    assert sources["compat.c"].count("_Static_assert") > 20  # the structs and constants are really checked
    assert _compile(arch, sources, tmp_path) == ""


@pytest.mark.parametrize(
    ("arch", "old", "new", "diagnostic", "unit"),
    [
        # a missing WINAPI is a different calling convention on i686
        ("i686", "int32_t WINAPI NCryptSignHash(", "int32_t NCryptSignHash(", "conflicting types", "compat.c"),
        # AttestationClientLib is cdecl: WINAPI there is wrong too
        (
            "i686",
            "void UninitAttestationLib(void);",
            "void WINAPI UninitAttestationLib(void);",
            "conflicting types",
            "compat.c",
        ),
        # a field of the wrong width moves the struct's layout
        ("x86_64", "uint32_t cbSalt;", "uint16_t cbSalt;", "BCRYPT_PSS_PADDING_INFO", "compat.c"),
        ("x86_64", "uint32_t cbModulus;", "uint64_t cbModulus;", "BCRYPT_RSAKEY_BLOB", "compat.c"),
        ("x86_64", "uint32_t dwKeySpec;", "uint64_t dwKeySpec;", "CRYPT_KEY_PROV_INFO", "compat.c"),
        ("i686", "uint32_t cProvParam;", "uint16_t cProvParam;", "CRYPT_KEY_PROV_INFO", "compat.c"),
        # a parameter of the wrong type
        (
            "x86_64",
            "uint32_t *pcbResult, uint32_t dwFlags);",
            "uint16_t *pcbResult, uint32_t dwFlags);",
            "conflicting",
            "compat.c",
        ),
        # a function the DLL does not export (under that name)
        ("x86_64", "NCryptFreeObject(", "NCryptFreeObjekt(", "NCryptFreeObjekt", "exists.c"),
    ],
)
def test_the_check_catches_mistakes(arch: str, old: str, new: str, diagnostic: str, unit: str, tmp_path: Path) -> None:
    cdef = layoutgen.shipped_cdef()
    assert old in cdef
    source = layoutgen.generate(cdef.replace(old, new, 1))[unit]
    errors = _compile(arch, {unit: source}, tmp_path)
    assert diagnostic in errors


def test_build_refuses_a_missing_header(tmp_path: Path) -> None:
    """A listed cdef header that is missing must stop the build, not silently drop a DLL's declarations."""
    import runpy

    build = runpy.run_path(str(layoutgen.ROOT / "cffi_build" / "build.py"))
    here = Path(build["HERE"])
    for name in build["HEADERS"]:
        (tmp_path / name).write_text((here / name).read_text(encoding="utf-8"), encoding="utf-8")
    assert build["cdef_source"](tmp_path) == build["cdef_source"]()
    (tmp_path / "winhttp.h").unlink()
    with pytest.raises(FileNotFoundError, match=r"winhttp\.h"):
        build["cdef_source"](tmp_path)
