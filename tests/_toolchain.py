"""Tests that need a toolchain (gcc + OpenSSL headers, mingw-w64) skip without it, except in CI."""

from __future__ import annotations

import os

import pytest


def skip_or_fail(reason: str) -> None:
    """Skip a test whose toolchain is missing, unless CI demands it run (``MSIV2_REQUIRE_NATIVE=1``)."""
    if os.environ.get("MSIV2_REQUIRE_NATIVE") == "1":
        pytest.fail(f"{reason} (MSIV2_REQUIRE_NATIVE=1: CI must run this test)", pytrace=False)
    pytest.skip(reason)
