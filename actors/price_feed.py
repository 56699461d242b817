"""Price feed, one per venue: marks for every symbol with an open position, pushed to the followers holding it.

Each interval it asks the venue for the marks of the symbols held on it in ONE batched call
(``fetch_marks``: ccxt ``fetch_tickers``; the paper venue's own book), publishes them for the router (a
read-only dict replaced wholesale, so readers never see a half-written one) and tells each follower a
``PriceUpdate`` with only the symbols that follower holds. A symbol whose last good mark is older than
``price_stale_after_ms`` is listed in ``stale_symbols``: followers take no SL/TP or liquidation decision on it.

Who holds what comes from the followers' open positions, read from PostgreSQL every few intervals (the books
are there, and a feed must not ask 100,000 actors). Runs on the I/O loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pykka

from engine import metrics
from engine.logs import get_logger
from engine.messages import PriceUpdate

if TYPE_CHECKING:
    from actors.system import EngineSystem
    from actors.venues import Venue

log = get_logger(__name__)

_HOLDINGS_SQL = """
SELECT user_id, symbol FROM positions WHERE venue = $1 AND status IN ('open', 'closing')
"""


class PriceFeed:
    """See the module docstring."""

    def __init__(self, system: EngineSystem, venue: Venue, *, holdings_refresh_every: int = 5) -> None:
        self._system = system
        self._venue = venue
        self._interval_s = venue.config.price_poll_interval_ms / 1000
        self._stale_s = venue.config.price_stale_after_ms / 1000
        self._refresh_every = holdings_refresh_every
        self._holders: dict[str, set[int]] = {}
        self._fresh_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stale_logged: set[str] = set()
        self.ticks = 0

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"price-feed-{self._venue.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poke(self) -> None:
        """Tick now (admin ``price``): called on the I/O loop."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                if self.ticks % self._refresh_every == 0:
                    await self._refresh_holdings()
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed tick leaves marks to go stale, visibly
                log.warning("prices.tick_failed", venue=self._venue.name, error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            if self._wake.is_set():
                self._wake.clear()
                await self._refresh_holdings()  # a poke follows a change: fills may have opened positions

    async def _refresh_holdings(self) -> None:
        rows = await self._system.pool.fetch(_HOLDINGS_SQL, self._venue.name)
        holders: dict[str, set[int]] = defaultdict(set)
        for r in rows:
            holders[r["symbol"]].add(r["user_id"])
        self._holders = dict(holders)

    async def tick(self) -> int:
        """One round: fetch, publish, fan out. Returns the number of followers told."""
        self.ticks += 1
        symbols = sorted(self._holders)
        now = time.monotonic()
        marks: dict[str, Decimal] = {}
        try:
            if self._venue.kind != "paper":
                # A ccxt venue answers every symbol's mark with the one call it makes for a few: take them all, so
                # the router has a fresh mark for a signal on a symbol nobody holds yet.
                marks = await self._venue.adapter.fetch_marks([])
            elif symbols:
                marks = await self._venue.adapter.fetch_marks(symbols)
        except Exception as exc:  # noqa: BLE001 - no new marks: the old ones age, and followers are told they are stale
            log.warning("prices.tick_failed", venue=self._venue.name, error=f"{type(exc).__name__}: {exc}")
        for symbol in marks:
            self._fresh_at[symbol] = now
        self._venue.marks = {**self._venue.marks, **marks}
        stale = frozenset(s for s in symbols if now - self._fresh_at.get(s, 0.0) > self._stale_s)
        self._log_stale(stale)
        by_user: dict[int, dict[str, Decimal]] = defaultdict(dict)
        for symbol in symbols:
            mark = self._venue.marks.get(symbol)
            if mark is None:
                continue
            for user_id in self._holders.get(symbol, ()):
                by_user[user_id][symbol] = mark
        supervisor = self._system.supervisor
        told = 0
        at_ns = time.monotonic_ns()
        for user_id, user_marks in by_user.items():
            ref = supervisor.ref(user_id) if supervisor is not None else None  # not refs(): a copy of 100k
            if ref is None:
                continue
            user_stale = frozenset(s for s in user_marks if s in stale)
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(PriceUpdate(venue=self._venue.name, marks=user_marks, stale_symbols=user_stale, at_ns=at_ns))
                told += 1
        metrics.incr("prices.ticks")
        return told

    def _log_stale(self, stale: frozenset[str]) -> None:
        for symbol in stale - self._stale_logged:
            log.warning("price.stale", venue=self._venue.name, symbol=symbol, stale_after_ms=self._stale_s * 1000)
        for symbol in self._stale_logged - stale:
            log.info("price.fresh", venue=self._venue.name, symbol=symbol)
        self._stale_logged = set(stale)

    def holders(self) -> dict[str, set[int]]:
        return {k: set(v) for k, v in self._holders.items()}

    def state(self) -> dict[str, Any]:
        return {"venue": self._venue.name, "symbols": len(self._holders), "ticks": self.ticks}
