"""A circuit breaker per venue. Pure: every call takes ``now`` (monotonic seconds).

    CLOSED --(error rate over the window, or a ban)--> OPEN --(cool-down)--> HALF_OPEN
    HALF_OPEN --(probe succeeds)--> CLOSED,   HALF_OPEN --(probe fails)--> OPEN

While OPEN new entries are refused; exits (reduce-only closes) always pass, because refusing to close a
position on a struggling venue is worse than one more failed request. In HALF_OPEN one entry at a time goes
as the probe.

Every method that can change the state returns the ``Transition`` (or ``None``), so the caller logs each state
change exactly once.
"""

from __future__ import annotations

import enum
from collections import deque

import msgspec


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    from_state: BreakerState
    to_state: BreakerState
    reason: str  # "error_rate" | "ban" | "cool_down" | "probe_ok" | "probe_failed"
    at: float
    error_rate: float | None = None
    open_for_s: float | None = None


class CircuitBreaker:
    """Opens when, over the last ``window_s``, at least ``min_requests`` results came back and the share of
    failures is ``>= error_rate_threshold``; or at once on a ban (for at least the ban's length)."""

    __slots__ = (
        "_cool_down_s",
        "_error_rate_threshold",
        "_failures",
        "_min_requests",
        "_open_until",
        "_probe_in_flight",
        "_results",
        "_state",
        "_window_s",
    )

    def __init__(
        self,
        *,
        window_s: float = 30.0,
        min_requests: int = 20,
        error_rate_threshold: float = 0.5,
        cool_down_s: float = 10.0,
    ) -> None:
        if window_s <= 0 or min_requests <= 0 or cool_down_s < 0 or not 0 < error_rate_threshold <= 1:
            raise ValueError("invalid circuit breaker settings")
        self._window_s = window_s
        self._min_requests = min_requests
        self._error_rate_threshold = error_rate_threshold
        self._cool_down_s = cool_down_s
        self._state = BreakerState.CLOSED
        self._results: deque[tuple[float, bool]] = deque()  # (at, failed) within the window
        self._failures = 0
        self._open_until = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The state as of the last call; call ``poll(now)`` first to apply the cool-down."""
        return self._state

    @property
    def open_until(self) -> float | None:
        return self._open_until if self._state is BreakerState.OPEN else None

    def poll(self, now: float) -> Transition | None:
        """Apply time: OPEN becomes HALF_OPEN once the cool-down is over."""
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._probe_in_flight = False
            return self._move(BreakerState.HALF_OPEN, "cool_down", now)
        return None

    def allows(self, *, is_exit: bool) -> bool:
        """Would a request go now? (Does not claim the half-open probe; ``try_pass`` does.)"""
        if is_exit or self._state is BreakerState.CLOSED:
            return True
        return self._state is BreakerState.HALF_OPEN and not self._probe_in_flight

    def try_pass(self, *, is_exit: bool) -> tuple[bool, bool]:
        """``(passes, is_probe)``. In HALF_OPEN the first entry through becomes the probe; its result,
        reported with ``probe=True``, decides the next state."""
        if not self.allows(is_exit=is_exit):
            return False, False
        if self._state is BreakerState.HALF_OPEN and not is_exit:
            self._probe_in_flight = True
            return True, True
        return True, False

    def record_success(self, now: float, *, probe: bool = False) -> Transition | None:
        self._record(now, failed=False)
        if probe and self._state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False
            self._clear_window()
            return self._move(BreakerState.CLOSED, "probe_ok", now)
        return None

    def record_failure(self, now: float, *, probe: bool = False) -> Transition | None:
        self._record(now, failed=True)
        if self._state is BreakerState.HALF_OPEN:
            if probe:
                return self._open(now, self._cool_down_s, "probe_failed", None)
            return None
        if self._state is BreakerState.CLOSED:
            total = len(self._results)
            rate = self._failures / total
            if total >= self._min_requests and rate >= self._error_rate_threshold:
                return self._open(now, self._cool_down_s, "error_rate", rate)
        return None

    def record_ban(self, now: float, ban_s: float) -> Transition | None:
        """The venue banned us: open for at least the ban (an already open breaker is extended)."""
        open_for_s = max(self._cool_down_s, ban_s)
        if self._state is BreakerState.OPEN:
            self._open_until = max(self._open_until, now + open_for_s)
            return None
        return self._open(now, open_for_s, "ban", None)

    def release_probe(self) -> None:
        """The probe was never sent (or its result says nothing about the venue): let another entry probe."""
        self._probe_in_flight = False

    def error_rate(self, now: float) -> float:
        self._expire(now)
        return self._failures / len(self._results) if self._results else 0.0

    def _open(self, now: float, open_for_s: float, reason: str, rate: float | None) -> Transition:
        self._open_until = now + open_for_s
        self._probe_in_flight = False
        self._clear_window()
        return self._move(BreakerState.OPEN, reason, now, error_rate=rate, open_for_s=open_for_s)

    def _move(
        self,
        to_state: BreakerState,
        reason: str,
        now: float,
        *,
        error_rate: float | None = None,
        open_for_s: float | None = None,
    ) -> Transition:
        transition = Transition(
            from_state=self._state,
            to_state=to_state,
            reason=reason,
            at=now,
            error_rate=error_rate,
            open_for_s=open_for_s,
        )
        self._state = to_state
        return transition

    def _record(self, now: float, *, failed: bool) -> None:
        self._expire(now)
        self._results.append((now, failed))
        self._failures += failed

    def _expire(self, now: float) -> None:
        horizon = now - self._window_s
        results = self._results
        while results and results[0][0] <= horizon:
            self._failures -= results.popleft()[1]

    def _clear_window(self) -> None:
        # A fresh start: errors from before the breaker tripped must not re-trip it on the first new failure.
        self._results.clear()
        self._failures = 0
