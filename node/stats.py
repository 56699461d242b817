"""The periodic ``engine.stats`` line and portfolio snapshots.

``engine.stats`` (every ``stats_interval_s``): counters since start and in the interval, p50 / p99
signal->order latency over the interval, mailbox depth (max and total), persistence queue depth and flush
latency, and per venue the breaker state and rate budget left. Runs on a timer thread; only asks singletons.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import pykka

from actors.follower import FollowerActor
from actors.persistence import PersistenceActor
from engine import metrics, runtime
from engine.control import TakeSnapshot
from engine.logs import get_logger
from node.venues import Venue

log = get_logger(__name__)

_last_counters: dict[str, int] = {}


def collect_stats(
    persistence: pykka.ActorRef[PersistenceActor], venues: Mapping[str, Venue], *, consume: bool = True
) -> dict[str, Any]:
    """The figures of the stats line. ``consume=False`` (admin ``stats``) reads the current interval without
    ending it, so the periodic ``engine.stats`` line still covers its whole interval."""
    global _last_counters
    counters = metrics.counters()
    interval = {k: v - _last_counters.get(k, 0) for k, v in counters.items() if v != _last_counters.get(k, 0)}
    if consume:
        _last_counters = counters
    samples = (metrics.drain_samples() if consume else metrics.peek_samples()).get("signal_to_order_ms", [])
    pool = runtime.pool_stats()
    figures: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        figures = persistence.proxy().stats().get(timeout=5)
    per_venue = {}
    for name, venue in venues.items():
        try:
            status = venue.status()
        except Exception as exc:  # noqa: BLE001 - the stats line must still go out
            status = {"error": repr(exc)}
        per_venue[name] = {
            "breaker": status.get("breaker"),
            "weight_available": status.get("weight_available"),
            "weight_capacity": status.get("weight_capacity"),
            "in_flight": status.get("in_flight"),
            "banned_until": status.get("banned_until"),
        }
    skips = {k.removeprefix("skips."): v for k, v in counters.items() if k.startswith("skips.")}
    return {
        "signals_received": counters.get("signals.received", 0),
        "signals_processed": counters.get("signals.processed", 0),
        "signals_expired": counters.get("signals.expired", 0),
        "signals_failed": counters.get("signals.failed", 0),
        "copies": counters.get("orders.sent", 0),
        "skips": skips,
        "orders_sent": counters.get("orders.sent", 0),
        "fills": counters.get("orders.filled", 0),
        "rejects": counters.get("orders.rejected", 0),
        "unknowns": counters.get("orders.unknown", 0),
        "interval": interval,
        "signal_to_order_ms_p50": metrics.percentile(samples, 50),
        "signal_to_order_ms_p99": metrics.percentile(samples, 99),
        "latency_samples": len(samples),
        "mailbox_depth_max": pool.mailbox_depth_max,
        "mailbox_depth_total": pool.mailbox_depth_total,
        "actors": pool.actors,
        "persistence_queue": figures.get("queue_depth"),
        "persistence_flush_ms": figures.get("last_flush_ms"),
        "database_reachable": figures.get("db_reachable"),
        "venues": per_venue,
    }


def report_stats(persistence: pykka.ActorRef[PersistenceActor], venues: Mapping[str, Venue]) -> None:
    log.info("engine.stats", **collect_stats(persistence, venues))


def take_snapshots(followers: Mapping[int, pykka.ActorRef[FollowerActor]], *, reason: str = "interval") -> int:
    """Ask every follower to persist a portfolio snapshot (``portfolio_snapshots``). Returns how many.
    ``reason``: ``interval`` (the periodic timer), ``day_roll`` or ``shutdown``, for the log line."""
    count = 0
    message = TakeSnapshot()
    for ref in followers.values():
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(message)
            count += 1
    log.info("portfolio.snapshots", followers=count, reason=reason)
    return count
