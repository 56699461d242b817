"""PriceFeed: who holds what (the positions table), one batched fetch per tick, per-follower fan-out, staleness.

The feed runs against the test PostgreSQL (its holdings query is real) and a paper venue, with the rest of the
system replaced by a stand-in: followers are recorders that keep every ``PriceUpdate`` they are told. So a test
sees exactly what each follower received, and drives each tick itself. Last, the feed's share of a venue's
weight budget, which ``actors.venues`` takes out of the exchange actor's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import pytest
import structlog

from actors.price_feed import PriceFeed
from actors.venues import Venue
from adapters.database import connect_pool
from adapters.paper import PaperVenue
from engine import logs as engine_logs
from engine.config import VenueConfig
from engine.messages import PriceUpdate
from tests.pg import execute

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
class Supervisor:
    recorders: dict[int, Recorder] = field(default_factory=dict)

    def ref(self, user_id: int) -> Recorder | None:
        return self.recorders.get(user_id)


@dataclass
class System:
    pool: asyncpg.Pool
    supervisor: Supervisor


class FlakyVenue(PaperVenue):
    """A paper venue whose ticker call can leave symbols out (``frozen``) or fail outright (``down``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frozen: set[str] = set()
        self.down = False
        self.fetches: list[list[str]] = []

    async def fetch_marks(self, symbols: list[str]) -> dict[str, Decimal]:
        self.fetches.append(list(symbols))
        if self.down:
            raise ConnectionError("paper: connection reset (test)")
        marks = await super().fetch_marks(symbols)
        return {s: m for s, m in marks.items() if s not in self.frozen}


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    # Loggers may already be cached by an earlier engine.logs.configure(): drop the caches around the capture.
    engine_logs._reset_caches()
    with structlog.testing.capture_logs() as entries:
        yield entries
    engine_logs._reset_caches()


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
    dsn: str, venue: PaperVenue, users: list[int], body: Callable[[PriceFeed, Supervisor], Awaitable[T]]
) -> T:
    async def main() -> T:
        pool = await connect_pool(dsn, min_size=1, max_size=2)
        try:
            supervisor = Supervisor({uid: Recorder() for uid in users})
            config = VenueConfig(name="paper", price_stale_after_ms=STALE_MS)
            feed = PriceFeed(System(pool, supervisor), Venue(config, venue, None, {}))  # type: ignore[arg-type]
            return await body(feed, supervisor)
        finally:
            await pool.close()

    return asyncio.run(main())


async def wait_past_stale() -> None:
    await asyncio.sleep(STALE_MS / 1000 * 3)


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

    async def body(feed: PriceFeed, supervisor: Supervisor) -> None:
        await feed._refresh_holdings()
        holders = {s: users for s, users in feed.holders().items() if users & {201, 202, 203, 204}}
        assert holders == {"BTC/USDT:USDT": {201}, "ETH/USDT": {201, 202}}
        assert await feed.tick() >= 2
        assert len(venue.fetches) == 1  # one batched call for every held symbol
        assert {"BTC/USDT:USDT", "ETH/USDT"} <= set(venue.fetches[0])
        (to_201,) = supervisor.recorders[201].updates
        assert to_201.venue == "paper"
        assert to_201.marks == {"BTC/USDT:USDT": D(60000), "ETH/USDT": D(3000)}
        assert to_201.stale_symbols == frozenset()
        (to_202,) = supervisor.recorders[202].updates
        assert to_202.marks == {"ETH/USDT": D(3000)}
        assert supervisor.recorders[203].updates == supervisor.recorders[204].updates == []

        venue.set_mark("BTC", D(61000))
        await feed.tick()
        assert supervisor.recorders[201].updates[-1].marks["BTC/USDT:USDT"] == D(61000)
        assert feed._venue.marks["BTC/USDT:USDT"] == D(61000)  # published for the router too

    run_with_feed(pg_dsn, venue, [201, 202, 203, 204], body)


