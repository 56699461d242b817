"""Waiting for the code under test: poll a predicate until it holds, with a deadline generous enough for a
loaded two-core machine. It returns as soon as the predicate holds, so a generous deadline costs nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")

#: How long anything in a test may take before it counts as never: two cores shared by several test sessions.
GENEROUS_S = 60.0


def wait_for(
    predicate: Callable[[], T | Literal[False] | None],
    timeout_s: float = GENEROUS_S,
    interval_s: float = 0.05,
    message: str = "",
) -> T:
    """Poll ``predicate()`` until it is truthy and return that value (typed without the ``False``/``None`` a
    predicate returns while it waits); ``AssertionError`` (with ``message``) when ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {message or predicate}")
        time.sleep(interval_s)


async def wait_for_async(
    predicate: Callable[[], T | Literal[False] | None],
    timeout_s: float = GENEROUS_S,
    interval_s: float = 0.005,
    message: str = "",
) -> T:
    """``wait_for`` on an event loop: polls between ``asyncio.sleep``s, so the loop's own tasks run meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {message or predicate}")
        await asyncio.sleep(interval_s)
