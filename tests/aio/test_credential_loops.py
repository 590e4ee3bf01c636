"""An async credential belongs to the event loop it is first used on, and says so."""

from __future__ import annotations

import asyncio
import threading

from azure_msiv2_credential.aio import MsiV2ManagedIdentityCredential
from azure_msiv2_credential.emulator import Emulator

from .._factories import v2_options


def test_second_event_loop_gets_a_clear_error(emulator: Emulator) -> None:
    credential = MsiV2ManagedIdentityCredential(**v2_options(emulator, _sleep=None))
    scope = f"{emulator.resource_url}/.default"

    async def first() -> str:
        return (await credential.get_token_info(scope)).token

    token = asyncio.run(first())
    outcome: list[BaseException] = []

    async def second() -> None:
        try:
            await credential.get_token_info(scope, options={"claims": "{}"})  # forces the slow path
        except RuntimeError as error:
            outcome.append(error)

    thread = threading.Thread(target=lambda: asyncio.run(second()))
    thread.start()
    thread.join(10)
    assert token
    assert outcome and "event loop" in str(outcome[0])
