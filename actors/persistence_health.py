"""What the persistence actor reports: its counters and gauges (``stats()``), the database going away and coming
back, dead-lettered rows and the backlog's high-water mark — the facts an operator watches and alerts on.

One ``PersistenceHealth`` object, owned by ``PersistenceActor`` (``actors/persistence.py``), which tells it what
happened (a write failed or succeeded, a batch flushed, the queue's depth) and asks it for ``stats``. Runs on the
actor's thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapters import database as db
from engine.clock import Clock
from engine.logs import get_logger

log = get_logger(__name__)


class PersistenceHealth:
    """Counters, gauges and health log events of one ``PersistenceActor`` (see the module docstring)."""

    def __init__(self, *, high_water_rows: int, on_backlog: Callable[[bool], None] | None, clock: Clock) -> None:
        """``on_backlog(True)`` is called when the write queue reaches ``high_water_rows``, ``on_backlog(False)``
        when it is back under half of it. ``clock`` times how long the database was away."""
        self._high_water_rows = high_water_rows
        self._on_backlog = on_backlog
        self._clock = clock
        self._above_high_water = False
        self._db_reachable = True
        self._down_since = 0.0
        self.counters = {
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

    def stats(self, *, queue_depth: int, batches_in_flight: int, durable_pending: int) -> dict[str, Any]:
        """The counters with the actor's gauges (what it holds now)."""
        flushes = self.counters["flushes"]
        return {
            **self.counters,
            "queue_depth": queue_depth,
            "batches_in_flight": batches_in_flight,
            "durable_pending": durable_pending,
            "last_flush_ms": round(self._last_flush_ms, 3),
            "avg_flush_ms": round(self._flush_ms_total / flushes, 3) if flushes else 0.0,
            "db_reachable": self._db_reachable,
        }

    def flushed(self, *, rows: int, elapsed_ms: float) -> None:
        """A batch of the batched lane committed: ``rows`` written (dead letters not counted)."""
        self.counters["rows_written"] += rows
        self.counters["flushes"] += 1
        self._last_flush_ms = elapsed_ms
        self._flush_ms_total += elapsed_ms

    def dead_lettered(self, poison: tuple[tuple[Any, str], ...]) -> None:
        for row, error in poison:
            self.counters["dead_letters"] += 1
            spec = db.ROW_SPECS[type(row)]
            key = spec.natural_key(row)
            log.error("persistence.dead_letter", kind=type(row).__name__, key=key, error=error)

    def failed(self, exc: BaseException, *, lane: str, rows: int = 0) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if not db.is_connection_error(exc):
            log.error("persistence.write_failed", lane=lane, rows=rows, error=error)
        elif self._db_reachable:
            self._db_reachable = False
            self._down_since = self._clock.monotonic()
            log.warning("database.unreachable", lane=lane, error=error)

    def succeeded(self) -> None:
        if not self._db_reachable:
            self._db_reachable = True
            log.info("database.recovered", down_ms=round((self._clock.monotonic() - self._down_since) * 1000))

    def check_high_water(self, depth: int) -> None:
        if not self._above_high_water and depth >= self._high_water_rows:
            self._above_high_water = True
            log.warning("backlog.high_water", queue_depth=depth, high_water_rows=self._high_water_rows)
            if self._on_backlog is not None:
                self._on_backlog(True)
        elif self._above_high_water and depth < self._high_water_rows // 2:
            # Half the mark, not the mark itself, so a backlog hovering around it does not flap the logs.
            self._above_high_water = False
            log.info("backlog.recovered", queue_depth=depth)
            if self._on_backlog is not None:
                self._on_backlog(False)
