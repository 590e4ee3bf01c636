"""The async twin of the ``make`` fixture: async credentials, closed with ``await`` after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from azure_msiv2_credential.emulator import Emulator

from .._helpers import Factory, FakeClock, async_credential


@pytest.fixture
async def make(emulator: Emulator, clock: FakeClock) -> AsyncIterator[Factory]:
    made: list[Any] = []

    def _make(**kwargs: Any) -> Any:
        made.append(async_credential(emulator, clock, **kwargs))
        return made[-1]

    yield _make
    for cred in made:
        await cred.close()
