"""A server's start-up run in the test process, with the collector's frozen heap its own."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_unfrozen(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(main())` with the heap unfrozen before and after: what `gc.get_freeze_count()`
    reads inside is what the code under test froze, and the freeze does not outlive the test."""
    gc.unfreeze()
    try:
        return asyncio.run(main())
    finally:
        gc.unfreeze()
