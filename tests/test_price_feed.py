"""PriceFeed: who holds what (the positions table), one batched fetch per tick, per-follower fan-out, staleness.

The feed runs against the test PostgreSQL (its holdings query is real) and a paper venue, with the rest of the
system replaced by a stand-in: followers are recorders that keep every ``PriceUpdate`` they are told. So a test
sees exactly what each follower received, and drives each tick itself (or runs the feed's own loop, for what
only the loop does: a database outage, through ``tests.kit.TcpProxy``). Then the back-off from a venue that
bans or rate-limits the feed. Last, the feed's share of a venue's weight budget, which ``node.venues`` takes
out of the exchange actor's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import pykka
import pytest

from adapters.database import connect_pool
from adapters.paper import PaperVenue
from adapters.venue_factory import make_adapter
from engine.clock import SYSTEM_CLOCK, Clock, FakeClock
from engine.config import VenueConfig
from engine.messages import PriceUpdate
from engine.venue import RetryableError, VenueBanned
from node.price_feed import PriceFeed
from node.venues import Venue, order_weight_per_minute
from tests.kit import LogEntries, TcpProxy, execute, wait_for_async

D = Decimal
T = TypeVar("T")
STALE_MS = 50.0


class Recorder:
    """Stands in for a follower's actor ref."""

    def __init__(self) -> None:
        self.updates: list[PriceUpdate] = []

    def tell(self, message: PriceUpdate) -> None:
        self.updates.append(message)


@dataclass
class Router:
    """Stands in for the router's ref: its proxy answers ``refs_of`` with the recorders."""

    recorders: dict[int, Recorder] = field(default_factory=dict)

    def proxy(self) -> Router:
        return self

    def refs_of(self, user_ids: Iterable[int]) -> pykka.Future[dict[int, Recorder]]:
        future: pykka.Future[dict[int, Recorder]] = pykka.ThreadingFuture()
        future.set({uid: self.recorders[uid] for uid in user_ids if uid in self.recorders})
        return future


