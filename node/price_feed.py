"""Price feed, one per venue: marks for every symbol with an open position, pushed to the followers holding it.

Each interval it asks the venue for the marks of the symbols held on it in ONE batched call
(``fetch_marks``: ccxt ``fetch_tickers``; the paper venue's own book), publishes them for the router (a
read-only dict replaced wholesale, so readers never see a half-written one) and tells each follower a
``PriceUpdate`` with only the symbols that follower holds. A symbol whose last good mark is older than
``price_stale_after_ms`` is listed in ``stale_symbols``: followers take no SL/TP or liquidation decision on it.

Who holds what comes from the followers' open positions, read from PostgreSQL every few intervals (the books
are there, and a feed must not ask 100,000 actors), with the holders' refs asked of the router in the same
refresh. A failed read keeps the last holders and is retried the
next round: nothing but cancellation ends the feed, since without it no follower checks SL/TP.

A venue that bans the feed (``VenueBanned``) is not asked again before the ban ends, and one that rate-limits
it (``RetryableError``) is asked after a jittered pause that doubles per refusal (``engine.backoff``; at least
its ``Retry-After``, at most ``_MAX_BACKOFF_S``) until it answers: asking anyway escalates the ban (Binance: 2
minutes up to 3 days), and a banned venue takes no stop-loss close from the exchange actor either. Marks go
stale meanwhile. Runs on the I/O loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

import asyncpg
import pykka

from actors.follower import FollowerActor
from actors.router import SignalRouterActor
from engine import metrics
from engine.backoff import backoff_s
from engine.clock import Clock
from engine.logs import get_logger
from engine.messages import PriceUpdate
from engine.venue import RetryableError, VenueBanned
from node.venues import Venue

log = get_logger(__name__)

_HOLDINGS_SQL = """
SELECT user_id, symbol FROM positions WHERE venue = $1 AND status IN ('open', 'closing')
"""
_ASK_TIMEOUT_S = 30.0
_MAX_BACKOFF_S = 30.0  # the longest pause after 429s (a ban's own length is always waited out in full)
_JITTER = random.Random()  # spreads the pauses of feeds refused at once (engine.backoff)


class PriceFeed:
    """See the module docstring."""

    def __init__(
        self,
        venue: Venue,
        *,
        pool: asyncpg.Pool,
        router: pykka.ActorRef[SignalRouterActor],
        clock: Clock,
        holdings_refresh_every: int = 5,
    ) -> None:
        """``pool`` reads who holds what; ``router`` (the followers' refs' owner) gives the holders' refs;
        ``clock`` dates marks (staleness) and times the back-off after a ban or a 429."""
        self._pool = pool
        self._clock = clock
        self._router = router
        self._venue = venue
        self._interval_s = venue.config.price_poll_interval_ms / 1000
        self._stale_s = venue.config.price_stale_after_ms / 1000
        self._refresh_every = holdings_refresh_every
        self._holders: dict[str, set[int]] = {}
        self._refs: dict[int, pykka.ActorRef[FollowerActor]] = {}  # the holders', asked with the holdings
        self._fresh_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._holdings_due = True
        self._venue_paused_until = 0.0  # the clock's monotonic time: no ticker call before (a ban or a 429 back-off)
        self._venue_refusals = 0  # 429s / bans in a row; the back-off doubles with each
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
            await self._round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            if self._wake.is_set():
                self._wake.clear()
                self._holdings_due = True  # a poke follows a change: fills may have opened positions

    async def _round(self) -> None:
        """Refresh the holdings when due, then tick. Never raises: only cancellation ends the loop."""
        if self._holdings_due or self.ticks % self._refresh_every == 0:
            try:
                await self._refresh_holdings()
                self._holdings_due = False
            except Exception as exc:  # noqa: BLE001 - database away: the last holders keep getting prices
                self._holdings_due = True  # retried next round
                log.warning(
                    "prices.holdings_refresh_failed", venue=self._venue.name, error=f"{type(exc).__name__}: {exc}"
                )
        try:
            await self.tick()
        except Exception as exc:  # noqa: BLE001 - a failed tick leaves marks to go stale, visibly
            log.warning("prices.tick_failed", venue=self._venue.name, error=f"{type(exc).__name__}: {exc}")

    async def _refresh_holdings(self) -> None:
        rows = await self._pool.fetch(_HOLDINGS_SQL, self._venue.name)
        holders: dict[str, set[int]] = defaultdict(set)
        for r in rows:
            holders[r["symbol"]].add(r["user_id"])
        user_ids = {uid for users in holders.values() for uid in users}
        router = self._router
        # One ask per refresh, off the loop (it blocks), not one lookup per follower per tick.
        self._refs = await asyncio.get_running_loop().run_in_executor(
            None, lambda: router.proxy().refs_of(user_ids).get(timeout=_ASK_TIMEOUT_S)
        )
        self._holders = dict(holders)

    async def tick(self) -> int:
        """One round: fetch, publish, fan out. Returns the number of followers told."""
        self.ticks += 1
        symbols = sorted(self._holders)
        now = self._clock.monotonic()
        marks = await self._fetch_marks(symbols) if now >= self._venue_paused_until else {}
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
        told = 0
        at_ns = self._clock.monotonic_ns()
        for user_id, user_marks in by_user.items():
            ref = self._refs.get(user_id)
            if ref is None:
                continue
            user_stale = frozenset(s for s in user_marks if s in stale)
            try:
                ref.tell(PriceUpdate(venue=self._venue.name, marks=user_marks, stale_symbols=user_stale, at_ns=at_ns))
                told += 1
            except pykka.ActorDeadError:
                self._holdings_due = True  # restarted by the supervisor: its new ref comes with the next refresh
        metrics.incr("prices.ticks")
        return told

    async def _fetch_marks(self, symbols: list[str]) -> dict[str, Decimal]:
        """The venue's marks; none (the old ones age, followers are told they are stale) when it fails."""
        batch = self._venue.adapter.supports_mark_batch
        if not batch and not symbols:
            return {}  # a venue that answers what it is asked: nothing to ask when nobody holds anything
        # A venue that answers every symbol's mark with the one call it makes for a few: take them all, so the
        # router has a fresh mark for a signal on a symbol nobody holds yet.
        wanted = [] if batch else symbols
        try:
            marks: dict[str, Decimal] = await self._venue.adapter.fetch_marks(wanted)
        except (VenueBanned, RetryableError) as exc:
            self._back_off(exc)
            return {}
        except Exception as exc:  # noqa: BLE001 - no new marks: the old ones age, and followers are told they are stale
            log.warning("prices.tick_failed", venue=self._venue.name, error=f"{type(exc).__name__}: {exc}")
            return {}
        if self._venue_refusals:
            log.info("prices.venue_resumed", venue=self._venue.name, refusals=self._venue_refusals)
            self._venue_refusals = 0
        return marks

    def _back_off(self, exc: VenueBanned | RetryableError) -> None:
        """No ticker call until the ban ends, or for a pause doubling per 429 in a row from two intervals
        (``engine.backoff``: jittered, capped; the Retry-After at least)."""
        self._venue_refusals += 1
        if isinstance(exc, VenueBanned):
            reason, pause_s = "banned", exc.ban_s
        else:
            jittered_s = backoff_s(self._venue_refusals, base_s=self._interval_s * 2, cap_s=_MAX_BACKOFF_S, rng=_JITTER)
            reason, pause_s = "rate_limited", max(jittered_s, exc.retry_after_s or 0.0)
        self._venue_paused_until = self._clock.monotonic() + pause_s  # from now: the call itself took time
        log.warning(
            "prices.venue_backoff",
            venue=self._venue.name,
            reason=reason,
            pause_ms=round(pause_s * 1000),
            refusals=self._venue_refusals,
            error=f"{type(exc).__name__}: {exc}",
        )

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
