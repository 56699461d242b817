"""EngineSystem: the composition root. Starts and stops everything in order.

Start: I/O loop -> PostgreSQL (embedded unless a URL is configured) -> schema -> persistence actor -> venues and
their exchange actors -> followers rebuilt from the database (start-up recovery of open orders) -> router ->
signal intake and admin socket -> timers. ``engine.ready`` is logged when signals are accepted.

Stop (SIGINT/SIGTERM, admin ``shutdown``): stop taking signals, let in-flight orders settle (bounded by
``shutdown_grace_s``), stop the services, take one portfolio snapshot per follower (the baseline a restart on a
later day counts "realised today" from), stop the actors, close venues, flush persistence, stop the embedded
server if we started it.

``start``/``stop`` run on the main thread and may block on futures; nothing here runs inside an actor handler.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pykka

from actors.follower import FollowerActor
from actors.persistence import PersistenceActor
from actors.router import SignalRouterActor
from adapters.database import apply_schema, connect_pool
from adapters.demo import seed_demo
from adapters.embedded_pg import EmbeddedPostgres
from adapters.ioloop import IoLoop
from adapters.state_loader import load_followers, load_whale_ids
from engine import metrics, runtime
from engine.clock import SYSTEM_CLOCK, Clock
from engine.config import EngineConfig, effective_config
from engine.control import SetBacklog, SetDraining
from engine.events import DomainEvent, EventBus, log_event
from engine.follower_state import FollowerContext, FollowerState, LiquidationCheck
from engine.logs import get_logger
from engine.messages import DomainEventRow, PersistRows
from node.follows_watcher import FollowsWatcher
from node.jobs import start_periodic_jobs
from node.periodic import PeriodicJob
from node.reconciliation import Reconciliation
from node.services import Service, pause_services, start_services, stop_services
from node.stats import take_snapshots
from node.supervisor import Supervisor
from node.venue_accounts import prepare_account, prepare_accounts
from node.venues import Venue, build_venues

log = get_logger(__name__)


class EngineSystem:
    """Owns every long-lived piece of one engine process. ``venue_adapters`` lets tests and benchmarks bring
    a venue that outlives the engine (a real venue does: restart tests need that). ``clock`` is the one clock
    every component reads the time from and arms its timers on (a ``FakeClock`` in tests)."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        demo: bool = False,
        venue_adapters: dict[str, Any] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.demo = demo
        self.clock = clock
        self._venue_adapters = venue_adapters or {}
        self.io = IoLoop()
        self.embedded: EmbeddedPostgres | None = None
        self.dsn = ""
        # Any until start() sets them (typed where they are handed on): an Optional would need a check per use.
        self.pool: Any = None
        self.persistence: Any = None
        self.router: Any = None
        self.venues: dict[str, Venue] = {}
        self.supervisor: Supervisor | None = None
        self.services: list[Service] = []  # on the I/O loop: the follows watcher, feeds, intake, admin, demo
        self.follows_watcher: FollowsWatcher | None = None
        self.shutdown = threading.Event()  # set by the admin ``shutdown``; run_engine's main loop watches it
        self.started_at = clock.monotonic()  # for uptime, on the engine's clock
        self.reconciliation = Reconciliation(self.follower_refs)
        self._timers: list[PeriodicJob] = []  # on the clock: a FakeClock drives them in tests
        self.events = EventBus(write=self._write_event_row)
        self.events.subscribe(log_event)
        self._stopped = False

    # ---- start -------------------------------------------------------------------------------------------

    def start(self) -> None:
        t0 = time.monotonic()
        cfg = self.config
        log.info("engine.config", config=effective_config(cfg))
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        self.io.start()
        self._start_database()
        # Already running in this process (tests start several engines): keep the pool.
        with contextlib.suppress(RuntimeError):
            runtime.configure_pool(workers=cfg.runtime.workers, max_messages_per_turn=cfg.runtime.max_messages_per_turn)
        runtime.tune_gc(gen0_threshold=cfg.runtime.gc_gen0_threshold)
        self.persistence = PersistenceActor.start(
            io_loop=self.io,
            dsn=self.dsn,
            config=cfg.persistence,
            database=cfg.database,
            clock=self.clock,
            on_backlog=self._persistence_backlog,
        )
        self.venues = build_venues(cfg.venues, self._venue_adapters, io=self.io, clock=self.clock)
        if self.demo:
            self.io.run(seed_demo(self.pool, cfg.demo), 120)
        # LISTEN before the load: a follow change committed during the load is then notified, not lost.
        self.follows_watcher = FollowsWatcher(
            dsn=self.dsn, pool=self.pool, reload=self._reload, poll_interval_ms=cfg.signals.follows_poll_interval_ms
        )
        self.io.run(self.follows_watcher.prepare(), 60)
        self.services.append(self.follows_watcher)
        with runtime.long_lived_allocations():
            states = self._load_states()
            whales = self.io.run(load_whale_ids(self.pool), 60)
            self.router = SignalRouterActor.start(
                persistence=self.persistence,
                mark_price=self.mark_price,
                publish=self.events.publish,
                config=cfg.signals,
                clock=self.clock,
            )
            self.supervisor = Supervisor(
                io=self.io,
                pool=self.pool,
                router=self.router,
                context=self.follower_context(),
                prepare=self._prepare_account,
                clock=self.clock,
                restart_delay_s=cfg.persistence.flush_interval_ms * 4 / 1000,
            )
            followers = self.supervisor.start_followers(states, whales)
            recovering = sum(1 for s in states if s.open_trades)
            log.info(
                "recovery.started",
                followers_with_open_orders=recovering,
                open_orders=sum(len(s.open_trades) for s in states),
            )
            del states
        self._start_services()
        self._start_timers()
        log.info(
            "engine.ready",
            followers=followers,
            whales=len(whales),
            venues=sorted(self.venues),
            startup_ms=round((time.monotonic() - t0) * 1000, 1),
            demo=self.demo,
        )

    def _start_database(self) -> None:
        cfg = self.config
        if cfg.database.url:
            self.dsn = cfg.database.url
        else:
            self.embedded = EmbeddedPostgres(cfg.data_path / "pgdata")
            self.dsn = self.embedded.start()
            log.info("database.embedded_started", data_dir=str(self.embedded.pgdata))
        self.pool = self.io.run(
            connect_pool(
                self.dsn,
                min_size=1,
                max_size=cfg.database.pool_max_size,
                connect_timeout_s=cfg.database.connect_timeout_s,
            ),
            cfg.database.connect_timeout_s * 3,
        )
        applied = self.io.run(apply_schema(self.pool), 60)
        log.info("database.ready", schema_steps_applied=applied, embedded=self.embedded is not None)

    def _load_states(self) -> list[FollowerState]:
        states = self.io.run(load_followers(self.pool), 300)
        # Paper funding; real venues: credentials and balances.
        return prepare_accounts(states, venues=self.venues, persistence=self.persistence, io=self.io, clock=self.clock)

    def _prepare_account(self, state: FollowerState) -> FollowerState:
        """A follower started later (supervisor): paper funding, or its credential registered with its venue.
        No I/O: this runs on the I/O loop."""
        return prepare_account(state, venues=self.venues, persistence=self.persistence)

    async def _reload(self, user_ids: list[int] | None) -> object:
        """Follows changed in the database (the watcher): the supervisor applies them."""
        return await self.supervisor.reload(user_ids) if self.supervisor is not None else None

    async def _reload_all(self) -> dict[str, int]:
        """Admin ``reload``: the admin socket starts after the supervisor, so there is one."""
        assert self.supervisor is not None
        return await self.supervisor.reload()

    # ---- services on the I/O loop ------------------------------------------------------------------------

    def _start_services(self) -> None:
        if self.follows_watcher is not None:  # prepared (LISTEN) before the followers were loaded
            self.io.run(self.follows_watcher.start(), 30)
        self.services += start_services(
            self.config,
            demo=self.demo,
            io=self.io,
            dsn=self.dsn,
            pool=self.pool,
            router=self.router,
            persistence=self.persistence,
            venues=self.venues,
            clock=self.clock,
            started_at=self.started_at,
            mark_price=self.mark_price,
            reload=self._reload_all,
            reconcile_all=lambda: self.reconcile(all_followers=True),
            set_draining=self.set_draining,
            shutdown=self.shutdown,
        )

    def _stop_services(self) -> None:
        stop_services(self.services, self.io)
        self.services.clear()

    # ---- shared views handed to actors -----------------------------------------------------------------

    def follower_context(self) -> FollowerContext:
        return FollowerContext(
            persistence=self.persistence,
            router=self.router,
            exchanges={name: v.exchange for name, v in self.venues.items()},
            markets={name: v.markets for name, v in self.venues.items()},
            clock=self.clock,
            publish=self.events.publish,
            venue_available=self.venue_available,
            needs_reconcile=self.reconciliation.needs_reconcile,
            on_failure=self.on_follower_failure,
            unknown_grace_s=min((v.config.unknown_grace_s for v in self.venues.values()), default=60.0),
            liquidation_checks={
                name: LiquidationCheck(
                    band=Decimal(str(v.config.liquidation_check_band_pct)) / 100,
                    interval_s=v.config.liquidation_check_interval_ms / 1000,
                )
                for name, v in self.venues.items()
                if v.adapter.liquidation_model == "venue" and "futures" in v.config.trade_types
            },
        )

    @property
    def shutdown_requested(self) -> bool:
        """The admin asked for a shutdown (run_engine stops the engine)."""
        return self.shutdown.is_set()

    def follower_refs(self) -> dict[int, pykka.ActorRef[FollowerActor]]:
        """Every follower's ref, asked of the router (their owner; empty before it started). Blocks: not for
        actor handlers."""
        return self.router.proxy().follower_refs().get(timeout=30) if self.router is not None else {}

    def mark_price(self, symbol: str, trade_type: Any) -> Decimal | None:
        for venue in self.venues.values():
            mark = venue.mark(symbol)
            if mark is not None:
                return mark
        return None

    def _persistence_backlog(self, high: bool) -> None:
        """The persistence actor's write queue passed its high-water mark, or recovered (its thread)."""
        if self.router is not None:
            with contextlib.suppress(pykka.ActorDeadError):  # stopping: the router is gone first
                self.router.tell(SetBacklog(high=high))

    def venue_available(self, name: str) -> bool:
        venue = self.venues.get(name)
        return venue is not None and venue.entries_open

    def subscribe(self, subscriber: Callable[[DomainEvent], None]) -> None:
        """Add an in-process domain-event subscriber (before start, or from tests). Must be thread-safe."""
        self.events.subscribe(subscriber)

    def _write_event_row(self, row: DomainEventRow) -> None:
        self.persistence.tell(PersistRows(rows=(row,)))

    def on_follower_failure(self, user_id: int, message: str, error: str) -> None:
        if self.supervisor is not None:
            self.supervisor.on_failure(user_id, message, error)

    # ---- operations ----------------------------------------------------------------------------------------

    def reconcile(self, *, all_followers: bool = False) -> int:
        """Tell followers with unknown outcomes (or all) to ask their venues again (``Reconciliation``)."""
        return self.reconciliation.reconcile(all_followers=all_followers)

    def set_draining(self, draining: bool = True) -> None:
        """Stop (or resume) taking signals; in-flight orders finish. The router owns the fact (one message: the
        admin asks it); the services that take signals in pause with it."""
        self.router.tell(SetDraining(draining=draining))
        pause_services(self.services, draining)
        log.info("engine.draining" if draining else "engine.resumed")

    def in_flight(self) -> dict[str, int]:
        exchanges = sum(v.exchange.proxy().status().get(timeout=10).get("in_flight", 0) for v in self.venues.values())
        persistence = self.persistence.proxy().stats().get(timeout=10)
        return {
            "router": self.router.proxy().in_flight().get(timeout=10),
            "exchange": exchanges,
            "durable_pending": int(persistence.get("durable_pending", 0)),
        }

    # ---- timers --------------------------------------------------------------------------------------------

    def _start_timers(self) -> None:
        self._timers = start_periodic_jobs(
            stats_interval_s=self.config.stats_interval_s,
            snapshot_interval_s=self.config.snapshot_interval_s,
            clock=self.clock,
            venues=self.venues,
            persistence=self.persistence,
            router=self.router,
            reconcile=self.reconcile,
            follower_refs=self.follower_refs,
        )

    # ---- stop ----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ordered shutdown. Every step runs even if an earlier one failed: the embedded server must stop."""
        if self._stopped:
            return
        self._stopped = True
        t0 = time.monotonic()
        log.info("engine.stopping")
        for timer in self._timers:
            timer.stop()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("drain", self._drain_and_settle),
            ("services", self._stop_services),
            ("snapshots", self._final_snapshots),
            ("followers", lambda: runtime.stop_all_pooled(timeout_s=60)),
            ("router", lambda: self.router.stop() if self.router is not None else None),
            ("venues", self._stop_venues),
            ("persistence", self._stop_persistence),
            ("pool", lambda: self.io.run(self.pool.close(), 10) if self.pool is not None else None),
            ("io_loop", self.io.stop),
            ("database", lambda: self.embedded.stop() if self.embedded is not None else None),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                log.error("engine.stop_step_failed", step=name, error=f"{type(exc).__name__}: {exc}")
        log.info(
            "engine.stopped",
            shutdown_ms=round((time.monotonic() - t0) * 1000, 1),
            counters=metrics.counters(),
        )

    def _drain_and_settle(self) -> None:
        if self.router is not None and self.router.is_alive():
            self.set_draining(True)
            self._settle(self.config.shutdown_grace_s)

    def _final_snapshots(self) -> None:
        """One snapshot per follower at its settled books, so a restart after midnight takes "realised today"
        from it (``adapters/state_loader.py``) and not from the last periodic one, which misses what was realised
        since. After ``services``: no price tick or signal changes the books any more. Before ``followers``: each
        follower handles the request before its stop (stops queue behind it) and tells persistence the row, which
        the ``persistence`` step then flushes."""
        take_snapshots(self.follower_refs(), reason="shutdown")

    def _stop_venues(self) -> None:
        for venue in self.venues.values():
            venue.stop(self.io)

    def _stop_persistence(self) -> None:
        if self.persistence is None:
            return
        flushed = self.persistence.proxy().flush(30).get(timeout=40)
        self.persistence.stop()
        log.info("persistence.flushed", complete=flushed)

    def _settle(self, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        left: dict[str, int] = {}
        while time.monotonic() < deadline:
            try:
                left = self.in_flight()
            except Exception:  # noqa: BLE001 - an actor already gone has nothing in flight
                return
            if not any(left.values()):
                return
            time.sleep(0.05)
        log.warning("engine.settle_timeout", grace_s=grace_s, in_flight=left)
