"""Single-flight: concurrent misses for one key make one call; waiters share its result or its error.

A failure is never cached: the next caller after it starts a new call. One class for threads, one for
coroutines; the rule is the same.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Hashable
from functools import partial
from types import TracebackType
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("done", "error", "traceback", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Optional[T] = None
        self.error: Optional[BaseException] = None
        self.traceback: Optional[TracebackType] = None


class SingleFlight:
    """Thread-based single-flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, _Call[Any]] = {}

    def do(self, key: Hashable, fn: Callable[[], T]) -> T:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
        if not leader:
            call.done.wait()
            if call.error is not None:
                # Each waiter re-raises from the leader's traceback, so the shared object's traceback does
                # not grow with every waiter (as asyncio.Future does).
                raise call.error.with_traceback(call.traceback)
            return call.value  # type: ignore[return-value]
        try:
            call.value = fn()
            return call.value
        except BaseException as error:
            call.error, call.traceback = error, error.__traceback__
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()


class AsyncSingleFlight:
    """Coroutine-based single-flight (one event loop per credential, as azure-core's async clients assume).

    The call runs in a task of its own: a caller that is cancelled (``asyncio.wait_for``, a client timeout)
    stops waiting, while the call goes on for the others. Run inline in the first caller, its cancellation
    would be every waiter's error.
    """

    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Future[Any]] = {}

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = asyncio.ensure_future(self._run(key, fn))
            call.add_done_callback(partial(self._done, key))
        return await asyncio.shield(call)

    async def _run(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        finally:
            self._calls.pop(key, None)  # a failure is not cached: the next caller starts a new call

    def _done(self, key: Hashable, call: asyncio.Future[Any]) -> None:
        if self._calls.get(key) is call:  # cancelled before it started, so ``_run``'s finally never ran
            del self._calls[key]
        if not call.cancelled():
            call.exception()  # mark retrieved: a failure nobody waits for any more is not "unhandled"
