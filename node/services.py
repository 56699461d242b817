"""The engine's services on the I/O loop (signal intake, follow watcher, price feeds, admin socket, demo feed)
and its periodic jobs (stats line, venue health, reconciliation, snapshots).

Kept apart from ``node/system.py`` so the composition root stays a readable start/stop sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from adapters.signal_intake import CLAIM_SQL, REQUEUE_SQL, SignalIntake
from engine.control import RouteSignal, SweepStale
from engine.logs import get_logger
from engine.messages import PersistRows, Signal, SignalStatusRow
from node.persistence_writes import run_write
from node.price_feed import PriceFeed

if TYPE_CHECKING:
    from node.system import EngineSystem

log = get_logger(__name__)


# How far back each poll looks again. ``updated_at`` is the writer's transaction start, so a row can commit with a
# timestamp older than the last poll; NOTIFY (sent at commit) catches it first, the overlap catches it if the
# notification was lost. Rows already applied at the same ``updated_at`` are not reloaded twice.
FOLLOWS_POLL_OVERLAP_S = 60.0

_CHANGED_SQL = """
SELECT 'u' AS kind, id AS user_id, 0::bigint AS whale_id, updated_at FROM users WHERE updated_at >= $1
UNION ALL
SELECT 'f', user_id, whale_id, updated_at FROM user_whale_follows WHERE updated_at >= $1"""


class FollowsWatcher:
    """Picks up users / follows written by another application: NOTIFY ``follows_changed`` (debounced) plus a
    poll on ``updated_at`` (database clock, with an overlap) in case a notification was missed. When the LISTEN
    connection had to be opened again, every follower is reloaded: notifications sent while it was down are
    lost, deletes among them, and a deleted row leaves nothing for the poll to find."""

    def __init__(self, system: EngineSystem) -> None:
        self._system = system
        self._pending: set[int] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._since: datetime | None = None  # database clock of the last poll
        self._applied: dict[tuple[str, int, int], datetime] = {}  # row -> updated_at already applied

    async def prepare(self) -> None:
        """LISTEN, and note the rows as they are now, before the engine loads its followers: whatever commits
        after this is notified, whatever committed before is in the load."""
        await self._listen()
        await self._changed_since()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="follows-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close(timeout=2)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._pending.add(int(payload))
        self._wake.set()

    async def _run(self) -> None:
        interval_s = self._system.config.signals.follows_poll_interval_ms / 1000
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._listen()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval_s)
                self._wake.clear()
                await asyncio.sleep(0.05)  # debounce a burst of row changes into one reload
                # Take the ids before any await: a notification that arrives during the poll below stays for
                # the next round (and has set the wake event again).
                changed, self._pending = self._pending, set()
                changed |= await self._changed_since()
                if changed and self._system.supervisor is not None:
                    await self._system.supervisor.reload(sorted(changed))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep watching; the next round retries
                log.warning("follows.watch_error", error=f"{type(exc).__name__}: {exc}")
                # A closed connection is opened again (and everything reloaded) at the top of the loop.
                await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        reconnect = self._conn is not None
        conn = await asyncpg.connect(self._system.dsn, timeout=10)
        try:
            await conn.add_listener("follows_changed", self._on_notify)
            # A lost connection wakes the loop, which opens it again at once rather than at the next poll.
            conn.add_termination_listener(lambda _conn: self._wake.set())
            if reconnect and self._system.supervisor is not None:
                log.warning("follows.listen_restored", action="full_reload")
                await self._system.supervisor.reload()
        except BaseException:
            await conn.close(timeout=2)  # listening without the reload would hide what was missed; retry both
            raise
        self._conn = conn

    async def _changed_since(self) -> set[int]:
        """Users whose ``users`` or ``user_whale_follows`` rows changed since the last poll (minus the overlap),
        leaving out rows already reloaded at the same ``updated_at``."""
        async with self._system.pool.acquire() as conn:
            now: datetime = await conn.fetchval("SELECT now()")
            since = (self._since or now) - timedelta(seconds=FOLLOWS_POLL_OVERLAP_S)
            rows = await conn.fetch(_CHANGED_SQL, since)
        self._since = now
        changed: set[int] = set()
        for r in rows:
            key = (r["kind"], r["user_id"], r["whale_id"])
            if self._applied.get(key) != r["updated_at"]:
                self._applied[key] = r["updated_at"]
                changed.add(r["user_id"])
        for key in [k for k, at in self._applied.items() if at < since]:
            del self._applied[key]
        return changed


def route_signal(system: EngineSystem, signal: Signal) -> None:
    system.router.tell(RouteSignal(signal=signal))


def start_services(system: EngineSystem) -> None:
    cfg = system.config
    services: list[Any] = [PriceFeed(system, venue) for venue in system.venues.values()]
    if cfg.signals.listen:
        requeued = system.io.run(run_write(system, lambda conn: conn.fetch(REQUEUE_SQL)), 60)
        if requeued:
            log.warning("intake.requeued", signals=len(requeued), signal_ids=[r["id"] for r in requeued][:50])

        async def claim(limit: int) -> list[Any]:
            rows: list[Any] = await run_write(system, lambda conn: conn.fetch(CLAIM_SQL, limit))
            return rows

        def reject(row: SignalStatusRow) -> None:
            system.persistence.tell(PersistRows(rows=(row,)))

        services.append(
            SignalIntake(
                dsn=system.dsn,
                claim=claim,
                route=lambda s: route_signal(system, s),
                reject=reject,
                poll_interval_ms=cfg.signals.poll_interval_ms,
                batch_size=cfg.signals.claim_batch_size,
                max_age_s=cfg.signals.max_signal_age_s,
                clock=system.clock,
            )
        )
    if system.follows_watcher is not None:  # prepared (LISTEN) before the followers were loaded
        system.io.run(system.follows_watcher.start(), 30)
    if cfg.admin.enabled:
        from adapters.admin_socket import AdminServer
        from node.admin_handler import EngineAdminHandler

        services.append(
            AdminServer(
                system.io,
                cfg.admin_socket_path,
                EngineAdminHandler(system),
                max_connections=cfg.admin.max_connections,
                idle_timeout_s=cfg.admin.idle_timeout_s,
                allow_mutating_uids=cfg.admin.allow_mutating_uids,
            )
        )
    if system.demo:
        from adapters.demo import DemoFeed

        services.append(DemoFeed(system))
    for service in services:
        system.io.run(service.start(), 30)
        system.services.append(service)


def stop_services(system: EngineSystem) -> None:
    for service in reversed(system.services):
        try:
            system.io.run(service.stop(), 15)
        except Exception as exc:  # noqa: BLE001 - stop the rest regardless
            log.warning("engine.service_stop_failed", service=type(service).__name__, error=repr(exc))
    system.services.clear()


def periodic_jobs(system: EngineSystem) -> list[tuple[str, float, Callable[[], None]]]:
    from node.stats import report_stats, take_snapshots

    cfg = system.config

    def health() -> None:
        for venue in system.venues.values():
            venue.refresh_health()

    def reconcile() -> None:
        system.reconcile()
        system.router.tell(SweepStale())

    day = [system.clock.now().date()]

    def day_roll() -> None:
        # Each follower's first snapshot of a new day closes the old one (Portfolio.snapshot): its balances
        # are read when the follower takes it, hence a check every second, not every snapshot interval.
        today = system.clock.now().date()
        if today != day[0]:
            log.info("portfolio.day_rolled", day_closed=day[0].isoformat(), day=today.isoformat())
            day[0] = today
            take_snapshots(system, reason="day_roll")

    return [
        ("timer-stats", cfg.stats_interval_s, lambda: report_stats(system)),
        ("timer-venue-health", 1.0, health),
        ("timer-reconcile", 10.0, reconcile),
        ("timer-day-roll", 1.0, day_roll),
        ("timer-snapshots", cfg.snapshot_interval_s, lambda: _discard(take_snapshots(system))),
    ]


def _discard(_value: object) -> None:
    """Timer jobs return nothing; this drops a job's informative return value."""