def test_stale_flagged_and_logged_once_per_change(pg_dsn: str, captured: list[dict[str, Any]]) -> None:
    seed_positions(pg_dsn, [(211, "paper", "LINK/USDT:USDT", "open"), (211, "paper", "AVAX/USDT:USDT", "open")])
    venue = FlakyVenue()
    link = "LINK/USDT:USDT"

    async def body(feed: PriceFeed, supervisor: Supervisor) -> list[frozenset[str]]:
        await feed._refresh_holdings()
        updates = supervisor.recorders[211].updates
        await feed.tick()  # fresh
        venue.frozen.add(link)  # the venue stops quoting it
        await feed.tick()  # within the staleness window: still fresh
        await wait_past_stale()
        await feed.tick()  # stale now: flagged, logged
        await feed.tick()  # still stale: flagged, not logged again
        venue.frozen.clear()
        venue.set_mark("LINK", D(15))
        await feed.tick()  # fresh again
        venue.frozen.add(link)
        await wait_past_stale()
        await feed.tick()  # stale again: logged again
        assert [u.marks[link] for u in updates] == [D(14), D(14), D(14), D(14), D(15), D(15)]
        assert all(u.marks["AVAX/USDT:USDT"] == D(30) for u in updates)
        return [u.stale_symbols for u in updates]

    stale = run_with_feed(pg_dsn, venue, [211], body)
    flagged = frozenset({link})
    assert stale == [frozenset(), frozenset(), flagged, flagged, frozenset(), flagged]
    mine = [e for e in captured if e.get("symbol") == link]
    changes = [e["event"] for e in mine if e["event"].startswith("price.")]
    assert changes == ["price.stale", "price.fresh", "price.stale"]
    assert mine[0]["log_level"] == "warning" and mine[0]["stale_after_ms"] == STALE_MS


def test_marks_go_stale_when_the_venue_stops_answering(pg_dsn: str, captured: list[dict[str, Any]]) -> None:
    """A ticker call that fails leaves the last marks in place; once they are older than the limit every
    follower is told they are stale (so no SL/TP/liquidation decision is taken on them)."""
    seed_positions(pg_dsn, [(221, "paper", "BNB/USDT:USDT", "open")])
    venue = FlakyVenue()
    bnb = "BNB/USDT:USDT"

    async def body(feed: PriceFeed, supervisor: Supervisor) -> list[PriceUpdate]:
        await feed._refresh_holdings()
        await feed.tick()
        venue.down = True
        await wait_past_stale()
        await feed.tick()
        await feed.tick()
        venue.down = False
        await feed.tick()
        return supervisor.recorders[221].updates

    updates = run_with_feed(pg_dsn, venue, [221], body)
    assert [u.stale_symbols for u in updates] == [frozenset(), {bnb}, {bnb}, frozenset()]
    assert all(u.marks == {bnb: D(580)} for u in updates)
    events = [e["event"] for e in captured if e.get("symbol") == bnb or e["event"] == "prices.tick_failed"]
    assert events.count("price.stale") == 1 and events.count("price.fresh") == 1
    assert events.count("prices.tick_failed") == 2


# ---- the feed's share of a venue's weight budget (actors.venues.order_weight_per_minute) ------------------
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
    captured: list[dict[str, Any]], kind: str, weight_per_minute: int, poll_ms: float, for_orders: int,
    warned_feed_weight: int | None,
) -> None:  # fmt: skip
    from actors.venues import _make_adapter, order_weight_per_minute

    cfg = VenueConfig(name=f"{kind}-futures", kind=kind, trade_types=("futures",),  # type: ignore[arg-type]
                      weight_per_minute=weight_per_minute, price_poll_interval_ms=poll_ms)  # fmt: skip
    adapter = _make_adapter(None, cfg)  # type: ignore[arg-type]
    try:
        assert order_weight_per_minute(cfg, adapter) == for_orders
    finally:
        if kind != "paper":
            asyncio.run(adapter.close())
    warnings = [e for e in captured if e["event"] == "venue.price_feed_weight_high"]
    if warned_feed_weight is None:
        assert warnings == []
    else:
        assert warnings == [
            {"event": "venue.price_feed_weight_high", "log_level": "warning", "venue": cfg.name,
             "feed_weight_per_minute": warned_feed_weight, "weight_per_minute": weight_per_minute,
             "hint": "raise price_poll_interval_ms"},
        ]  # fmt: skip
