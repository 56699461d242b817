"""Periodic jobs (stats line, reconciliation, day roll, snapshots) on the engine's clock.

Each job has a daemon thread of its own, because a job may block (asks with timeouts, a snapshot round): the
clock's timer only wakes that thread (sets an event, cheap and thread-safe), and the thread re-arms the timer
after each run, so the next run is ``interval_s`` after the end of this one. With a ``FakeClock`` a test moves the
clock past a job's time and then waits for what the job does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from engine.clock import Clock, TimerHandle
from engine.logs import get_logger

log = get_logger(__name__)


class PeriodicJob:
    """Runs ``job`` every ``interval_s`` of ``clock`` time until ``stop``."""

    def __init__(self, name: str, interval_s: float, job: Callable[[], None], clock: Clock) -> None:
        self.name = name
        self._interval_s = interval_s
        self._job = job
        self._clock = clock
        self._due = threading.Event()
        self._stopping = False
        self._handle: TimerHandle | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._arm()

    def stop(self) -> None:
        """No run starts after this; one in progress finishes on its own (its thread is a daemon)."""
        self._stopping = True
        if self._handle is not None:
            self._handle.cancel()
        self._due.set()

    def _arm(self) -> None:
        if not self._stopping:
            self._handle = self._clock.call_later(self._interval_s, self._due.set)

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._stopping:
                return
            try:
                self._job()
            except Exception as exc:  # noqa: BLE001 - a job failing must not stop its timer
                log.error("engine.timer_failed", timer=self.name, error=f"{type(exc).__name__}: {exc}")
            self._arm()
