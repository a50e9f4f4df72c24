"""Waiting for a condition, for tests, benchmarks and the sandbox: the one place that polls.

``wait_for`` (async) and ``eventually`` (blocking) call a probe until it returns something truthy and return that;
after the timeout they raise ``TimeoutError`` naming what was awaited and the last value or error seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from secprofiles.kube.client import ApiError

T = TypeVar("T")
#: What a probe may raise while the condition does not hold yet (the object is not there, not complete yet…).
NOT_YET: tuple[type[BaseException], ...] = (AssertionError, KeyError, TypeError, FileNotFoundError, ApiError)


async def wait_for(probe: Callable[[], Awaitable[T | None]], within: float = 20.0, what: str = "condition",
                   interval: float = 0.05) -> T:
    """Await ``probe()`` until it returns something truthy; TimeoutError after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        result = await probe()
        if result:
            return result
        last = result
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {within:.0f}s waiting for {what}; last seen: {str(last)[:500]}")


def eventually(check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition",
               interval: float = 0.1) -> T:
    """Call ``check()`` until it returns something truthy; a failed assertion, a missing key or object and an API
    error count as "not yet". TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except NOT_YET as error:
            last = error
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {str(last)[:500]}")
