# Stub for the generated cffi ABI module (cffi_build/build.py): cffi objects are dynamically typed.
from typing import Any

ffi: Any
