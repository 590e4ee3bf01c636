"""Single-flight for threads: one call, shared result or error, and a bounded traceback for waiters."""

from __future__ import annotations

import threading
import traceback

import pytest

from azure_msiv2_credential._singleflight import SingleFlight


def test_waiters_share_one_error_without_growing_its_traceback() -> None:
    flights = SingleFlight()
    gate, started = threading.Event(), threading.Event()
    calls = 0

    def failing() -> None:
        nonlocal calls
        calls += 1
        started.set()
        gate.wait(5)
        raise RuntimeError("boom")

    errors: list[BaseException] = []
    lengths: list[int] = []

    def caller() -> None:
        try:
            flights.do("k", failing)
        except RuntimeError as error:
            errors.append(error)
            lengths.append(len(traceback.format_tb(error.__traceback__)))

    leader = threading.Thread(target=caller)
    leader.start()
    started.wait(5)
    waiters = [threading.Thread(target=caller) for _ in range(32)]
    for t in waiters:
        t.start()
    gate.set()
    for t in [leader, *waiters]:
        t.join(5)
    assert calls == 1 and len(errors) == 33 and len({id(e) for e in errors}) == 1
    assert max(lengths) <= min(lengths) + 3  # not one frame per waiter


def test_failure_is_not_remembered() -> None:
    flights = SingleFlight()
    with pytest.raises(ValueError):
        flights.do("k", lambda: (_ for _ in ()).throw(ValueError("once")))
    assert flights.do("k", lambda: 42) == 42
