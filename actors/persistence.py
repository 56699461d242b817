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
  they arrive or as soon as ``flush_max_rows`` are queued. Up to ``batches_in_flight`` batches are written at
  once on their own connections, but they commit in the order they were formed (see "batched lane" below),
  so batches land in order. A failed batch is kept and retried with backoff until it is written; rows the
  schema rejects are bisected out to ``dead_letters``.

Threads: handlers run on this actor's thread; SQL runs on the I/O loop (``actors.persistence_io``, statements
in ``actors.persistence_sql``), whose completion callback only ``tell``s a message back here. ``flush()`` and
``on_stop`` are the exceptions: they wait for the loop (shutdown, composition root and tests only). Counters,
``stats()`` and the health log events (database down/up, dead letters, backlog high water) are kept by the
``PersistenceHealth`` object it owns (``actors.persistence_health``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Set
from typing import Any

import pykka

from actors import persistence_sql
from actors.persistence_health import PersistenceHealth
from actors.persistence_io import PersistenceIo, PreviousBatchFailed, WriteMethod
from adapters import database as db
from adapters.ioloop import IoLoop
from engine.backoff import backoff_s
from engine.clock import Clock
from engine.config import DatabaseConfig, PersistenceConfig
from engine.control import BatchDone, DurableDue, FlushDue, IntentsDone, RetryDue, RunWrite
from engine.logs import get_logger
from engine.messages import IntentAck, PersistIntent, PersistRows
from engine.runtime import SingletonActor

log = get_logger(__name__)

RETRY_INITIAL_MS = 100.0  # the first backoff after a failed batch ...
RETRY_MAX_MS = 5000.0  # ... doubling up to this
STOP_FLUSH_TIMEOUT_S = 10.0  # how long stopping waits for the queues to be written

_JITTER = random.Random()  # spreads the retries of a failed batch (engine.backoff)


class _Batch:
    """A batch of the batched lane (actor thread only): collapsed rows, their keys, and its write if in flight."""

    __slots__ = ("blocked_by", "future", "keys", "rows", "seq")

    def __init__(self, rows: list[Any], keys: Set[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.keys = keys
        self.seq = 0
        self.future: concurrent.futures.Future[BatchDone] | None = None
        self.blocked_by: tuple[int, ...] | None = None  # the in-flight writes it was found to share a key with


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)  # a late result for a stopped actor has nowhere to go


class PersistenceActor(SingletonActor):
    """Group commit for intents, batched idempotent upserts for everything else (see the module doc)."""

    def __init__(
        self,
        *,
        io_loop: IoLoop,
        dsn: str,
        config: PersistenceConfig,
        database: DatabaseConfig,
        clock: Clock,
        on_backlog: Callable[[bool], None] | None = None,
        write_method: WriteMethod = "json",
        retry_initial_ms: float = RETRY_INITIAL_MS,
        retry_max_ms: float = RETRY_MAX_MS,
        stop_flush_timeout_s: float = STOP_FLUSH_TIMEOUT_S,
    ) -> None:
        """``config`` whole, and from ``database`` its ``pool_max_size``. ``clock``: the engine's; the group-commit
        window, the flush interval and the retry backoff are its timers (a test on a ``FakeClock`` advances it, or
        nothing is written). ``on_backlog(True)`` is called (on this
        actor's thread) when the write queue reaches ``config.high_water_rows``, ``on_backlog(False)`` when it is
        back under half of it: the router holds signals meanwhile, so an overloaded engine does not queue rows
        towards ``queue_max_rows`` (where they are dropped). ``write_method`` other than "json" is for the
        benchmarks; the retry and stop timings are not configurable (tests shorten them)."""
        super().__init__()
        self._io = io_loop
        self._clock = clock
        self._durable_window_s = config.durable_window_ms / 1000
        self._durable_max_rows = config.durable_max_rows
        self._flush_interval_s = config.flush_interval_ms / 1000
        self._flush_max_rows = config.flush_max_rows
        self._queue_max_rows = config.queue_max_rows
        self._retry_initial_s = retry_initial_ms / 1000
        self._retry_max_s = retry_max_ms / 1000
        self._stop_flush_timeout_s = stop_flush_timeout_s
        self._write_method: WriteMethod = write_method
        # Ordered commits need the "json" writer's hook inside the transaction; the others go one at a time.
        self._batches_in_flight = max(1, config.batches_in_flight) if write_method == "json" else 1
        self._db = PersistenceIo(  # touched on the loop thread only
            dsn=dsn,
            # A connection for every batch in flight and one more, so intents never wait behind a batch.
            pool_max_size=max(self._batches_in_flight + 1, database.pool_max_size),
            write_method=write_method,
            durable_timeout_s=config.durable_timeout_ms / 1000,
            clock=clock,
        )
        self._health = PersistenceHealth(high_water_rows=config.high_water_rows, on_backlog=on_backlog, clock=clock)

        self._queue: deque[Any] = deque()
        self._batches: deque[_Batch] = deque()  # formed, in order: in flight (a prefix), then waiting
        self._batch_seq = 0
        self._failed = False  # a batch failed: settle what is in flight, then back off
        self._retry_token = 0
        self._retry_due_token = 0  # non-zero while backing off
        self._retry_attempts = 0  # failed attempts in a row: the next backoff step
        self._flush_armed = False
        self._flush_due = False
        self._intents: list[PersistIntent] = []
        self._intents_inflight: list[PersistIntent] | None = None
        self._intents_seq = 0
        self._intents_future: concurrent.futures.Future[IntentsDone] | None = None
        self._durable_armed = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._io.submit(self._db.warm())
        log.info(
            "persistence.started",
            durable_window_ms=self._durable_window_s * 1000,
            flush_interval_ms=self._flush_interval_s * 1000,
            flush_max_rows=self._flush_max_rows,
            write_method=self._write_method,
            batches_in_flight=self._batches_in_flight,
        )

    def on_stop(self) -> None:
        # No new orders while stopping: intents not yet committing are refused, then everything else flushes.
        for intent in self._intents:
            self._ack(intent, durable=False, error="persistence stopping")
        self._intents = []
        if not self.flush(timeout_s=self._stop_flush_timeout_s):
            log.error("persistence.stop_unflushed", queue_depth=self._queue_depth())
        with contextlib.suppress(Exception):
            self._io.run(self._db.close(), timeout_s=5)
        log.info("persistence.stopped", **self.stats())

    # -- public, ask-able ------------------------------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Write everything queued (both lanes) and return ``True``; ``False`` if ``timeout_s`` ran out first
        (the database stayed down). Blocks this actor's thread meanwhile: for shutdown, the composition
        root and tests (``proxy.flush().get()``), never on the hot path. Its timeout and its pause after a failed
        attempt are real time, not the engine's clock: they bound how long a thread is blocked."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self._intents_future is not None:
                    self._on_intents_done(self._intents_future.result(deadline - time.monotonic()))
                elif self._intents:
                    self._start_durable()
                elif (first := next((b.future for b in self._batches if b.future), None)) is not None:
                    self._on_batch_done(first.result(deadline - time.monotonic()))
                elif self._batches or self._queue:
                    if self._retry_due_token or self._failed:  # after a failed attempt: back off first
                        pause_s = backoff_s(
                            self._retry_attempts + 1, base_s=self._retry_initial_s, cap_s=self._retry_max_s, rng=_JITTER
                        )
                        time.sleep(min(pause_s, max(0.0, deadline - time.monotonic())))
                        self._retry_due_token, self._failed = 0, False
                    self._flush_due = True
                    self._pump()
                else:
                    return True
                if time.monotonic() >= deadline:
                    raise TimeoutError
        except (TimeoutError, concurrent.futures.TimeoutError):
            log.warning("persistence.flush_timeout", queue_depth=self._queue_depth(), timeout_s=timeout_s)
            return False

    def stats(self) -> dict[str, Any]:
        """Counters and gauges; ask from anywhere (``proxy.stats().get()``)."""
        return self._health.stats(
            queue_depth=self._queue_depth(),
            batches_in_flight=sum(1 for b in self._batches if b.future is not None),
            durable_pending=len(self._intents) + len(self._intents_inflight or ()),
        )

    def _queue_depth(self) -> int:
        return len(self._queue) + sum(len(b.rows) for b in self._batches)

    # -- messages --------------------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case PersistIntent():
                self._on_intent(message)
            case PersistRows():
                self._on_rows(message.rows)
            case FlushDue():
                self._flush_armed = False
                self._flush_due = True
                self._pump()
                self._arm_flush()
            case DurableDue():
                self._durable_armed = False
                if self._intents_inflight is None and self._intents:
                    self._start_durable()
            case BatchDone():
                self._on_batch_done(message)
            case IntentsDone():
                self._on_intents_done(message)
            case RetryDue(token=token):
                self._on_retry_due(token)
            case RunWrite():
                self._run_write(message)
            case _:
                log.warning("persistence.unknown_message", type=type(message).__name__)
        return None

    # -- ad-hoc writes ---------------------------------------------------------------------------------------

    def _run_write(self, message: RunWrite) -> None:
        """A write that needs an answer: run on our pool, not behind the batched lane (see ``PersistenceIo``)."""
        self._io.submit(self._db.run_write(message))

    # -- durable lane ----------------------------------------------------------------------------------------

    def _on_intent(self, intent: PersistIntent) -> None:
        self._intents.append(intent)
        if self._intents_inflight is not None:
            return  # the group gathers while the previous one commits
        if len(self._intents) >= self._durable_max_rows:
            self._start_durable()
        elif not self._durable_armed:
            self._durable_armed = True
            self._after(self._durable_window_s, DurableDue())

    def _start_durable(self) -> None:
        n = self._durable_max_rows
        group, self._intents = self._intents[:n], self._intents[n:]
        self._intents_inflight = group
        self._intents_seq += 1
        self._intents_future = self._submit(self._db.write_intents(self._intents_seq, [i.row for i in group]))

    def _on_intents_done(self, done: IntentsDone) -> None:
        if done.seq != self._intents_seq or self._intents_inflight is None:
            return  # already handled by flush()
        group, self._intents_inflight, self._intents_future = self._intents_inflight, None, None
        if done.error is not None:
            error = f"{type(done.error).__name__}: {done.error}"
            self._health.failed(done.error, lane="durable")
            for intent in group:
                self._ack(intent, durable=False, error=error)
        else:
            self._health.succeeded()
            rejected = {row.client_order_id: error for row, error in done.poison}
            self._health.dead_lettered(done.poison)
            for intent in group:
                cid = intent.row.client_order_id
                if cid in done.existing:
                    self._ack(intent, durable=False, error="intent already exists", existing=done.existing[cid])
                else:
                    self._ack(intent, durable=cid not in rejected, error=rejected.get(cid))
            self._health.counters["durable_commits"] += 1
            self._health.counters["intents_written"] += len(group) - len(rejected)
        if self._intents:
            self._start_durable()  # they waited at least one commit already: no window

    def _ack(
        self, intent: PersistIntent, *, durable: bool, error: str | None = None, existing: str | None = None
    ) -> None:
        if intent.reply_to is not None:
            ack = IntentAck(
                client_order_id=intent.row.client_order_id,
                durable=durable,
                error=error,
                duplicate=existing is not None,
                existing_status=existing,
            )
            _tell(intent.reply_to, ack)

    # -- batched lane ----------------------------------------------------------------------------------------
    #
    # Ordering: batches are formed from the queue in arrival order and commit in that order. Up to
    # ``batches_in_flight`` run at once on their own connections (the server's work on two cores instead of
    # one), but only batches with no natural key in common: a later batch never waits on a row lock of an
    # earlier one, and each one commits only after the one before it has committed (it waits inside its
    # transaction, see ``PersistenceIo.write_batch``). If one fails, the later ones roll back, and all of them
    # are retried in order after the backoff. So the tables always hold a prefix of the batches, as with one
    # at a time. (A waiting batch holds the locks of its own rows: an intent for one of them would wait too,
    # at worst until ``durable_timeout_ms``. Rows of a trade come after its intent's ack, so this does not
    # happen in the copy flow.)

    def _on_rows(self, rows: tuple[Any, ...]) -> None:
        room = self._queue_max_rows - self._queue_depth()
        if len(rows) > room:
            # Newer versions supersede older ones: collapsing the backlog usually makes room without loss.
            self._queue = deque(db.collapse(self._queue))
            room = self._queue_max_rows - self._queue_depth()
        if len(rows) > room:
            dropped = len(rows) - max(room, 0)
            self._health.counters["rows_dropped"] += dropped
            log.error("backlog.overflow", dropped=dropped, queue_max_rows=self._queue_max_rows)
            rows = rows[: max(room, 0)]
        self._queue.extend(rows)
        self._health.check_high_water(self._queue_depth())
        if len(self._queue) >= self._flush_max_rows:
            self._pump()
        self._arm_flush()

    def _arm_flush(self) -> None:
        """Whatever is queued gets written within the flush interval. Called after every change of the lane: a
        size-triggered batch leaves a remainder behind, and nothing else would come back for it."""
        if self._queue and not self._flush_armed:
            self._flush_armed = True
            self._after(self._flush_interval_s, FlushDue())

    def _pump(self) -> None:
        """Submit what may go now: formed batches first (in order), then new ones while the queue holds a full
        batch or a flush is due. Nothing goes while a failure is backing off."""
        if self._failed or self._retry_due_token:
            return
        while True:
            waiting = [b for b in self._batches if b.future is None]
            if waiting:
                if not self._submit_batch(waiting[0]):
                    return  # blocked by a shared key or no free slot: a completion pumps again
                continue
            if not self._queue or not (self._flush_due or len(self._queue) >= self._flush_max_rows):
                return
            if len(self._batches) >= self._batches_in_flight:
                return
            n = min(len(self._queue), self._flush_max_rows)
            latest = persistence_sql.collapse(self._queue.popleft() for _ in range(n))
            self._batches.append(_Batch(list(latest.values()), latest.keys()))
            if not self._queue:
                self._flush_due = False

    def _submit_batch(self, batch: _Batch) -> bool:
        in_flight = [b for b in self._batches if b.future is not None]
        if len(in_flight) >= self._batches_in_flight:
            return False
        # Comparing key sets costs ~0.5 ms for two full batches, and the pump runs on every PersistRows while a
        # backlog waits: compare again only once the writes in flight have changed.
        against = tuple(b.seq for b in in_flight)
        if batch.blocked_by == against:
            return False
        if any(not batch.keys.isdisjoint(b.keys) for b in in_flight):
            batch.blocked_by = against
            return False
        previous = in_flight[-1].future if in_flight else None
        self._batch_seq += 1
        batch.seq = self._batch_seq
        batch.future = self._submit(self._db.write_batch(batch.seq, batch.rows, previous))
        return True

    def _on_batch_done(self, done: BatchDone) -> None:
        batch = next((b for b in self._batches if b.future is not None and b.seq == done.seq), None)
        if batch is None:
            return  # already handled by flush()
        batch.future = None
        if done.error is not None:
            # Unknown commit outcome or no write at all: the same rows go again; upserts make that harmless.
            if not isinstance(done.error, PreviousBatchFailed):  # that one was reported already
                self._health.failed(done.error, lane="batched", rows=done.rows)
                self._health.counters["retries"] += 1
            self._failed = True
        else:
            self._health.succeeded()
            self._batches.remove(batch)
            self._health.dead_lettered(done.poison)
            self._health.flushed(rows=done.rows - len(done.poison), elapsed_ms=done.elapsed_ms)
            self._health.check_high_water(self._queue_depth())
        if self._failed:
            if not any(b.future is not None for b in self._batches):
                self._back_off()  # everything in flight has settled: retry from the first failed batch
            return
        self._retry_attempts = 0
        self._pump()
        self._arm_flush()

    def _back_off(self) -> None:
        self._failed = False
        self._retry_token += 1
        self._retry_due_token = self._retry_token
        self._retry_attempts += 1
        delay = backoff_s(self._retry_attempts, base_s=self._retry_initial_s, cap_s=self._retry_max_s, rng=_JITTER)
        self._after(delay, RetryDue(self._retry_token))

    def _on_retry_due(self, token: int) -> None:
        if token == self._retry_due_token:
            self._retry_due_token = 0
            self._pump()
            self._arm_flush()

    # -- shared ----------------------------------------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        ref = self.actor_ref

        def on_done(future: concurrent.futures.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                _tell(ref, future.result())

        return self._io.submit(coro, on_done)

    def _after(self, delay_s: float, message: Any) -> None:
        ref = self.actor_ref
        self._clock.call_later(delay_s, lambda: _tell(ref, message))
