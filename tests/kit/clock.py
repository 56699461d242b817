"""Driving a ``FakeClock`` that a whole engine runs on.

An engine's persistence lane commits intents after a group-commit window and flushes rows after a flush
interval, both timers of the engine's clock: on a ``FakeClock`` that stands still, nothing would be written and
every signal would wait for its intents forever. ``short_timers`` runs those for the test: with the windows
set to a nanosecond (``SHORT_WINDOWS``), a thread advances the clock to each timer due within ``within_s`` as
soon as it is armed (``FakeClock.wait_for_timer``), and leaves every longer one (snapshots, the day roll, price
polls, cool-downs) to the test. The clock drifts by a nanosecond a window: the wall time, in microseconds,
does not show it (a test comparing stamps exactly sees the times it set).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from engine.clock import FakeClock
from tests.kit.waiting import GENEROUS_S

#: An engine's persistence windows at a nanosecond (``engine_config`` keyword arguments).
SHORT_WINDOWS = {
    "ENGINE_PERSISTENCE__DURABLE_WINDOW_MS": "0.000001",
    "ENGINE_PERSISTENCE__FLUSH_INTERVAL_MS": "0.000001",
}


@contextlib.contextmanager
def short_timers(clock: FakeClock, *, within_s: float = 1e-6) -> Iterator[None]:
    """While inside, every timer armed on ``clock`` due within ``within_s`` of its time runs at once."""
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            try:
                step = clock.wait_for_timer(within_s, timeout_s=0.05)  # woken by call_later; the timeout: stop
            except TimeoutError:
                continue
            clock.advance(step)

    thread = threading.Thread(target=pump, name="short-timers", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(GENEROUS_S)
