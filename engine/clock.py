"""One clock for the whole engine: wall time, monotonic time and timers.

Every component that reads the time or arms a timer takes a ``Clock`` (the composition root hands the same object
to all of them), so a test can drive breaker windows, bans, backoff, staleness, snapshots and expiry by advancing
a ``FakeClock`` instead of sleeping.

- ``SystemClock``: real time. Its timers run on one daemon thread of its own, started on first use. Timer
  callbacks must be cheap and thread-safe: in the engine they only ``tell`` a message to an actor (or hand a job
  to a thread that may block), so the thread they run on does not matter.
- ``FakeClock``: time stands still until ``advance(seconds)``, which moves wall and monotonic time together and
  runs the timers that fall due, in deadline order, in the calling thread, each seeing the clock at its own
  deadline (never early), before returning.

Shipped here rather than under ``tests/`` as ``structlog.testing`` ships its helpers: tests and benchmarks use it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from engine.logs import get_logger

log = get_logger(__name__)

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock", "TimerHandle"]


class TimerHandle(Protocol):
    def cancel(self) -> None:
        """Stop the callback from running, if it has not started yet. Idempotent."""


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall time, UTC, timezone-aware: what rows and events are stamped with."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: for windows, deadlines and ages."""

    def monotonic_ns(self) -> int:
        """``monotonic`` in integer nanoseconds (the signal hot path stamps with it)."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once, ``delay_s`` seconds from now (at once if not positive). The thread it runs on
        is the clock's: keep it cheap and thread-safe (tell an actor a message)."""


class _Timer:
    """A scheduled callback; ordered by (deadline, sequence) in the heap, so equal deadlines run in arming
    order."""

    __slots__ = ("callback", "cancelled", "deadline_ns", "seq")

    def __init__(self, deadline_ns: int, seq: int, callback: Callable[[], None]) -> None:
        self.deadline_ns = deadline_ns
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: _Timer) -> bool:
        return (self.deadline_ns, self.seq) < (other.deadline_ns, other.seq)

    def cancel(self) -> None:
        self.cancelled = True  # a flag, not a heap removal: the runner skips it when it comes up


def _run(timer: _Timer) -> None:
    try:
        timer.callback()
    except Exception as exc:  # noqa: BLE001 - one failing callback must not stop the other timers
        log.error("clock.timer_failed", error=f"{type(exc).__name__}: {exc}")


def _delay_ns(delay_s: float) -> int:
    return max(0, round(delay_s * 1e9))


class SystemClock:
    """Real time. Timers wait on one daemon thread (started on first ``call_later``), so arming one costs a heap
    push and a notify, from any thread."""

    def __init__(self) -> None:
        self._heap: list[_Timer] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _Timer(time.monotonic_ns() + _delay_ns(delay_s), next(self._seq), callback)
        with self._cond:
            heapq.heappush(self._heap, timer)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="clock-timers", daemon=True)
                self._thread.start()
            if self._heap[0] is timer:  # a new earliest deadline: the thread is waiting for a later one
                self._cond.notify()
        return timer

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait_ns = self._heap[0].deadline_ns - time.monotonic_ns()
                    if wait_ns <= 0:
                        timer = heapq.heappop(self._heap)
                        break
                    self._cond.wait(wait_ns / 1e9)
            if not timer.cancelled:
                _run(timer)


SYSTEM_CLOCK = SystemClock()
"""The process's real clock: the default wherever a component takes a ``Clock``."""


class FakeClock:
    """Time that moves only when told. ``advance`` runs due timers in the calling thread, in deadline order,
    with the clock set to each timer's deadline while it runs; timers armed by those callbacks that fall due
    within the same advance run too. Thread-safe: any thread may read it or arm timers; advances are
    serialised (a callback may advance it again: the lock is re-entrant)."""

    def __init__(self, start: datetime | None = None, *, monotonic_s: float = 1_000.0) -> None:
        start = start or datetime(2024, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._start = start.astimezone(UTC)
        self._start_ns = round(monotonic_s * 1e9)
        self._now_ns = self._start_ns
        self._heap: list[_Timer] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()  # guards the time and the heap; never held while a callback runs
        self._armed = threading.Condition(self._lock)  # notified by call_later: see wait_for_timer
        self._advancing = threading.RLock()

    def now(self) -> datetime:
        with self._lock:
            elapsed_ns = self._now_ns - self._start_ns
        return self._start + timedelta(microseconds=elapsed_ns // 1000)

    def monotonic(self) -> float:
        return self.monotonic_ns() / 1e9

    def monotonic_ns(self) -> int:
        with self._lock:
            return self._now_ns

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        with self._lock:
            timer = _Timer(self._now_ns + _delay_ns(delay_s), next(self._seq), callback)
            heapq.heappush(self._heap, timer)
            self._armed.notify_all()
        return timer

    @property
    def pending(self) -> int:
        """Timers armed and not yet run or cancelled."""
        with self._lock:
            return sum(1 for timer in self._heap if not timer.cancelled)

    def next_deadline_s(self) -> float | None:
        """Seconds from now to the earliest pending timer, or ``None``."""
        with self._lock:
            return self._earliest_s()

    def wait_for_timer(self, deadline_s: float | None = None, *, timeout_s: float = 60.0) -> float:
        """Block until a timer is pending (one due within ``deadline_s`` of now, if given) and return the seconds
        from now to the earliest pending one: a test waits for the code under test to arm its next timer, then
        advances to it, without polling. ``TimeoutError`` if none is armed within ``timeout_s`` of real time."""

        def earliest() -> tuple[float] | None:  # a tuple: a timer due now (0.0) must count as armed
            wait_s = self._earliest_s()
            return None if wait_s is None or (deadline_s is not None and wait_s > deadline_s) else (wait_s,)

        with self._armed:
            found = self._armed.wait_for(earliest, timeout_s)
        if found is None:
            within = "" if deadline_s is None else f" due within {deadline_s}s"
            raise TimeoutError(f"no timer{within} armed in {timeout_s}s")
        return found[0]

    def advance(self, seconds: float) -> None:
        """Move both clocks ``seconds`` forward, running every timer due by then before returning."""
        if seconds < 0:
            raise ValueError("time does not go back")
        with self._advancing:
            with self._lock:
                target_ns = self._now_ns + _delay_ns(seconds)
            while (timer := self._pop_due(target_ns)) is not None:
                _run(timer)
            with self._lock:
                self._now_ns = max(self._now_ns, target_ns)

    def set(self, when: datetime) -> None:
        """Advance to the wall time ``when`` (not earlier than now)."""
        self.advance((when - self.now()).total_seconds())

    def _earliest_s(self) -> float | None:
        """Seconds from now to the earliest live timer, or ``None``; the caller holds the lock."""
        live = [timer.deadline_ns for timer in self._heap if not timer.cancelled]
        return None if not live else max(0, min(live) - self._now_ns) / 1e9

    def _pop_due(self, target_ns: int) -> _Timer | None:
        with self._lock:
            while self._heap and self._heap[0].deadline_ns <= target_ns:
                timer = heapq.heappop(self._heap)
                if not timer.cancelled:
                    self._now_ns = max(self._now_ns, timer.deadline_ns)
                    return timer
            return None
