"""The persistence actor's side on the I/O loop: its connection pool and the coroutines that write.

Everything here runs on the loop thread. Each write returns a result Struct (``BatchDone``, ``IntentsDone``)
that the actor receives as a message; nothing here touches the actor's state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from typing import Any, Literal

import asyncpg

from actors import persistence_sql
from adapters import database as db
from engine.clock import Clock
from engine.control import BatchDone, IntentsDone, RunWrite

# How batches reach the tables: "json" (the default, ``actors.persistence_sql``), or the older COPY into a
# staging table / executemany of ``adapters.database.write_rows`` (kept for comparison in the benchmarks;
# they write one batch at a time).
WriteMethod = Literal["json", "copy", "executemany"]


class PreviousBatchFailed(Exception):
    """The batch before this one did not commit, so this one rolled back: both go again, in order."""


class PersistenceIo:
    """The pool and the writes of one persistence actor (loop thread only)."""

    def __init__(
        self, *, dsn: str, pool_max_size: int, write_method: WriteMethod, durable_timeout_s: float, clock: Clock
    ) -> None:
        self._dsn = dsn
        self._clock = clock  # the older writers stamp a timeless event row with its time
        self._pool_max_size = pool_max_size
        self._write_method: WriteMethod = write_method
        self._durable_timeout_s = durable_timeout_s
        self._pool: asyncpg.Pool | None = None

    # -- writes ----------------------------------------------------------------------------------------------

    async def write_intents(self, seq: int, rows: list[Any]) -> IntentsDone:
        """Durable lane: one group commit, bounded by the durable timeout; every failure is a result."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._durable_timeout_s):
                pool = await self.get_pool()
                async with pool.acquire() as conn:
                    # An intent whose row already exists is a replay (a signal routed again after a restart):
                    # the order it stands for was already decided, so it must not be acted on twice.
                    existing = await conn.fetch(
                        "SELECT client_order_id, status FROM trades WHERE client_order_id = ANY($1::text[])",
                        [row.client_order_id for row in rows],
                    )
                    poison = await self._write_with_bisect(conn, rows, intents=True)
                    if poison:
                        await db.write_dead_letters(conn, poison)
        except Exception as exc:  # noqa: BLE001 - every failure becomes durable=False
            return IntentsDone(seq, error=exc)
        return IntentsDone(
            seq,
            poison=tuple(poison),
            existing={r["client_order_id"]: r["status"] for r in existing},
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

    async def write_batch(
        self, seq: int, rows: list[Any], previous: concurrent.futures.Future[BatchDone] | None = None
    ) -> BatchDone:
        """Batched lane: write ``rows`` in one transaction (bisecting out rows the schema rejects). With
        ``previous`` (the write of the batch before, still in flight), commit only once that one has committed;
        if it did not, roll back and report ``PreviousBatchFailed``."""
        started = time.perf_counter()

        async def after_previous() -> None:
            # Runs inside our transaction, which holds locks on our own keys only (none shared with previous).
            if previous is not None:
                await asyncio.wait([asyncio.wrap_future(previous)])
                if previous.cancelled() or previous.exception() or previous.result().error is not None:
                    raise PreviousBatchFailed

        try:
            pool = await self.get_pool()
            async with pool.acquire() as conn:
                poison = await self._write_with_bisect(conn, rows, before_commit=after_previous)
                if poison:
                    await db.write_dead_letters(conn, poison)
        except Exception as exc:  # noqa: BLE001 - the actor keeps the batch and retries
            return BatchDone(seq, len(rows), error=exc)
        return BatchDone(seq, len(rows), tuple(poison), elapsed_ms=(time.perf_counter() - started) * 1000)

    async def run_write(self, message: RunWrite) -> None:
        """A write that needs an answer (claiming signals, inserting an admin signal): run it in a
        transaction on our pool and complete the caller's future. It does not wait behind the batched lane."""
        if not message.future.set_running_or_notify_cancel():
            return  # the caller gave up before it started (``run_write``'s timeout): it must not run at all
        try:
            pool = await self.get_pool()
            async with pool.acquire() as conn, conn.transaction():
                result = await message.fn(conn)
        except BaseException as exc:
            if not message.future.done():
                message.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if not message.future.done():
            message.future.set_result(result)

    async def _write_with_bisect(
        self,
        conn: asyncpg.Connection,
        rows: list[Any],
        *,
        intents: bool = False,
        before_commit: persistence_sql.BeforeCommit | None = None,
    ) -> list[tuple[Any, str]]:
        if self._write_method == "json":
            return await persistence_sql.write_with_bisect(conn, rows, intents=intents, before_commit=before_commit)
        # The older writers have no hook inside their transaction: the actor sends them one batch at a time.
        use_copy = self._write_method == "copy"
        stored_at = self._clock.now()
        return await db.write_with_bisect(conn, rows, use_copy=use_copy, intents=intents, stored_at=stored_at)

    # -- pool ------------------------------------------------------------------------------------------------

    async def get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            # Both lanes may race here on the loop: only one pool survives, the other is closed.
            pool = await db.connect_pool(self._dsn, min_size=1, max_size=self._pool_max_size)
            if self._pool is None:
                self._pool = pool
            else:
                await pool.close()
        return self._pool

    async def warm(self) -> None:
        with contextlib.suppress(Exception):  # the first write reports it if the server is down
            await self.get_pool()

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                async with asyncio.timeout(3):
                    await pool.close()
            except TimeoutError:
                pool.terminate()
