"""May the exchange actor send to its venue now? The circuit breaker and the venue's ban, owned by one
``VenueGate`` the actor composes, which logs every change and tells it to the subscribers (``VenueHealth``).

Nobody polls it: the actor keeps a timer armed for ``reopens_at()``, so the cool-down's end and the ban's end
are told as soon as they happen. Runs on the exchange actor's thread only.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.breaker import BreakerState, CircuitBreaker, Transition
from engine.config import VenueConfig
from engine.control import VenueHealth
from engine.logs import get_logger

log = get_logger(__name__)

_EVENTS = {
    BreakerState.OPEN: "breaker.opened",
    BreakerState.HALF_OPEN: "breaker.half_open",
    BreakerState.CLOSED: "breaker.closed",
}


class VenueGate:
    """The breaker and the ban of one venue (see the module docstring)."""

    __slots__ = ("_told", "banned_until", "breaker", "subscribers", "venue")

    def __init__(self, venue: str, config: VenueConfig) -> None:
        self.venue = venue
        self.breaker = CircuitBreaker(
            window_s=config.breaker_window_s,
            min_requests=config.breaker_min_requests,
            error_rate_threshold=config.breaker_error_rate,
            cool_down_s=config.breaker_cooldown_s,
        )
        self.banned_until: float | None = None
        self.subscribers: list[Callable[[VenueHealth], None]] = []
        self._told = self.health()

    @property
    def entries_refused(self) -> bool:
        """The breaker is open: entries are refused (a ban opens it too)."""
        return self.breaker.state is BreakerState.OPEN

    def health(self) -> VenueHealth:
        return VenueHealth(venue=self.venue, breaker=self.breaker.state, banned=self.banned_until is not None)

    def subscribe(self, subscriber: Callable[[VenueHealth], None]) -> None:
        self.subscribers.append(subscriber)
        subscriber(self._told)

    # ---- time, results, bans -------------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Apply time to the breaker (OPEN becomes HALF_OPEN once the cool-down is over)."""
        self._apply(self.breaker.poll(now))

    def banned(self, now: float) -> bool:
        """Still banned at ``now``; a ban that is over is lifted here."""
        if self.banned_until is None:
            return False
        if now < self.banned_until:
            return True
        self.banned_until = None
        log.info("venue.unbanned", venue=self.venue)
        self._tell()
        return False

    def reopens_at(self) -> float | None:
        """When the ban or the open breaker next changes by itself: the actor wakes then to tell it."""
        times = [t for t in (self.banned_until, self.breaker.open_until) if t is not None]
        return min(times) if times else None

    def record(self, error: str | None, *, probe: bool, now: float, ban_s: float | None) -> None:
        """What a call's result says about the venue's health."""
        if error == "banned":
            self._on_ban(now, ban_s or 0.0)
        elif error in ("retryable", "unknown"):
            self._apply(self.breaker.record_failure(now, probe=probe))
        elif error == "not_sent":
            if probe:
                self.breaker.release_probe()
        else:  # the venue answered, even if it said no: it is healthy
            self._apply(self.breaker.record_success(now, probe=probe))

    def _on_ban(self, now: float, ban_s: float) -> None:
        until = now + ban_s
        if self.banned_until is None:
            log.warning("venue.banned", venue=self.venue, ban_s=ban_s)
        if self.banned_until is None or until > self.banned_until:
            self.banned_until = until
        self._apply(self.breaker.record_ban(now, ban_s))
        self._tell()

    def _apply(self, transition: Transition | None) -> None:
        if transition is None:
            return
        level = log.warning if transition.to_state is BreakerState.OPEN else log.info
        level(
            _EVENTS[transition.to_state],
            venue=self.venue,
            reason=transition.reason,
            from_state=str(transition.from_state),
            error_rate=transition.error_rate,
            open_for_s=transition.open_for_s,
        )
        self._tell()

    def _tell(self) -> None:
        health = self.health()
        if health == self._told:
            return
        self._told = health
        for subscriber in self.subscribers:
            try:
                subscriber(health)
            except Exception:  # one subscriber's bug must not cost the venue its outcome handling
                log.exception("venue.health_subscriber_failed", venue=self.venue)
