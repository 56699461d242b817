"""Scenario 7, price tick: what one tick costs with 1,000 followers holding 10,000 open futures positions (10
symbols each).

One tick, end to end, is ``PriceFeed.tick()`` (one batched ``fetch_marks`` on the paper venue, the fan-out of
one ``PriceUpdate`` per follower) until every follower has handled its update (marked its 10 positions to
market and checked SL / TP / liquidation on each). Measured over ``quiet_ticks`` ticks with every mark moving
by up to ±1 % (no trigger is hit), then over ``sl_ticks`` ticks where one symbol gaps through every holder's
stop loss: 1,000 positions (10 % of the book) start their close in that tick. For those the time until every
close has filled is reported too (the close round trip: intent, group commit, paper venue, settlement). After
each such tick a whale signal (untimed) opens the symbol again, so every tick meets the full book.

The positions are written straight into the run's PostgreSQL (fsync on) before the engine starts (start-up
recovery loads them), and the paper venue is given the same futures positions so the reduce-only closes can
fill. The first tick of each kind is a warm-up and is not counted.

    .venv/bin/python -m bench price_tick [--quick] [--no-write]
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

from actors.follower import FollowerActor
from adapters import database as db
from adapters.paper import PaperVenue
from adapters.paper_markets import DEFAULT_MARKS, default_markets
from bench import configure_logs
from bench._engine import engine_config, insert_signal_row, make_signal, new_database
from bench._report import row
from engine.control import RouteSignal
from engine.events import DomainEvent, PositionClosed, PositionOpened
from engine.ids import position_id_for
from engine.messages import PriceUpdate
from node.price_feed import PriceFeed
from node.system import EngineSystem

SCENARIO = "7 price tick"
D = Decimal
BASES = tuple(DEFAULT_MARKS)  # the 10 default bases
LEVERAGE = 5
MARGIN = D(100)


class _Counter:
    """Counts something (handled PriceUpdates, published PositionOpened or PositionClosed events); waits until a
    total is reached."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.value = 0

    def hit(self) -> None:
        with self._cond:
            self.value += 1
            self._cond.notify_all()

    def wait_for(self, target: int, timeout_s: float = 300.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.value >= target, timeout_s):
                raise TimeoutError(f"only {self.value} of {target} after {timeout_s}s")


def _instrument(updates: _Counter) -> None:
    original = FollowerActor._on_prices

    def counted(self: FollowerActor, update: PriceUpdate) -> None:
        original(self, update)
        updates.hit()

    FollowerActor._on_prices = counted  # type: ignore[method-assign,assignment]


def _position_rows(followers: int, markets: dict[str, Any]) -> tuple[list[tuple[Any, ...]], dict[int, D]]:
    rows: list[tuple[Any, ...]] = []
    spent: dict[int, D] = {}
    for uid in range(1, followers + 1):
        for k, base in enumerate(BASES):
            symbol = f"{base}/USDT:USDT"
            price = DEFAULT_MARKS[base]
            step = markets[symbol].qty_step
            qty = (MARGIN * LEVERAGE / price / step).to_integral_value(rounding=ROUND_DOWN) * step
            margin = qty * price / LEVERAGE
            spent[uid] = spent.get(uid, D(0)) + margin
            rows.append(
                (
                    position_id_for(900_000 + k, uid), uid, "paper", symbol, "futures", "long", qty, price, LEVERAGE,
                    margin, "open", 1, price * D("0.9"), price * D("1.2"), D(0), D(0),
                )
            )  # fmt: skip
    return rows, spent


