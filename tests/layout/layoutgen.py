"""Turn the cffi cdefs into a C file that mingw-w64 checks against the real Windows headers.

The generated translation unit includes the Windows headers, then restates every cdef with our portable
types mapped to the LLP64 C types of the same size and signedness (``uint32_t`` -> ``unsigned long`` =
DWORD, ``char16_t`` -> ``wchar_t`` = WCHAR, ...):

- every function must be declared by the headers (a separate unit takes its address from them alone),
  and our redeclaration must be compatible: GCC rejects a different parameter or return type, and on
  i686 a different calling convention (WINAPI vs cdecl);
- typedefs are redeclared too (C11 allows identical ones; a different type is an error);
- each struct is emitted as ``struct cdef_<NAME>`` and ``_Static_assert``-ed field by field against the real
  one (offset and size of each field, size and alignment of the whole); on x86-64 the numbers cffi computes
  are asserted as well, since cffi lays out the same cdef at run time;
- integer constants of the ``_native`` modules are asserted equal to the header macros of the same name.

Run ``python tests/layout/layoutgen.py`` to print the C.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import runpy
from pathlib import Path
from typing import Any

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
INCLUDES = ("windows.h", "ncrypt.h", "bcrypt.h", "wincrypt.h", "winhttp.h", "stddef.h", "attestation_client.h")
#: Portable cdef type -> the Windows (LLP64) C type of the same size and signedness.
TYPE_MAP = {
    "uint64_t": "unsigned long long",
    "int64_t": "long long",
    "uint32_t": "unsigned long",
    "int32_t": "long",
    "uint16_t": "unsigned short",
    "int16_t": "short",
    "uint8_t": "unsigned char",
    "int8_t": "signed char",
    "uintptr_t": "ULONG_PTR",
    "intptr_t": "LONG_PTR",
    "char16_t": "wchar_t",
}
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_STRUCT = re.compile(r"(typedef\s+)?struct\s*(\w*)\s*\{(.*?)\}\s*([^;]*);", re.S)
_FUNCTION = re.compile(r"\b(\w+)\s*\([^()]*(?:\([^()]*\)[^()]*)*\)\s*;")


def _map_types(text: str) -> str:
    return re.sub(r"\b(" + "|".join(TYPE_MAP) + r")\b", lambda m: TYPE_MAP[m.group(1)], text)


def shipped_cdef() -> str:
    """The concatenated cdefs, exactly as ``cffi_build/build.py`` feeds them to cffi."""
    return str(runpy.run_path(str(ROOT / "cffi_build" / "build.py"))["cdef_source"]())


def _structs(cdef: str) -> tuple[str, list[tuple[str, str]]]:
    """Replace struct definitions by ``struct cdef_<name>``; returns the new text and (cffi name, C name)."""
    found: list[tuple[str, str]] = []

    def rename(m: re.Match[str]) -> str:
        is_typedef, tag, body, names = m.group(1), m.group(2), m.group(3), m.group(4)
        if is_typedef:
            name = next(n.strip() for n in names.split(",") if "*" not in n)
            found.append((name, name))
        else:
            name = tag
            found.append((f"struct {tag}", f"struct {tag}"))
        return f"struct cdef_{name} {{{body}}};"

    return _STRUCT.sub(rename, cdef), found


def _function_names(cdef_without_structs: str) -> list[str]:
    names = []
    for statement in cdef_without_structs.split(";"):
        if "typedef" in statement or "(" not in statement:
            continue
        m = _FUNCTION.search(statement + ";")
        if m:
            names.append(m.group(1))
    return names


def _struct_checks(ffi: Any, structs: list[tuple[str, str]]) -> list[str]:
    lines = []
    for cffi_name, c_name in structs:
        ours = "struct cdef_" + c_name.replace("struct ", "")
        label = c_name
        lines.append(f'_Static_assert(sizeof({ours}) == sizeof({c_name}), "{label}: size differs");')
        lines.append(f'_Static_assert(_Alignof({ours}) == _Alignof({c_name}), "{label}: alignment differs");')
        lines.append("#ifdef _WIN64")
        lines.append(f'_Static_assert(sizeof({c_name}) == {ffi.sizeof(cffi_name)}, "{label}: cffi size differs");')
        lines.append("#endif")
        for field, info in ffi.typeof(cffi_name).fields:
            lines.append(
                f'_Static_assert(offsetof({ours}, {field}) == offsetof({c_name}, {field}), "{label}.{field}: offset");'
            )
            lines.append(
                f"_Static_assert(sizeof((({ours} *)0)->{field}) == sizeof((({c_name} *)0)->{field}), "
                f'"{label}.{field}: size");'
            )
            lines.append("#ifdef _WIN64")
            cffi_offset = f"offsetof({c_name}, {field}) == {info.offset}"
            lines.append(f'_Static_assert({cffi_offset}, "{label}.{field}: cffi offset");')
            lines.append("#endif")
    return lines


def _constant_checks() -> list[str]:
    import azure_msiv2_credential._native as native

    lines = []
    for mod in pkgutil.iter_modules(native.__path__):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{native.__name__}.{mod.name}")
        for name, value in sorted(vars(module).items()):
            if name.isupper() and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32:
                lines += [
                    f"#ifdef {name}",
                    f'_Static_assert((unsigned long)({name}) == {value}UL, "{mod.name}.{name} differs");',
                    "#endif",
                ]
    return lines


def generate(cdef: str | None = None) -> dict[str, str]:
    """Two translation units: ``exists.c`` (every function is declared by the real headers) and ``compat.c``
    (our redeclarations, struct layouts and constants); separate, because taking a function's address before
    redeclaring it without ``dllimport`` is itself diagnosed. ``cdef`` overrides the shipped cdefs."""
    text = cdef if cdef is not None else shipped_cdef()
    ffi = FFI()
    ffi.cdef(text)
    cdef = _COMMENT.sub("", text)
    renamed, structs = _structs(cdef)
    head = [f"#include <{h}>" if h != "attestation_client.h" else f'#include "{h}"' for h in INCLUDES]
    exists = head + [f"void (*exists_{f})(void) = (void (*)(void)){f};" for f in _function_names(renamed)]
    compat = [*head, "/* the cdefs, portable types mapped to LLP64: redeclarations must be compatible */"]
    # Some headers declare functions dllimport; a plain redeclaration is only an attribute warning. Calling
    # convention and type mismatches stay errors ("conflicting types").
    compat.append('#pragma GCC diagnostic ignored "-Wattributes"')
    compat.append(_map_types(renamed))
    compat.append("/* struct layouts */")
    compat += _struct_checks(ffi, structs)
    compat.append("/* constants */")
    compat += _constant_checks()
    return {"exists.c": "\n".join(exists) + "\n", "compat.c": "\n".join(compat) + "\n"}


if __name__ == "__main__":
    for name, source in generate().items():
        print(f"/* ---- {name} ---- */\n{source}")
