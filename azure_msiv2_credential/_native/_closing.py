"""One context-manager protocol for everything that owns a native resource and has ``close()``."""

from __future__ import annotations

from types import TracebackType
from typing import Optional, TypeVar

_T = TypeVar("_T", bound="Closing")


class Closing:
    """``with obj: ...`` closes ``obj`` on every path; subclasses implement an idempotent ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()