async def _seed(dsn: str, followers: int, markets: dict[str, Any]) -> list[tuple[Any, ...]]:
    conn = await db.connect(dsn, timeout_s=30)
    try:
        await conn.execute("INSERT INTO whales (id, name) VALUES (1, 'bench-whale')")
        ids = range(1, followers + 1)
        await conn.copy_records_to_table(
            "users", records=[(u, f"u{u}", 20) for u in ids], columns=["id", "name", "max_leverage"]
        )
        await conn.copy_records_to_table(
            "user_whale_follows",
            records=[(u, 1, D(10), D(20), 20) for u in ids],
            columns=["user_id", "whale_id", "stop_loss_pct", "take_profit_pct", "max_leverage"],
        )
        rows, spent = _position_rows(followers, markets)
        await conn.copy_records_to_table(
            "positions",
            records=rows,
            columns=[
                "position_id", "user_id", "venue", "symbol", "trade_type", "side", "qty", "entry_price", "leverage",
                "margin_usdt", "status", "whale_id", "stop_loss_price", "take_profit_price", "realized_pnl_usdt",
                "unrealized_pnl_usdt",
            ],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "balances",
            records=[(u, "paper", "USDT", D(10_000) - spent[u], D(0)) for u in ids],
            columns=["user_id", "venue", "asset", "free", "reserved"],
        )
        return rows
    finally:
        await conn.close()


class _Ticks:
    """The engine under test and the clock around ``PriceFeed.tick()``."""

    def __init__(self, system: EngineSystem, venue: PaperVenue, dsn: str, followers: int) -> None:
        self.system, self.venue, self.dsn, self.followers = system, venue, dsn, followers
        self.updates, self.opens, self.closes = _Counter(), _Counter(), _Counter()
        _instrument(self.updates)
        system.subscribe(self._on_event)
        self.feed = next(s for s in system.services if isinstance(s, PriceFeed))
        system.io.run(self.feed._refresh_holdings(), 60)  # the feed's own loop ticks once an hour here
        self.told = 0
        self._signal_ids = iter(range(10_000, 1_000_000))

    def _on_event(self, event: DomainEvent) -> None:
        if isinstance(event, PositionClosed):
            self.closes.hit()
        elif isinstance(event, PositionOpened):
            self.opens.hit()

    def one(self) -> tuple[float, float, float]:
        """One tick: (started, seconds until the fan-out was told, seconds until every follower handled it)."""
        target = self.updates.value
        started = time.perf_counter()
        self.told = self.system.io.run(self.feed.tick(), 60)
        fanned = time.perf_counter()
        self.updates.wait_for(target + self.told)
        return started, fanned - started, time.perf_counter() - started

    def quiet(self, rng: random.Random) -> tuple[float, float]:
        """Every mark within ±1 % of its start: no SL (-10 %), TP (+20 %) or liquidation (about -20 % at 5x)."""
        for base in BASES:
            start = DEFAULT_MARKS[base]
            self.venue.set_mark(base, (start * D(1 + rng.uniform(-0.01, 0.01))).quantize(D("0.01")))
        _, fan_s, total_s = self.one()
        return fan_s, total_s

    def stop_loss(self, base: str) -> tuple[float, float, float]:
        """``base`` gaps 15 % down, through every holder's stop loss: (fan-out, tick, until all closes filled).
        Then (untimed) the whale opens ``base`` again, so the next such tick also meets 10,000 positions."""
        self.venue.set_mark(base, DEFAULT_MARKS[base] * D("0.85"))
        target = self.closes.value + self.followers
        started, fan_s, total_s = self.one()
        self.closes.wait_for(target)
        filled_s = time.perf_counter() - started
        self._reopen(base)
        return fan_s, total_s, filled_s

    def _reopen(self, base: str) -> None:
        price = DEFAULT_MARKS[base]
        self.venue.set_mark(base, price)
        signal = make_signal(next(self._signal_ids), whale_id=1, symbol=f"{base}/USDT:USDT", price=price,
                             leverage=LEVERAGE)  # fmt: skip
        insert_signal_row(self.dsn, signal)
        target = self.opens.value + self.followers
        self.system.router.tell(RouteSignal(signal=signal, received_at_ns=time.monotonic_ns()))
        self.opens.wait_for(target)
        # The next tick starts on a quiet engine, not while these 1,000 opens are still being written.
        if not self.system.persistence.proxy().flush().get():
            raise RuntimeError("persistence did not flush within its timeout")


