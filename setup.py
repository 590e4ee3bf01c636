"""setuptools shim for what pyproject.toml cannot say: generate the cffi ABI module at build time.

``cffi_build/build.py`` emits ``azure_msiv2_credential/_native/_winapi.py`` (pure Python, ABI mode), so
installing needs no compiler. The metadata lives in pyproject.toml.
"""

from setuptools import setup

setup(cffi_modules=["cffi_build/build.py:ffibuilder"])
