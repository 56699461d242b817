"""The persistence actor: the only writer of PostgreSQL.

Two lanes:

* **Durable** (``PersistIntent``): PENDING trades that must be committed before their order is sent. Intents
  arriving within ``durable_window_ms`` (or until ``durable_max_rows``) share one transaction (group commit);
  while one commits, the next group gathers. Each requester gets exactly one ``IntentAck``.
  **Failure policy: fail fast.** One attempt, bounded by ``durable_timeout_ms``; if it fails (server down,
  connection cut, timeout) every intent of the group is answered ``durable=False`` with the error and no order
  is sent. Intents are never retried: a follower must not wait, and the next signal is a fresh attempt. A row
  the schema rejects is answered ``durable=False`` alone (the group is bisected) and goes to ``dead_letters``.
* **Batched** (``PersistRows``): state and facts, upserted by natural key at most ``flush_interval_ms`` after
  they arrive or as soon as ``flush_max_rows`` are queued, one batch in flight at a time (so batches land in
  order). A failed batch is kept and retried with backoff until it is written; rows the schema rejects are
  bisected out to ``dead_letters``.

Threads: handlers run on this actor's thread; SQL runs on the I/O loop (``IoLoop.submit``), whose completion
callback only ``tell``s a message back here. ``flush()`` and ``on_stop`` are the exceptions: they wait for the
loop (shutdown, composition root and tests only).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

import asyncpg
import msgspec
import pykka

from actors.persistence_writes import RunWrite
from adapters import database as db
from adapters.ioloop import IoLoop
from engine.logs import get_logger
from engine.messages import IntentAck, PersistIntent, PersistRows

log = get_logger(__name__)


# Messages this actor sends itself (from the loop thread); they never leave this module.
class _FlushDue(msgspec.Struct, frozen=True):
    pass


class _DurableDue(msgspec.Struct, frozen=True):
    pass


class _RetryDue(msgspec.Struct, frozen=True):
    seq: int


class _BatchDone(msgspec.Struct, frozen=True):
    seq: int
    rows: int
    poison: tuple[tuple[Any, str], ...] = ()
    error: BaseException | None = None
    elapsed_ms: float = 0.0


class _IntentsDone(msgspec.Struct, frozen=True):
    seq: int
    poison: tuple[tuple[Any, str], ...] = ()
    existing: frozenset[str] = frozenset()  # client order ids that had a row before this commit (replays)
    error: BaseException | None = None
    elapsed_ms: float = 0.0


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)  # a late result for a stopped actor has nowhere to go


class PersistenceActor(pykka.ThreadingActor):
    """Group commit for intents, batched idempotent upserts for everything else (see the module doc)."""

    def __init__(
        self,
        *,
        io_loop: IoLoop,
        dsn: str,
        durable_window_ms: float = 2,
        durable_max_rows: int = 2000,
        durable_timeout_ms: float = 1000,
        flush_interval_ms: float = 50,
        flush_max_rows: int = 5000,
        queue_max_rows: int = 500_000,
        high_water_rows: int = 100_000,
        pool_max_size: int = 4,
        retry_initial_ms: float = 100,
        retry_max_ms: float = 5000,
        stop_flush_timeout_s: float = 10.0,
        use_copy: bool = True,
    ) -> None:
        super().__init__()
        self._io = io_loop
        self._dsn = dsn
        self._durable_window_s = durable_window_ms / 1000
        self._durable_max_rows = durable_max_rows
        self._durable_timeout_s = durable_timeout_ms / 1000
        self._flush_interval_s = flush_interval_ms / 1000
        self._flush_max_rows = flush_max_rows
        self._queue_max_rows = queue_max_rows
        self._high_water_rows = high_water_rows
        # One connection per lane at least, so intents never wait behind a batch.
        self._pool_max_size = max(2, pool_max_size)
        self._retry_initial_s = retry_initial_ms / 1000
        self._retry_max_s = retry_max_ms / 1000
        self._stop_flush_timeout_s = stop_flush_timeout_s
        self._use_copy = use_copy
        self._pool: asyncpg.Pool | None = None  # touched on the loop thread only

        self._queue: deque[Any] = deque()
        self._batch: list[Any] | None = None  # in flight or waiting for its retry
        self._batch_seq = 0
        self._batch_future: concurrent.futures.Future[_BatchDone] | None = None
        self._retry_s = self._retry_initial_s
        self._flush_armed = False
        self._flush_due = False
        self._intents: list[PersistIntent] = []
        self._intents_inflight: list[PersistIntent] | None = None
        self._intents_seq = 0
        self._intents_future: concurrent.futures.Future[_IntentsDone] | None = None
        self._durable_armed = False
        self._above_high_water = False
        self._db_reachable = True
        self._down_since = 0.0
        self._stats = {
            "rows_written": 0,
            "intents_written": 0,
            "flushes": 0,
            "durable_commits": 0,
            "dead_letters": 0,
            "retries": 0,
            "rows_dropped": 0,
        }
        self._last_flush_ms = 0.0
        self._flush_ms_total = 0.0

    # -- lifecycle -------------------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._io.submit(self._warm_pool())
        log.info(
            "persistence.started",
            durable_window_ms=self._durable_window_s * 1000,
            flush_interval_ms=self._flush_interval_s * 1000,
            flush_max_rows=self._flush_max_rows,
            use_copy=self._use_copy,
        )

    def on_stop(self) -> None:
        # No new orders while stopping: intents not yet committing are refused, then everything else flushes.
        for intent in self._intents:
            self._ack(intent, durable=False, error="persistence stopping")
        self._intents = []
        if not self.flush(timeout_s=self._stop_flush_timeout_s):
            log.error("persistence.stop_unflushed", queue_depth=self._queue_depth())
        with contextlib.suppress(Exception):
            self._io.run(self._close_pool(), timeout_s=5)
        log.info("persistence.stopped", **self.stats())

    # -- public, ask-able ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and gauges; ask from anywhere (``proxy.stats().get()``)."""
        flushes = self._stats["flushes"]
        return {
            **self._stats,
            "queue_depth": self._queue_depth(),
            "durable_pending": len(self._intents) + len(self._intents_inflight or ()),
            "last_flush_ms": round(self._last_flush_ms, 3),
            "avg_flush_ms": round(self._flush_ms_total / flushes, 3) if flushes else 0.0,
            "db_reachable": self._db_reachable,
        }

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Write everything queued (both lanes) and return ``True``; ``False`` if ``timeout_s`` ran out first
        (the database stayed down). Blocks this actor's thread meanwhile: for shutdown, the composition
        root and tests (``proxy.flush().get()``), never on the hot path."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self._intents_future is not None:
                    self._on_intents_done(self._intents_future.result(deadline - time.monotonic()))
                elif self._intents:
                    self._start_durable()
                elif self._batch_future is not None:
                    self._on_batch_done(self._batch_future.result(deadline - time.monotonic()))
                elif self._batch is not None or self._queue:
                    if self._batch is not None:  # kept after a failed attempt: back off first
                        time.sleep(min(self._retry_s, max(0.0, deadline - time.monotonic())))
                    self._start_batch()
                else:
                    return True
                if time.monotonic() >= deadline:
                    raise TimeoutError
        except (TimeoutError, concurrent.futures.TimeoutError):
            log.warning("persistence.flush_timeout", queue_depth=self._queue_depth(), timeout_s=timeout_s)
            return False

    # -- messages --------------------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case PersistIntent():
                self._on_intent(message)
            case PersistRows():
                self._on_rows(message.rows)
            case _FlushDue():
                self._flush_armed = False
                if self._batch is None:
                    self._start_batch()
                else:
                    self._flush_due = True
            case _DurableDue():
                self._durable_armed = False
                if self._intents_inflight is None and self._intents:
                    self._start_durable()
            case _BatchDone():
                self._on_batch_done(message)
            case _IntentsDone():
                self._on_intents_done(message)
            case _RetryDue(seq=seq) if seq == self._batch_seq and self._batch_future is None:
                self._start_batch()
            case _RetryDue():
                pass
            case RunWrite():
                self._run_write(message)
            case _:
                log.warning("persistence.unknown_message", type=type(message).__name__)
        return None

    # -- ad-hoc writes ---------------------------------------------------------------------------------------

    def _run_write(self, message: RunWrite) -> None:
        """A write that needs an answer (claiming signals, inserting an admin signal): run it in a
        transaction on our pool and complete the caller's future. It does not wait behind the batched lane."""

        async def run() -> None:
            try:
                pool = await self._get_pool()
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

        self._io.submit(run())

    # -- durable lane ----------------------------------------------------------------------------------------

    def _on_intent(self, intent: PersistIntent) -> None:
        self._intents.append(intent)
        if self._intents_inflight is not None:
            return  # the group gathers while the previous one commits
        if len(self._intents) >= self._durable_max_rows:
            self._start_durable()
        elif not self._durable_armed:
            self._durable_armed = True
            self._after(self._durable_window_s, _DurableDue())

    def _start_durable(self) -> None:
        n = self._durable_max_rows
        group, self._intents = self._intents[:n], self._intents[n:]
        self._intents_inflight = group
        self._intents_seq += 1
        self._intents_future = self._submit(self._write_intents(self._intents_seq, [i.row for i in group]))

    async def _write_intents(self, seq: int, rows: list[Any]) -> _IntentsDone:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._durable_timeout_s):
                pool = await self._get_pool()
                async with pool.acquire() as conn:
                    # An intent whose row already exists is a replay (a signal routed again after a restart):
                    # the order it stands for was already decided, so it must not be acted on twice.
                    existing = await conn.fetch(
                        "SELECT client_order_id FROM trades WHERE client_order_id = ANY($1::text[])",
                        [row.client_order_id for row in rows],
                    )
                    poison = await db.write_with_bisect(conn, rows, use_copy=self._use_copy, intents=True)
                    if poison:
                        await db.write_dead_letters(conn, poison)
        except Exception as exc:  # noqa: BLE001 - every failure becomes durable=False
            return _IntentsDone(seq, error=exc)
        return _IntentsDone(
            seq,
            poison=tuple(poison),
            existing=frozenset(r["client_order_id"] for r in existing),
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

    def _on_intents_done(self, done: _IntentsDone) -> None:
        if done.seq != self._intents_seq or self._intents_inflight is None:
            return  # already handled by flush()
        group, self._intents_inflight, self._intents_future = self._intents_inflight, None, None
        if done.error is not None:
            error = f"{type(done.error).__name__}: {done.error}"
            self._note_failure(done.error, lane="durable")
            for intent in group:
                self._ack(intent, durable=False, error=error)
        else:
            self._note_success()
            rejected = {row.client_order_id: error for row, error in done.poison}
            self._dead_lettered(done.poison)
            for intent in group:
                cid = intent.row.client_order_id
                if cid in done.existing:
                    self._ack(intent, durable=False, error="intent already exists", duplicate=True)
                else:
                    self._ack(intent, durable=cid not in rejected, error=rejected.get(cid))
            self._stats["durable_commits"] += 1
            self._stats["intents_written"] += len(group) - len(rejected)
        if self._intents:
            self._start_durable()  # they waited at least one commit already: no window

    def _ack(self, intent: PersistIntent, *, durable: bool, error: str | None = None, duplicate: bool = False) -> None:
        if intent.reply_to is not None:
            ack = IntentAck(
                client_order_id=intent.row.client_order_id, durable=durable, error=error, duplicate=duplicate
            )
            _tell(intent.reply_to, ack)

    # -- batched lane ----------------------------------------------------------------------------------------

    def _on_rows(self, rows: tuple[Any, ...]) -> None:
        room = self._queue_max_rows - self._queue_depth()
        if len(rows) > room:
            # Newer versions supersede older ones: collapsing the backlog usually makes room without loss.
            self._queue = deque(db.collapse(self._queue))
            room = self._queue_max_rows - self._queue_depth()
        if len(rows) > room:
            dropped = len(rows) - max(room, 0)
            self._stats["rows_dropped"] += dropped
            log.error("backlog.overflow", dropped=dropped, queue_max_rows=self._queue_max_rows)
            rows = rows[: max(room, 0)]
        self._queue.extend(rows)
        self._check_high_water()
        if self._batch is None and len(self._queue) >= self._flush_max_rows:
            self._start_batch()
        self._arm_flush()

    def _arm_flush(self) -> None:
        """Whatever is queued gets written within the flush interval. Called after every change of the lane: a
        size-triggered batch leaves a remainder behind, and nothing else would come back for it."""
        if self._queue and not self._flush_armed:
            self._flush_armed = True
            self._after(self._flush_interval_s, _FlushDue())

    def _start_batch(self) -> None:
        self._flush_due = False
        if self._batch is None:
            if not self._queue:
                return
            n = min(len(self._queue), self._flush_max_rows)
            self._batch = db.collapse(self._queue.popleft() for _ in range(n))
        self._batch_seq += 1
        self._batch_future = self._submit(self._write_batch(self._batch_seq, self._batch))

    async def _write_batch(self, seq: int, rows: list[Any]) -> _BatchDone:
        started = time.perf_counter()
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                poison = await db.write_with_bisect(conn, rows, use_copy=self._use_copy)
                if poison:
                    await db.write_dead_letters(conn, poison)
        except Exception as exc:  # noqa: BLE001 - the actor keeps the batch and retries
            return _BatchDone(seq, len(rows), error=exc)
        return _BatchDone(seq, len(rows), tuple(poison), elapsed_ms=(time.perf_counter() - started) * 1000)

    def _on_batch_done(self, done: _BatchDone) -> None:
        if done.seq != self._batch_seq or self._batch_future is None:
            return  # already handled by flush()
        self._batch_future = None
        if done.error is not None:
            # Unknown commit outcome or no write at all: the same rows go again; upserts make that harmless.
            self._note_failure(done.error, lane="batched", rows=done.rows)
            self._stats["retries"] += 1
            delay = self._retry_s * random.uniform(0.8, 1.2)
            self._retry_s = min(self._retry_s * 2, self._retry_max_s)
            self._after(delay, _RetryDue(self._batch_seq))
            return
        self._note_success()
        self._batch = None
        self._retry_s = self._retry_initial_s
        self._dead_lettered(done.poison)
        self._stats["rows_written"] += done.rows - len(done.poison)
        self._stats["flushes"] += 1
        self._last_flush_ms = done.elapsed_ms
        self._flush_ms_total += done.elapsed_ms
        self._check_high_water()
        if self._queue and (self._flush_due or len(self._queue) >= self._flush_max_rows):
            self._start_batch()
        self._arm_flush()

    # -- shared ----------------------------------------------------------------------------------------------

    def _dead_lettered(self, poison: tuple[tuple[Any, str], ...]) -> None:
        for row, error in poison:
            self._stats["dead_letters"] += 1
            spec = db.ROW_SPECS[type(row)]
            key = spec.natural_key(row)
            log.error("persistence.dead_letter", kind=type(row).__name__, key=key, error=error)

    def _note_failure(self, exc: BaseException, *, lane: str, rows: int = 0) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if not db.is_connection_error(exc):
            log.error("persistence.write_failed", lane=lane, rows=rows, error=error)
        elif self._db_reachable:
            self._db_reachable = False
            self._down_since = time.monotonic()
            log.warning("database.unreachable", lane=lane, error=error)

    def _note_success(self) -> None:
        if not self._db_reachable:
            self._db_reachable = True
            log.info("database.recovered", down_ms=round((time.monotonic() - self._down_since) * 1000))

    def _check_high_water(self) -> None:
        depth = self._queue_depth()
        if not self._above_high_water and depth >= self._high_water_rows:
            self._above_high_water = True
            log.warning("backlog.high_water", queue_depth=depth, high_water_rows=self._high_water_rows)
        elif self._above_high_water and depth < self._high_water_rows // 2:
            # Half the mark, not the mark itself, so a backlog hovering around it does not flap the logs.
            self._above_high_water = False
            log.info("backlog.recovered", queue_depth=depth)

    def _queue_depth(self) -> int:
        return len(self._queue) + len(self._batch or ())

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        ref = self.actor_ref

        def on_done(future: concurrent.futures.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                _tell(ref, future.result())

        return self._io.submit(coro, on_done)

    def _after(self, delay_s: float, message: Any) -> None:
        ref = self.actor_ref
        self._io.call_soon(lambda: self._io.loop.call_later(delay_s, _tell, ref, message))

    # -- pool (loop thread) ----------------------------------------------------------------------------------

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            # Both lanes may race here on the loop: only one pool survives, the other is closed.
            pool = await db.connect_pool(self._dsn, min_size=1, max_size=self._pool_max_size)
            if self._pool is None:
                self._pool = pool
            else:
                await pool.close()
        return self._pool

    async def _warm_pool(self) -> None:
        with contextlib.suppress(Exception):  # the first write reports it if the server is down
            await self._get_pool()

    async def _close_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                async with asyncio.timeout(3):
                    await pool.close()
            except TimeoutError:
                pool.terminate()