def measure(*, followers: int, quiet_ticks: int, sl_ticks: int, seed: int = 7) -> dict[str, Any]:
    """An engine over ``followers`` × 10 positions; ``quiet_ticks`` and ``sl_ticks`` timed ticks after one
    warm-up tick of each kind. Times in seconds."""
    rng = random.Random(seed)
    dsn = new_database("price_tick")
    venue = PaperVenue(latency_ms=0)
    markets = {m.symbol: m for m in default_markets()}
    t0 = time.perf_counter()
    rows = asyncio.run(_seed(dsn, followers, markets))
    seed_s = time.perf_counter() - t0
    for r in rows:  # the venue holds what our books hold, so reduce-only closes can fill
        qty, price, leverage, margin = r[6], r[7], r[8], r[9]
        signed = qty if str(r[5]) == "long" else -qty
        venue.restore_position(r[1], r[3], qty=signed, entry_price=price, margin=margin, leverage=leverage)
    with tempfile.TemporaryDirectory(prefix="bench-tick-") as tmp:
        # The bench's rate budget (as scenarios 2 and 6), and a feed that leaves the ticking to us.
        config = engine_config(
            dsn, Path(tmp),
            ENGINE_VENUES='[{name = "paper", price_poll_interval_ms = 3600000, weight_per_minute = 100000000,'
            " orders_per_second_per_account = 1000, max_in_flight = 100000}]",
        )  # fmt: skip
        system = EngineSystem(config, venue_adapters={"paper": venue})
        t0 = time.perf_counter()
        system.start()
        try:
            start_s = time.perf_counter() - t0
            ticks = _Ticks(system, venue, dsn, followers)
            held = sum(len(users) for users in ticks.feed.holders().values())
            quiet = [ticks.quiet(rng) for _ in range(1 + quiet_ticks)][1:]
            hit = [ticks.stop_loss(BASES[k % len(BASES)]) for k in range(1 + sl_ticks)][1:]
        finally:
            system.stop()
    return {
        "followers": followers,
        "open_positions": held,
        "followers_told_per_tick": ticks.told,
        "workers": config.runtime.workers,
        "seed_s": seed_s,
        "engine_start_s": start_s,
        "quiet_fan_out_s": [q[0] for q in quiet],
        "quiet_s": [q[1] for q in quiet],
        "sl_fan_out_s": [h[0] for h in hit],
        "sl_s": [h[1] for h in hit],
        "sl_closes_filled_s": [h[2] for h in hit],
    }


def run(*, quick: bool = False) -> list[dict[str, Any]]:

    configure_logs(on=False)
    followers = 1000  # the figure (10,000 positions) in both modes: the whole scenario takes seconds
    m = measure(followers=followers, quiet_ticks=10 if quick else 50, sl_ticks=3 if quick else 10)
    book = f"{m['followers']:,} followers × 10 = {m['open_positions']:,} open positions"
    closes = f"{followers:,} positions (10 %)"
    return [
        row(SCENARIO, f"quiet tick, {book}", m["quiet_s"], unit="s",
            note=f"PriceFeed.tick() (one fetch_marks on the paper venue, one PriceUpdate to each of the "
            f"{m['followers_told_per_tick']:,} followers) until every follower has marked its 10 positions and "
            f"checked SL/TP/liquidation on each; marks move ±1 %, nothing triggers; pool workers: {m['workers']}; "
            f"seeding {m['seed_s']:.1f} s, engine start {m['engine_start_s']:.1f} s (not in the figures)"),
        row(SCENARIO, "quiet tick, fan-out only (fetch_marks + tells)", m["quiet_fan_out_s"], unit="s"),
        row(SCENARIO, f"tick where {closes} go through their SL", m["sl_s"], unit="s",
            note="one symbol gaps 15 % down through every holder's stop loss: until every follower has handled "
            "the tick (and started its close); after each such tick (untimed) a whale signal opens that symbol "
            "again, so every one meets 10,000 open positions"),
        row(SCENARIO, "same tick, fan-out only", m["sl_fan_out_s"], unit="s"),
        row(SCENARIO, f"same tick until all {followers:,} closes filled", m["sl_closes_filled_s"], unit="s",
            note="from the tick to the last PositionClosed: close intents group-committed (fsync on), paper "
            "fills, settlement"),
    ]  # fmt: skip
