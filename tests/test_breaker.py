"""CircuitBreaker with a fake clock, including a hypothesis state machine."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.breaker import BreakerState, CircuitBreaker, Transition

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def breaker() -> CircuitBreaker:
    return CircuitBreaker(window_s=10, min_requests=4, error_rate_threshold=0.5, cool_down_s=5)


def test_opens_on_error_rate_only_after_min_requests() -> None:
    b = breaker()
    assert b.record_failure(0.0) is None
    assert b.record_failure(0.1) is None
    assert b.record_success(0.2) is None
    t = b.record_failure(0.3)  # 3 of 4 failed
    assert t is not None
    assert (t.from_state, t.to_state, t.reason) == (CLOSED, OPEN, "error_rate")
    assert t.error_rate == pytest.approx(0.75)
    assert b.state is OPEN


def test_old_errors_leave_the_window() -> None:
    b = breaker()
    for at in (0.0, 1.0, 2.0):
        b.record_failure(at)
    assert b.record_success(11.0) is None  # the failures at 0 and 1 are gone
    assert b.record_failure(11.5) is None  # 2 of 3 in the window, below min_requests
    assert b.state is CLOSED
    assert b.error_rate(11.5) == pytest.approx(2 / 3)


def test_open_refuses_entries_but_not_exits_then_half_open_probe_closes() -> None:
    b = breaker()
    for at in range(4):
        b.record_failure(float(at))
    assert not b.allows(is_exit=False)
    assert b.allows(is_exit=True)
    assert b.try_pass(is_exit=True) == (True, False)
    assert b.poll(7.9) is None
    t = b.poll(8.0)
    assert t is not None and (t.to_state, t.reason) == (HALF_OPEN, "cool_down")
    assert b.poll(8.1) is None  # reported once
    assert b.try_pass(is_exit=False) == (True, True)
    assert b.try_pass(is_exit=False) == (False, False)  # one probe at a time
    assert b.try_pass(is_exit=True) == (True, False)
    assert b.record_success(8.5) is None  # not the probe: no verdict
    t = b.record_success(9.0, probe=True)
    assert t is not None and (t.from_state, t.to_state, t.reason) == (HALF_OPEN, CLOSED, "probe_ok")
    assert b.allows(is_exit=False)


def test_failed_probe_reopens_for_another_cool_down() -> None:
    b = breaker()
    for at in range(4):
        b.record_failure(float(at))
    b.poll(8.0)
    b.try_pass(is_exit=False)
    t = b.record_failure(9.0, probe=True)
    assert t is not None and (t.to_state, t.reason) == (OPEN, "probe_failed")
    assert b.poll(13.9) is None
    assert b.poll(14.0) is not None


def test_ban_opens_for_at_least_the_ban() -> None:
    b = breaker()
    t = b.record_ban(0.0, ban_s=60)
    assert t is not None and (t.to_state, t.reason, t.open_for_s) == (OPEN, "ban", 60)
    assert b.record_ban(10.0, ban_s=120) is None  # already open: extended, not re-reported
    assert b.poll(100.0) is None
    assert b.poll(130.0) is not None


def test_released_probe_lets_another_entry_probe() -> None:
    b = breaker()
    b.record_ban(0.0, ban_s=1)
    b.poll(5.0)
    assert b.try_pass(is_exit=False) == (True, True)
    b.release_probe()
    assert b.try_pass(is_exit=False) == (True, True)


class BreakerMachine(RuleBasedStateMachine):
    """Any sequence of results, bans and time: transitions are real changes, reported once, and the gates
    match the state."""

    def __init__(self) -> None:
        super().__init__()
        self.b = CircuitBreaker(window_s=5, min_requests=3, error_rate_threshold=0.5, cool_down_s=2)
        self.now = 0.0
        self.state = CLOSED
        self.probe_out = False

    def _check(self, t: Transition | None) -> None:
        if t is not None:
            assert t.from_state is self.state
            assert t.to_state is not t.from_state
            assert t.at == self.now
            self.state = t.to_state
        assert self.b.state is self.state
        if self.state is not HALF_OPEN:
            self.probe_out = False

    @rule(dt=st.floats(min_value=0, max_value=3, allow_nan=False))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._check(self.b.poll(self.now))

    @rule(ok=st.booleans(), is_exit=st.booleans())
    def request(self, ok: bool, is_exit: bool) -> None:
        passes, probe = self.b.try_pass(is_exit=is_exit)
        if is_exit:
            assert passes and not probe
        if self.state is OPEN:
            assert passes == is_exit
        if self.state is HALF_OPEN and not is_exit:
            assert passes == (not self.probe_out)
            self.probe_out = self.probe_out or probe
        if not passes:
            return
        record = self.b.record_success if ok else self.b.record_failure
        self._check(record(self.now, probe=probe))
        if probe:
            self.probe_out = False

    @precondition(lambda self: self.state is HALF_OPEN)
    @rule()
    def probe_in_flight_blocks_entries(self) -> None:
        passes, probe = self.b.try_pass(is_exit=False)
        if passes:
            assert probe
            self.probe_out = True
        assert not self.b.allows(is_exit=False)

    @rule(ban_s=st.floats(min_value=0.1, max_value=10, allow_nan=False))
    def ban(self, ban_s: float) -> None:
        self._check(self.b.record_ban(self.now, ban_s))
        assert self.b.state is OPEN
        open_until = self.b.open_until
        assert open_until is not None and open_until >= self.now + ban_s

    @invariant()
    def exits_always_pass(self) -> None:
        assert self.b.allows(is_exit=True)


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
