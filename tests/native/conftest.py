"""Fixtures for the native tests: the fake DLLs (built once per session) and a leak check on every test."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from .._toolchain import skip_or_fail
from ._fakes import FakesUnavailable, FakeWin


@pytest.fixture(scope="session")
def fakewin() -> FakeWin:
    """The built fakes; skips the test when gcc or the OpenSSL headers are missing."""
    try:
        return FakeWin.load()
    except FakesUnavailable as exc:
        skip_or_fail(str(exc))


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """For every test using ``fakewin``: reset the fakes, then assert no handle leaked or was freed twice."""
    if "fakewin" not in request.fixturenames:
        yield
        return
    fake: FakeWin = request.getfixturevalue("fakewin")
    fake.reset()
    live, bad = fake.live_handles(), fake.bad_frees()
    yield
    gc.collect()
    assert fake.live_handles() == live, f"{fake.live_handles() - live} native handle(s) leaked"
    assert fake.bad_frees() == bad, "a native handle was freed twice or was never live"
