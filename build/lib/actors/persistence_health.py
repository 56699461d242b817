"""What the persistence actor reports: its counters and gauges (``stats()``), the database going away and coming
back, dead-lettered rows and the backlog's high-water mark — the facts an operator watches and alerts on.

A mixin of ``PersistenceActor`` (``actors/persistence.py``), whose ``__init__`` sets the attributes declared
below; the lanes themselves stay there. Runs on the actor's thread: the notes inside its handlers, ``stats()``
when asked through a proxy.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from adapters import database as db
from engine.logs import get_logger
from engine.messages import PersistIntent

if TYPE_CHECKING:
    from actors.persistence import _Batch

log = get_logger(__name__)


class PersistenceHealth:
    """Counters, gauges and health log events of ``PersistenceActor`` (see the module docstring)."""

    _queue: deque[Any]
    _batches: deque[_Batch]
    _intents: list[PersistIntent]
    _intents_inflight: list[PersistIntent] | None
    _high_water_rows: int
    _above_high_water: bool
    _on_backlog: Callable[[bool], None] | None
    _db_reachable: bool
    _down_since: float
    _stats: dict[str, int]
    _last_flush_ms: float
    _flush_ms_total: float

    def stats(self) -> dict[str, Any]:
        """Counters and gauges; ask from anywhere (``proxy.stats().get()``)."""
        flushes = self._stats["flushes"]
        return {
            **self._stats,
            "queue_depth": self._queue_depth(),
            "batches_in_flight": sum(1 for b in self._batches if b.future is not None),
            "durable_pending": len(self._intents) + len(self._intents_inflight or ()),
            "last_flush_ms": round(self._last_flush_ms, 3),
            "avg_flush_ms": round(self._flush_ms_total / flushes, 3) if flushes else 0.0,
            "db_reachable": self._db_reachable,
        }

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
            if self._on_backlog is not None:
                self._on_backlog(True)
        elif self._above_high_water and depth < self._high_water_rows // 2:
            # Half the mark, not the mark itself, so a backlog hovering around it does not flap the logs.
            self._above_high_water = False
            log.info("backlog.recovered", queue_depth=depth)
            if self._on_backlog is not None:
                self._on_backlog(False)

    def _queue_depth(self) -> int:
        return len(self._queue) + sum(len(b.rows) for b in self._batches)
