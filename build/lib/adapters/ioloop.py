"""The engine's single I/O loop: one uvloop event loop in its own thread.

All network I/O (asyncpg, the admin socket, ccxt.async_support, the paper venue's simulated latency) runs here.
Actors never await: they hand a coroutine to ``IoLoop.submit`` and get the result back through a callback,
which typically ``tell``s a message to the actor (so the handler thread never blocks on the loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


class IoLoop:
    """Owns a uvloop event loop running in a daemon thread named ``io-loop``."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="io-loop", daemon=True)
        self._started = threading.Event()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def start(self) -> IoLoop:
        self._thread.start()
        self._started.wait()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._started.set)
        self._loop.run_forever()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(
        self,
        coro: Coroutine[Any, Any, T],
        on_done: Callable[[concurrent.futures.Future[T]], None] | None = None,
    ) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop from any thread. ``on_done`` runs on the loop thread: keep it short
        (typically one ``ActorRef.tell``)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        if on_done is not None:
            future.add_done_callback(on_done)
        return future

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the loop and block for its result. For start-up, shutdown and tests only; never
        inside an actor handler."""
        if self.in_loop_thread():
            raise RuntimeError("IoLoop.run called from the loop thread; it would deadlock")
        return self.submit(coro).result(timeout_s)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self._loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel what is left on the loop, then stop it and join its thread."""
        if not self._thread.is_alive():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(TimeoutError, concurrent.futures.TimeoutError, RuntimeError):
            self.run(_cancel_all(), timeout_s)  # best effort: the loop is stopping anyway
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if not self._loop.is_running():
            self._loop.close()
