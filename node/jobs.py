"""The engine's periodic jobs: the stats line, reconciliation with the stale sweep, the day roll and portfolio
snapshots (venue health is told by the exchange actors, not polled: ``node.venues.Venue.on_health``). Each runs
on a ``node.periodic.PeriodicJob`` thread, on the engine's clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pykka

from actors.follower import FollowerActor
from actors.persistence import PersistenceActor
from actors.router import SignalRouterActor
from engine.clock import Clock
from engine.control import SweepStale
from engine.logs import get_logger
from node.periodic import PeriodicJob
from node.stats import report_stats, take_snapshots
from node.venues import Venue

__all__ = ["start_periodic_jobs"]

log = get_logger(__name__)

Job = tuple[str, float, Callable[[], None]]


def start_periodic_jobs(
    *,
    stats_interval_s: float,
    snapshot_interval_s: float,
    clock: Clock,
    venues: Mapping[str, Venue],
    persistence: pykka.ActorRef[PersistenceActor],
    router: pykka.ActorRef[SignalRouterActor],
    reconcile: Callable[[], object],
    follower_refs: Callable[[], Mapping[int, pykka.ActorRef[FollowerActor]]],
) -> list[PeriodicJob]:
    """Start every periodic job, each on its own thread woken by the clock; returns them, to stop."""

    def reconcile_and_sweep() -> None:
        reconcile()
        router.tell(SweepStale())

    day = [clock.now().date()]

    def day_roll() -> None:
        # Each follower's first snapshot of a new day closes the old one (Portfolio.snapshot): its balances
        # are read when the follower takes it, hence a check every second, not every snapshot interval.
        today = clock.now().date()
        if today != day[0]:
            log.info("portfolio.day_rolled", day_closed=day[0].isoformat(), day=today.isoformat())
            day[0] = today
            take_snapshots(follower_refs(), reason="day_roll")

    def snapshots() -> None:
        take_snapshots(follower_refs())

    jobs: list[Job] = [
        ("timer-stats", stats_interval_s, lambda: report_stats(persistence, venues)),
        ("timer-reconcile", 10.0, reconcile_and_sweep),
        ("timer-day-roll", 1.0, day_roll),
        ("timer-snapshots", snapshot_interval_s, snapshots),
    ]
    timers = [PeriodicJob(name, interval_s, job, clock) for name, interval_s, job in jobs]
    for timer in timers:
        timer.start()
    return timers
