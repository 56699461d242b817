"""engine/clock.py: the real clock's timers, and the fake clock that tests drive instead of sleeping."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.clock import SYSTEM_CLOCK, FakeClock, SystemClock

START = datetime(2024, 3, 1, 23, 50, tzinfo=UTC)


# ---- FakeClock -----------------------------------------------------------------------------------------------


def test_fake_clock_stands_still_until_advanced() -> None:
    clock = FakeClock(START, monotonic_s=50.0)
    assert clock.now() == START
    assert clock.monotonic() == 50.0
    assert clock.monotonic_ns() == 50_000_000_000
    clock.advance(1.5)
    assert clock.now() == START + timedelta(seconds=1.5)
    assert clock.monotonic() == 51.5


def test_fake_clock_needs_an_aware_start_and_does_not_go_back() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="back"):
        FakeClock(START).advance(-1)


def test_fake_timer_runs_at_its_deadline_in_the_advancing_thread() -> None:
    clock = FakeClock(START)
    seen: list[tuple[datetime, str]] = []
    clock.call_later(10, lambda: seen.append((clock.now(), threading.current_thread().name)))
    clock.advance(9.999)
    assert seen == []
    clock.advance(0.001)
    assert seen == [(START + timedelta(seconds=10), threading.current_thread().name)]
    assert clock.pending == 0


def test_fake_timer_cancel_and_rearm_inside_one_advance() -> None:
    clock = FakeClock(START)
    fired: list[str] = []
    handle = clock.call_later(1, lambda: fired.append("cancelled"))
    handle.cancel()
    handle.cancel()  # idempotent

    def every_two_seconds() -> None:
        fired.append(f"tick@{clock.monotonic() - 1000:.0f}")
        clock.call_later(2, every_two_seconds)  # a periodic job re-arms after each run

    clock.call_later(2, every_two_seconds)
    assert clock.next_deadline_s() == 2
    clock.advance(7)
    assert fired == ["tick@2", "tick@4", "tick@6"]
    assert clock.next_deadline_s() == 1  # the next tick at 8


def test_fake_clock_set_moves_to_a_wall_time() -> None:
    clock = FakeClock(START)
    fired: list[datetime] = []
    midnight = datetime(2024, 3, 2, tzinfo=UTC)
    clock.call_later((midnight - clock.now()).total_seconds(), lambda: fired.append(clock.now()))
    clock.set(midnight + timedelta(seconds=1))
    assert fired == [midnight]


def test_a_failing_callback_does_not_stop_the_others() -> None:
    clock = FakeClock(START)
    fired: list[int] = []

    def failing() -> None:
        raise ZeroDivisionError

    clock.call_later(1, failing)
    clock.call_later(2, lambda: fired.append(2))
    clock.advance(3)
    assert fired == [2]


@settings(max_examples=200, deadline=None)
@given(
    delays=st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=30),
    steps=st.lists(st.floats(min_value=0, max_value=40, allow_nan=False), min_size=1, max_size=10),
)
def test_fake_timers_fire_in_order_and_never_early(delays: list[float], steps: list[float]) -> None:
    clock = FakeClock(START)
    deadlines: dict[int, int] = {}
    fired: list[tuple[int, int]] = []  # (timer index, clock ns when it ran)

    def record(i: int) -> None:
        fired.append((i, clock.monotonic_ns()))

    for i, delay in enumerate(delays):
        deadlines[i] = clock.monotonic_ns() + round(delay * 1e9)
        clock.call_later(delay, partial(record, i))
    for step in steps:
        clock.advance(step)
        now = clock.monotonic_ns()
        assert all(at <= now for _, at in fired)
        # Everything due has run, nothing not yet due has.
        assert {i for i, _ in fired} == {i for i, at in deadlines.items() if at <= now}
    for i, at in fired:
        assert at == deadlines[i]  # at its deadline: never early, never late
    order = [i for i, _ in fired]
    assert order == sorted(order, key=lambda i: (deadlines[i], i))


def test_fake_clock_is_safe_to_arm_from_other_threads_while_advancing() -> None:
    clock = FakeClock(START)
    fired: list[int] = []
    lock = threading.Lock()

    def arm(base: int) -> None:
        for n in range(200):
            clock.call_later(n % 7, partial(_append, lock, fired, base + n))

    threads = [threading.Thread(target=arm, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(20):
        clock.advance(0.5)
    for thread in threads:
        thread.join()
    clock.advance(10)
    assert len(fired) == 800


def test_wait_for_timer_wakes_when_another_thread_arms_one() -> None:
    clock = FakeClock(START)
    armed = threading.Event()
    worker = threading.Thread(target=lambda: (armed.wait(), clock.call_later(2.5, lambda: None)))
    worker.start()
    armed.set()  # the worker arms only now: wait_for_timer is woken by call_later, not by polling
    assert clock.wait_for_timer(timeout_s=60) == 2.5
    worker.join()


def test_wait_for_timer_counts_a_timer_due_now_and_honours_its_horizon() -> None:
    clock = FakeClock(START)
    clock.call_later(0, lambda: None)
    assert clock.wait_for_timer(timeout_s=0) == 0.0
    clock.advance(0)
    far = clock.call_later(30, lambda: None)
    assert clock.wait_for_timer(timeout_s=0) == 30
    with pytest.raises(TimeoutError, match="due within 10"):
        clock.wait_for_timer(10, timeout_s=0.01)
    far.cancel()
    with pytest.raises(TimeoutError, match="no timer armed"):
        clock.wait_for_timer(timeout_s=0.01)


def _append(lock: threading.Lock, into: list[int], value: int) -> None:
    with lock:
        into.append(value)


# ---- SystemClock ---------------------------------------------------------------------------------------------


def test_system_clock_reads_real_time() -> None:
    clock = SystemClock()
    before = datetime.now(UTC)
    assert before <= clock.now() <= datetime.now(UTC)
    assert clock.now().tzinfo is not None
    assert clock.monotonic_ns() <= clock.monotonic_ns()


def test_system_clock_timers_fire_in_deadline_order_and_cancel() -> None:
    clock = SystemClock()
    order: list[str] = []
    done = threading.Event()
    armed_at = clock.monotonic()

    def late() -> None:
        order.append("late")
        done.set()

    clock.call_later(0.06, late)
    clock.call_later(0.02, lambda: order.append("early"))
    clock.call_later(0.04, lambda: order.append("cancelled")).cancel()
    clock.call_later(-1, lambda: order.append("now"))
    assert done.wait(10)
    assert order == ["now", "early", "late"]
    assert clock.monotonic() - armed_at >= 0.06


def test_system_clock_callbacks_may_rearm() -> None:
    ticks: list[float] = []
    done = threading.Event()

    def tick() -> None:
        ticks.append(SYSTEM_CLOCK.monotonic())
        if len(ticks) < 3:
            SYSTEM_CLOCK.call_later(0.01, tick)
        else:
            done.set()

    SYSTEM_CLOCK.call_later(0, tick)
    assert done.wait(10)
    assert ticks == sorted(ticks)
