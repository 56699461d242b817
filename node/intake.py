"""Signal intake wiring: the whale detector's rows in ``whale_signals``, claimed through the persistence actor
(the only writer) and routed to the signal router.
"""

from __future__ import annotations

from typing import Any

import pykka

from actors.persistence import PersistenceActor
from actors.router import SignalRouterActor
from adapters.ioloop import IoLoop
from adapters.signal_intake import CLAIM_SQL, REQUEUE_SQL, SignalIntake
from engine.clock import Clock
from engine.config import SignalsConfig
from engine.control import RouteSignal
from engine.logs import get_logger
from engine.messages import PersistRows, Signal, SignalStatusRow
from node.persistence_writes import run_write

__all__ = ["signal_intake"]

log = get_logger(__name__)


def signal_intake(
    *,
    dsn: str,
    io: IoLoop,
    persistence: pykka.ActorRef[PersistenceActor],
    router: pykka.ActorRef[SignalRouterActor],
    config: SignalsConfig,
    clock: Clock,
) -> SignalIntake:
    """The intake, after putting back to 'pending' what a previous run claimed and never routed (main thread)."""
    requeued = io.run(run_write(persistence, lambda conn: conn.fetch(REQUEUE_SQL)), 60)
    if requeued:
        log.warning("intake.requeued", signals=len(requeued), signal_ids=[r["id"] for r in requeued][:50])

    async def claim(limit: int) -> list[Any]:
        rows: list[Any] = await run_write(persistence, lambda conn: conn.fetch(CLAIM_SQL, limit))
        return rows

    def route(signal: Signal) -> None:
        router.tell(RouteSignal(signal=signal))

    def reject(row: SignalStatusRow) -> None:
        persistence.tell(PersistRows(rows=(row,)))

    return SignalIntake(
        dsn=dsn,
        claim=claim,
        route=route,
        reject=reject,
        poll_interval_ms=config.poll_interval_ms,
        batch_size=config.claim_batch_size,
        max_age_s=config.max_signal_age_s,
        clock=clock,
    )
