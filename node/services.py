"""The engine's services on the I/O loop: one price feed per venue, the signal intake, the admin socket and the
demo feed. ``EngineSystem.start`` hands ``start_services`` the parts each one uses (refs, pool, venues, clock,
config sections, the engine's controls as callables) and keeps the list to pause (``pause_services``, while
draining) and stop them.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Protocol, runtime_checkable

import asyncpg
import pykka

from actors.persistence import PersistenceActor
from actors.router import SignalRouterActor
from adapters.admin_socket import AdminServer
from adapters.demo import DemoFeed
from adapters.ioloop import IoLoop
from engine.clock import Clock
from engine.config import EngineConfig
from engine.logs import get_logger
from engine.messages import TradeType
from node.admin_handler import EngineAdminHandler
from node.intake import signal_intake
from node.price_feed import PriceFeed
from node.venues import Venue

__all__ = ["Pausable", "Service", "pause_services", "start_services", "stop_services"]

log = get_logger(__name__)


class Service(Protocol):
    """Something that runs on the I/O loop between ``start`` and ``stop``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Pausable(Protocol):
    """A service that takes signals in (the intake): paused while the engine drains."""

    def pause(self, paused: bool = True) -> None: ...


def start_services(
    config: EngineConfig,
    *,
    demo: bool,
    io: IoLoop,
    dsn: str,
    pool: asyncpg.Pool,
    router: pykka.ActorRef[SignalRouterActor],
    persistence: pykka.ActorRef[PersistenceActor],
    venues: Mapping[str, Venue],
    clock: Clock,
    started_at: float,
    mark_price: Callable[[str, TradeType], Decimal | None],
    reload: Callable[[], Awaitable[Mapping[str, int]]],
    reconcile_all: Callable[[], int],
    set_draining: Callable[[bool], None],
    shutdown: threading.Event,
) -> list[Service]:
    """Build the services the config asks for and start each on the I/O loop (main thread); returns them in
    start order. ``started_at`` down to ``shutdown`` are for the admin socket (see ``EngineAdminHandler``)."""
    feeds = [PriceFeed(venue, pool=pool, router=router, clock=clock) for venue in venues.values()]
    services: list[Service] = list(feeds)
    if config.signals.listen:
        services.append(
            signal_intake(dsn=dsn, io=io, persistence=persistence, router=router, config=config.signals, clock=clock)
        )
    if config.admin.enabled:
        handler = EngineAdminHandler(
            pool=pool,
            router=router,
            persistence=persistence,
            venues=venues,
            clock=clock,
            started_at=started_at,
            shutdown=shutdown,
            max_signal_age_s=config.signals.max_signal_age_s,
            mark_price=mark_price,
            price_feeds=feeds,
            reload=reload,
            reconcile_all=reconcile_all,
            set_draining=set_draining,
            intake_claims=config.signals.listen,
        )
        services.append(
            AdminServer(
                io,
                config.admin_socket_path,
                handler,
                max_connections=config.admin.max_connections,
                idle_timeout_s=config.admin.idle_timeout_s,
                line_deadline_s=config.admin.line_deadline_ms / 1000,
                allow_mutating_uids=config.admin.allow_mutating_uids,
            )
        )
    if demo:
        services.append(DemoFeed(venues=venues, dsn=dsn, config=config.demo, clock=clock))
    for service in services:
        io.run(service.start(), 30)
    return services


def pause_services(services: Sequence[Service], paused: bool) -> None:
    """Pause (or resume) every service that takes signals in; the others run on (feeds keep marking books)."""
    for service in services:
        if isinstance(service, Pausable):
            service.pause(paused)


def stop_services(services: Sequence[Service], io: IoLoop) -> None:
    """Stop them in reverse start order; one failing to stop does not keep the others running."""
    for service in reversed(services):
        try:
            io.run(service.stop(), 15)
        except Exception as exc:  # noqa: BLE001 - stop the rest regardless
            log.warning("engine.service_stop_failed", service=type(service).__name__, error=repr(exc))
