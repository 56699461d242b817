"""Ad-hoc writes through the persistence actor, for the few writes that need an answer (claiming signals,
inserting an admin-injected signal). The persistence actor stays the only writer to PostgreSQL: it runs the
function on one of its connections, on the I/O loop, and hands back the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import Any

import pykka

from actors.persistence import PersistenceActor
from engine.control import RunWrite

__all__ = ["WriteNotStarted", "run_write"]


class WriteNotStarted(TimeoutError):
    """The write did not start within its timeout and never will: nothing of it reached the database."""


async def run_write(
    persistence: pykka.ActorRef[PersistenceActor], fn: Callable[[Any], Awaitable[Any]], timeout_s: float = 30.0
) -> Any:
    """From a coroutine on the I/O loop: run ``fn`` through the persistence actor and await its result.

    ``timeout_s`` bounds the wait for the write to *start*. A write not started by then is cancelled and never
    runs (``WriteNotStarted``, a ``TimeoutError``); one already running is waited for: its transaction may
    commit, and a claim whose result nobody reads would leave signals 'processing' that no one routes.

    Any other exception leaves the outcome open when it is a lost connection: the COMMIT may have reached the
    server and its answer not come back. A caller that must know reads the database again (by a key the write
    set) before it answers."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    persistence.tell(RunWrite(fn=fn, future=future))
    result = asyncio.wrap_future(future)
    try:
        return await asyncio.wait_for(asyncio.shield(result), timeout_s)
    except TimeoutError:
        if future.cancel():  # not started: it never will be
            raise WriteNotStarted(f"the write did not start within {timeout_s:g} s") from None
        return await result