class FlakyVenue(PaperVenue):
    """A paper venue whose ticker call can leave symbols out (``frozen``), fail outright (``down``), answer
    418 until ``banned_until`` (the test clock's monotonic s) or 429 while ``limited`` (with ``retry_after_s``),
    as the ccxt adapter classifies them."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.frozen: set[str] = set()
        self.down = False
        self.banned_until = 0.0
        self.limited = False
        self.retry_after_s: float | None = None
        self.fetches: list[list[str]] = []

    async def fetch_marks(self, symbols: list[str]) -> dict[str, Decimal]:
        self.fetches.append(list(symbols))
        if self.down:
            raise ConnectionError("paper: connection reset (test)")
        if (ban_s := self.banned_until - self.clock.monotonic()) > 0:
            raise VenueBanned("paper: 418 IP banned (test)", ban_s=ban_s)
        if self.limited:
            raise RetryableError("paper: 429 too many requests (test)", retry_after_s=self.retry_after_s)
        marks = await super().fetch_marks(symbols)
        return {s: m for s, m in marks.items() if s not in self.frozen}


def seed_positions(dsn: str, rows: list[tuple[int, str, str, str]]) -> None:
    """``(user_id, venue, symbol, status)`` position rows (the other columns do not matter to the feed)."""
    for n, (user_id, venue, symbol, status) in enumerate(rows):
        execute(
            dsn,
            """INSERT INTO positions (position_id, user_id, venue, symbol, trade_type, side, qty, entry_price,
                   leverage, margin_usdt, status)
               VALUES ($1, $2, $3, $4, 'futures', 'long', 1, 100, 1, 100, $5)""",
            f"pfeed{user_id}x{n}",
            user_id,
            venue,
            symbol,
            status,
        )


def run_with_feed(
    dsn: str,
    venue: PaperVenue,
    users: list[int],
    body: Callable[[PriceFeed, Router], Awaitable[T]],
    *,
    poll_ms: float = 1000.0,
    clock: Clock = SYSTEM_CLOCK,
) -> T:
    async def main() -> T:
        pool = await connect_pool(dsn, min_size=1, max_size=2)
        try:
            router = Router({uid: Recorder() for uid in users})
            config = VenueConfig(name="paper", price_stale_after_ms=STALE_MS, price_poll_interval_ms=poll_ms)
            feed = PriceFeed(Venue(config, venue, None, {}), pool=pool, router=router, clock=clock)  # type: ignore[arg-type]
            return await body(feed, router)
        finally:
            await pool.close()

    return asyncio.run(main())


def past_stale(clock: FakeClock) -> None:
    clock.advance(STALE_MS / 1000 * 3)


async def tick_for(feed: PriceFeed, clock: FakeClock, seconds: float) -> None:
    """Tick every 2 ms of the test clock: far more often than any back-off lets the venue be asked."""
    for _ in range(round(seconds / 0.002)):
        await feed.tick()
        clock.advance(0.002)


def test_each_follower_gets_only_the_symbols_it_holds(pg_dsn: str) -> None:
    seed_positions(
        pg_dsn,
        [
            (201, "paper", "BTC/USDT:USDT", "open"),
            (201, "paper", "ETH/USDT", "closing"),
            (202, "paper", "ETH/USDT", "open"),
            (202, "paper", "SOL/USDT:USDT", "closed"),  # closed: not held any more
            (203, "other", "XRP/USDT:USDT", "open"),  # another venue's feed serves it
            (204, "paper", "DOGE/USDT:USDT", "liquidated"),
        ],
    )
    venue = FlakyVenue()

    async def body(feed: PriceFeed, router: Router) -> None:
        await feed._refresh_holdings()
        holders = {s: users for s, users in feed.holders().items() if users & {201, 202, 203, 204}}
        assert holders == {"BTC/USDT:USDT": {201}, "ETH/USDT": {201, 202}}
        assert await feed.tick() >= 2
        assert len(venue.fetches) == 1  # one batched call for every held symbol
        assert {"BTC/USDT:USDT", "ETH/USDT"} <= set(venue.fetches[0])
        (to_201,) = router.recorders[201].updates
        assert to_201.venue == "paper"
        assert to_201.marks == {"BTC/USDT:USDT": D(60000), "ETH/USDT": D(3000)}
        assert to_201.stale_symbols == frozenset()
        (to_202,) = router.recorders[202].updates
        assert to_202.marks == {"ETH/USDT": D(3000)}
        assert router.recorders[203].updates == router.recorders[204].updates == []

        venue.set_mark("BTC", D(61000))
        await feed.tick()
        assert router.recorders[201].updates[-1].marks["BTC/USDT:USDT"] == D(61000)
        assert feed._venue.marks["BTC/USDT:USDT"] == D(61000)  # published for the router too

    run_with_feed(pg_dsn, venue, [201, 202, 203, 204], body)


def test_stale_flagged_and_logged_once_per_change(pg_dsn: str, captured_logs: LogEntries) -> None:
    seed_positions(pg_dsn, [(211, "paper", "LINK/USDT:USDT", "open"), (211, "paper", "AVAX/USDT:USDT", "open")])
    clock = FakeClock()
    venue = FlakyVenue(clock)
    link = "LINK/USDT:USDT"

    async def body(feed: PriceFeed, router: Router) -> list[frozenset[str]]:
        await feed._refresh_holdings()
        updates = router.recorders[211].updates
        await feed.tick()  # fresh
        venue.frozen.add(link)  # the venue stops quoting it
        await feed.tick()  # within the staleness window: still fresh
        past_stale(clock)
        await feed.tick()  # stale now: flagged, logged
        await feed.tick()  # still stale: flagged, not logged again
        venue.frozen.clear()
        venue.set_mark("LINK", D(15))
        await feed.tick()  # fresh again
        venue.frozen.add(link)
        past_stale(clock)
        await feed.tick()  # stale again: logged again
        assert [u.marks[link] for u in updates] == [D(14), D(14), D(14), D(14), D(15), D(15)]
        assert all(u.marks["AVAX/USDT:USDT"] == D(30) for u in updates)
        return [u.stale_symbols for u in updates]

    stale = run_with_feed(pg_dsn, venue, [211], body, clock=clock)
    flagged = frozenset({link})
    assert stale == [frozenset(), frozenset(), flagged, flagged, frozenset(), flagged]
    mine = [e for e in captured_logs if e.get("symbol") == link]
    changes = [e["event"] for e in mine if e["event"].startswith("price.")]
    assert changes == ["price.stale", "price.fresh", "price.stale"]
    assert mine[0]["log_level"] == "warning" and mine[0]["stale_after_ms"] == STALE_MS


def test_marks_go_stale_when_the_venue_stops_answering(pg_dsn: str, captured_logs: LogEntries) -> None:
    """A ticker call that fails leaves the last marks in place; once they are older than the limit every
    follower is told they are stale (so no SL/TP/liquidation decision is taken on them)."""
    seed_positions(pg_dsn, [(221, "paper", "BNB/USDT:USDT", "open")])
    clock = FakeClock()
    venue = FlakyVenue(clock)
    bnb = "BNB/USDT:USDT"

    async def body(feed: PriceFeed, router: Router) -> list[PriceUpdate]:
        await feed._refresh_holdings()
        await feed.tick()
        venue.down = True
        past_stale(clock)
        await feed.tick()
        await feed.tick()
        venue.down = False
        await feed.tick()
        return router.recorders[221].updates

    updates = run_with_feed(pg_dsn, venue, [221], body, clock=clock)
    assert [u.stale_symbols for u in updates] == [frozenset(), {bnb}, {bnb}, frozenset()]
    assert all(u.marks == {bnb: D(580)} for u in updates)
    events = [e["event"] for e in captured_logs if e.get("symbol") == bnb or e["event"] == "prices.tick_failed"]
    assert events.count("price.stale") == 1 and events.count("price.fresh") == 1
    assert events.count("prices.tick_failed") == 2


def test_prices_keep_flowing_when_the_holdings_read_fails(pg_dsn: str, captured_logs: LogEntries) -> None:
    """The database goes away just as a poke asks for fresh holdings: the feed logs it, keeps telling the
    holders it knows, and reads the holdings again once the database is back (a new holder gets prices)."""
    seed_positions(pg_dsn, [(231, "paper", "LTC/USDT:USDT", "open")])
    venue = FlakyVenue()
    proxy = TcpProxy.for_dsn(pg_dsn)

    async def body(feed: PriceFeed, router: Router) -> None:
        updates, newcomer = router.recorders[231].updates, router.recorders[232].updates
        await feed.start()
        try:
            await wait_for_async(lambda: len(updates) >= 1)
            proxy.refuse()
            proxy.cut()  # the database is unreachable
            during_outage = len(updates)
            feed.poke()  # a fill: the feed reads the holdings now, and that read fails
            await wait_for_async(
                lambda: len(updates) >= during_outage + 3, message="prices stopped with the database away"
            )
            await asyncio.to_thread(seed_positions, pg_dsn, [(232, "paper", "LTC/USDT:USDT", "open")])  # no proxy
            proxy.resume()
            await wait_for_async(
                lambda: len(newcomer) >= 1, message="holdings not read again after the database came back"
            )
            assert feed._task is not None and not feed._task.done()
        finally:
            await feed.stop()

    try:
        run_with_feed(proxy.dsn(pg_dsn), venue, [231, 232], body, poll_ms=10.0)
    finally:
        proxy.close()
    failed = [e for e in captured_logs if e["event"] == "prices.holdings_refresh_failed"]
    assert failed[0]["log_level"] == "warning" and failed[0]["venue"] == "paper" and failed[0]["error"]


def test_no_ticker_call_while_banned(pg_dsn: str, captured_logs: LogEntries) -> None:
    """A 418 bans the client for ``ban_s``: asking again before its end only lengthens the ban (Binance
    escalates), so the feed waits it out; the marks go stale meanwhile, as for any venue that stops answering."""
    seed_positions(pg_dsn, [(241, "paper", "ADA/USDT:USDT", "open")])
    clock = FakeClock()
    venue = FlakyVenue(clock)
    ada = "ADA/USDT:USDT"
    ban_s = 1.0

    async def body(feed: PriceFeed, router: Router) -> tuple[int, list[PriceUpdate]]:
        await feed._refresh_holdings()
        await feed.tick()
        venue.banned_until = clock.monotonic() + ban_s
        await feed.tick()  # asks, is banned
        past_stale(clock)
        for _ in range(5):
            await feed.tick()  # within the ban (0.15 s of 1 s): does not ask
        calls_during_ban = len(venue.fetches)
        clock.advance(venue.banned_until - clock.monotonic() + 0.05)
        await feed.tick()  # the ban is over: asks again
        return calls_during_ban, router.recorders[241].updates

    calls_during_ban, updates = run_with_feed(pg_dsn, venue, [241], body, clock=clock)
    assert calls_during_ban == 2
    assert len(venue.fetches) == 3
    assert [u.stale_symbols for u in updates] == [frozenset(), frozenset()] + [{ada}] * 5 + [frozenset()]
    (backoff,) = [e for e in captured_logs if e["event"] == "prices.venue_backoff"]
    assert backoff["reason"] == "banned" and backoff["log_level"] == "warning"
    assert 0 < backoff["pause_ms"] <= ban_s * 1000
    assert [e["event"] for e in captured_logs if e["event"] == "prices.venue_resumed"] == ["prices.venue_resumed"]


def test_rate_limited_feed_backs_off_exponentially_until_an_answer(pg_dsn: str) -> None:
    """429s double the pause from two poll intervals on; an answer ends the back-off, so the next 429 starts
    it again from the shortest pause. Counts calls, with a poll of 10 ms, on a test clock."""
    seed_positions(pg_dsn, [(251, "paper", "SOL/USDT", "open")])
    clock = FakeClock()
    venue = FlakyVenue(clock)

    async def body(feed: PriceFeed, router: Router) -> tuple[int, int]:
        updates = router.recorders[251].updates
        await feed._refresh_holdings()
        await feed.tick()
        venue.limited = True
        await tick_for(feed, clock, 0.6)  # pauses 20, 40, 80, 160, 320 ms: ~5 calls, where every tick would be ~300
        limited_calls = len(venue.fetches) - 1
        venue.limited = False
        for _ in range(1000):  # until the feed asks again (after <= 640 ms) and gets an answer
            if not updates[-1].stale_symbols:
                break
            await feed.tick()
            clock.advance(0.002)
        assert not updates[-1].stale_symbols
        venue.limited = True
        before = len(venue.fetches)
        await tick_for(feed, clock, 0.2)  # back to 20, 40, 80 ms pauses: not the 640 ms the next doubling would be
        return limited_calls, len(venue.fetches) - before

    limited_calls, calls_after_reset = run_with_feed(pg_dsn, venue, [251], body, poll_ms=10.0, clock=clock)
    assert 3 <= limited_calls <= 8
    assert calls_after_reset >= 2


def test_rate_limited_feed_waits_the_retry_after(pg_dsn: str) -> None:
    seed_positions(pg_dsn, [(261, "paper", "XRP/USDT", "open")])
    clock = FakeClock()
    venue = FlakyVenue(clock)

    async def body(feed: PriceFeed, router: Router) -> None:
        await feed._refresh_holdings()
        venue.limited, venue.retry_after_s = True, 1.0
        await tick_for(feed, clock, 0.4)  # the exponential pause alone would allow 4 calls by now

    run_with_feed(pg_dsn, venue, [261], body, poll_ms=10.0, clock=clock)
    assert len(venue.fetches) == 1


# ---- the feed's share of a venue's weight budget (node.venues.order_weight_per_minute) ------------------
# The feed calls the adapter itself (one fetch_marks per poll), outside the exchange actor's budget, so the
# exchange actor gets the rest. Weights are the real adapter profiles': Binance fetch_marks (every symbol's
# ticker) 40, Bybit 1; the paper venue's feed reads its own book and costs nothing.
@pytest.mark.parametrize(
    ("kind", "weight_per_minute", "poll_ms", "for_orders", "warned_feed_weight"),
    [
        ("binance", 2400, 5000.0, 2400 - 480, None),  # 12 polls/min x 40
        ("binance", 2400, 7000.0, 2400 - 343, None),  # 342.86/min, rounded up: never over budget
        ("binance", 4800, 1000.0, 4800 - 2400, None),  # exactly half: no warning yet
        ("binance", 4798, 1000.0, 4798 - 2400, 2400),  # over half: warned
        ("binance", 2400, 1000.0, 1, 2400),  # the feed alone takes it all: orders keep a floor of 1/min
        ("bybit", 7200, 1000.0, 7200 - 60, None),
        ("paper", 6000, 1.0, 6000, None),
    ],
)
def test_order_budget_is_the_venue_budget_minus_the_feed(
    captured_logs: LogEntries, kind: str, weight_per_minute: int, poll_ms: float, for_orders: int,
    warned_feed_weight: int | None,
) -> None:  # fmt: skip
    cfg = VenueConfig(name=f"{kind}-futures", kind=kind, trade_types=("futures",),  # type: ignore[arg-type]
                      weight_per_minute=weight_per_minute, price_poll_interval_ms=poll_ms)  # fmt: skip
    adapter = make_adapter(cfg, clock=SYSTEM_CLOCK)
    try:
        assert order_weight_per_minute(cfg, adapter) == for_orders
    finally:
        if kind != "paper":
            asyncio.run(adapter.close())
    warnings = [e for e in captured_logs if e["event"] == "venue.price_feed_weight_high"]
    if warned_feed_weight is None:
        assert warnings == []
    else:
        assert warnings == [
            {"event": "venue.price_feed_weight_high", "log_level": "warning", "venue": cfg.name,
             "feed_weight_per_minute": warned_feed_weight, "weight_per_minute": weight_per_minute,
             "hint": "raise price_poll_interval_ms"},
        ]  # fmt: skip
