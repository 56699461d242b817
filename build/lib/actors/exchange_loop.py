"""The exchange actor's half on the I/O loop: runs venue calls as tasks, classifies how each ended (the outcome
policy of ``engine/venue.py``) and hands results back to the actor in batches. Touched only on the loop thread."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from engine.control import CallResult
from engine.venue import OrderRejected, OutcomeUnknown, RetryableError, VenueBanned


class LoopSide:
    """The actor's half on the I/O loop thread: runs the calls, keeps the tasks alive and delivers results
    in batches. Touched only on the loop thread."""

    def __init__(self, deliver: Callable[[tuple[CallResult, ...]], None], call_timeout_s: float) -> None:
        self._deliver = deliver
        self._call_timeout_s = call_timeout_s
        self._pending: list[CallResult] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, calls: list[tuple[int, Callable[[], Awaitable[Any]]]]) -> None:
        loop = asyncio.get_running_loop()
        for job_id, call in calls:
            task = loop.create_task(self._run(job_id, call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job_id: int, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            async with asyncio.timeout(self._call_timeout_s):
                value = await call()
            if isinstance(value, list):
                result = CallResult(job_id=job_id, positions=tuple(value))
            else:
                result = CallResult(job_id=job_id, order=value)
        except OrderRejected as exc:
            result = CallResult(job_id=job_id, error="rejected", message=str(exc))
        except RetryableError as exc:
            result = CallResult(job_id=job_id, error="retryable", message=str(exc), retry_after_s=exc.retry_after_s)
        except VenueBanned as exc:
            result = CallResult(job_id=job_id, error="banned", message=str(exc), ban_s=exc.ban_s)
        except OutcomeUnknown as exc:
            result = CallResult(job_id=job_id, error="unknown", message=str(exc))
        except TimeoutError:
            result = CallResult(job_id=job_id, error="unknown", message=f"no answer in {self._call_timeout_s}s")
        except Exception as exc:  # noqa: BLE001 - an adapter bug: the request may have gone out, so UNKNOWN
            result = CallResult(job_id=job_id, error="unknown", message=f"{type(exc).__name__}: {exc}")
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(result)

    def _flush(self) -> None:
        batch, self._pending = tuple(self._pending), []
        self._deliver(batch)
