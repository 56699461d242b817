"""The cost of one price tick: 1,000 followers holding 10,000 open futures positions (10 symbols each).

One tick, end to end, is ``PriceFeed.tick()`` (one batched ``fetch_marks`` on the paper venue, the fan-out of
one ``PriceUpdate`` per follower) until every follower has handled its update (marked its 10 positions to
market and checked SL / TP / liquidation on each). Measured over ``ticks`` ticks with every mark moving by up
to ±1 % (no trigger is hit), then over ``sl_ticks`` ticks where one symbol gaps through every holder's stop
loss: 1,000 positions (10 % of the book) start their close in that tick. For those the time until every close
has filled is reported too (the close round trip: intent, group commit, paper venue, settlement).

The positions are written straight into PostgreSQL before the engine starts (start-up recovery loads them),
and the paper venue is given the same futures positions so the reduce-only closes can fill.

    .venv/bin/python -m bench.bench_price_tick
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import threading
import time
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

from actors.follower import FollowerActor
from actors.price_feed import PriceFeed
from actors.system import EngineSystem
from adapters import database as db
from adapters import paper
from adapters.embedded_pg import EmbeddedPostgres
from engine import logs
from engine.config import load_config
from engine.events import DomainEvent, PositionClosed
from engine.ids import position_id_for
from engine.messages import PriceUpdate

D = Decimal
BASES = tuple(paper.DEFAULT_MARKS)  # the 10 default bases
LEVERAGE = 5
MARGIN = D(100)


class _Counter:
    """Counts handled PriceUpdates (and published PositionClosed events); wait until a total is reached."""

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

    FollowerActor._on_prices = counted  # type: ignore[method-assign]


def _position_rows(followers: int, markets: dict[str, Any]) -> tuple[list[tuple[Any, ...]], dict[int, D]]:
    rows: list[tuple[Any, ...]] = []
    spent: dict[int, D] = {}
    for uid in range(1, followers + 1):
        for k, base in enumerate(BASES):
            symbol = f"{base}/USDT:USDT"
            price = paper.DEFAULT_MARKS[base]
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
    conn = await db.connect(dsn)
    try:
        await db.apply_schema(conn)
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


def _stats(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(p99, 2),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
    }


def run(followers: int = 1000, ticks: int = 20, sl_ticks: int = 3, warmup: int = 3, seed: int = 7) -> dict[str, Any]:
    """Start an engine over ``followers`` × 10 positions and time ticks. Returns the figures."""
    logs.configure("warning", open(os.devnull, "wb"))  # noqa: SIM115 - lives as long as the process
    rng = random.Random(seed)
    updates, closes = _Counter(), _Counter()
    _instrument(updates)
    with tempfile.TemporaryDirectory(prefix="bench-tick-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg", durable=False)
        system: EngineSystem | None = None
        try:
            server_dsn = server.start()
            dsn = asyncio.run(db.create_database(server_dsn, "bench_tick"))
            venue = paper.PaperVenue(latency_ms=0)
            markets = {m.symbol: m for m in paper.default_markets()}
            t0 = time.perf_counter()
            rows = asyncio.run(_seed(dsn, followers, markets))
            seed_s = time.perf_counter() - t0
            for row in rows:  # the venue holds what our books hold, so reduce-only closes can fill
                qty, price, leverage, margin = row[6], row[7], row[8], row[9]
                signed = qty if str(row[5]) == "long" else -qty
                venue.restore_position(row[1], row[3], qty=signed, entry_price=price, margin=margin, leverage=leverage)
            config = load_config(
                env={
                    "ENGINE_DATABASE_URL": dsn,
                    "ENGINE_DATA_DIR": str(Path(tmp) / "data"),
                    "ENGINE_ADMIN__ENABLED": "false",
                    "ENGINE_STATS_INTERVAL_S": "3600",
                    "ENGINE_SNAPSHOT_INTERVAL_S": "3600",
                    "ENGINE_LOG_LEVEL": "warning",
                    "ENGINE_VENUES": '[{name = "paper", price_poll_interval_ms = 3600000, weight_per_minute = 600000,'
                    " orders_per_second_per_account = 100}]",
                }
            )
            system = EngineSystem(config, venue_adapters={"paper": venue})

            def on_event(event: DomainEvent) -> None:
                if isinstance(event, PositionClosed):
                    closes.hit()

            system.subscribe(on_event)
            t0 = time.perf_counter()
            system.start()
            start_s = time.perf_counter() - t0
            feed = next(s for s in system.services if isinstance(s, PriceFeed))
            system.io.run(feed._refresh_holdings(), 60)
            held = sum(len(users) for users in feed.holders().values())

            def one_tick() -> tuple[float, float, int]:
                target = updates.value
                started = time.perf_counter()
                told = system.io.run(feed.tick(), 60)
                fanned = time.perf_counter()
                updates.wait_for(target + told)
                done = time.perf_counter()
                return (done - started) * 1000, (fanned - started) * 1000, told

            quiet, fan_out = [], []
            told = 0
            for i in range(warmup + ticks):
                for base in BASES:  # every mark within ±1 % of its start: no SL (-10 %) or TP (+20 %)
                    start = paper.DEFAULT_MARKS[base]
                    venue.set_mark(base, (start * D(1 + rng.uniform(-0.01, 0.01))).quantize(D("0.01")))
                total_ms, fan_ms, told = one_tick()
                if i >= warmup:
                    quiet.append(total_ms)
                    fan_out.append(fan_ms)

            hit, hit_fan, closes_done = [], [], []
            for k in range(sl_ticks):
                base = BASES[k]
                venue.set_mark(base, paper.DEFAULT_MARKS[base] * D("0.85"))  # through every holder's SL (-10 %)
                target = closes.value + followers
                total_ms, fan_ms, _ = one_tick()
                started = time.perf_counter() - total_ms / 1000
                closes.wait_for(target)
                closes_done.append((time.perf_counter() - started) * 1000)
                hit.append(total_ms)
                hit_fan.append(fan_ms)
            return {
                "followers": followers,
                "open_positions": held,
                "followers_told_per_tick": told,
                "workers": config.runtime.workers,
                "seed_s": round(seed_s, 2),
                "engine_start_s": round(start_s, 2),
                "tick_no_triggers": _stats(quiet),
                "tick_no_triggers_fan_out_only": _stats(fan_out),
                "tick_10pct_stop_loss": _stats(hit),
                "tick_10pct_stop_loss_fan_out_only": _stats(hit_fan),
                "tick_10pct_stop_loss_until_all_closes_filled": _stats(closes_done),
            }
        finally:
            if system is not None:
                system.stop()
            server.stop()


def _print(results: dict[str, Any]) -> None:
    print(
        f"price tick: {results['followers']} followers, {results['open_positions']} open positions "
        f"({results['followers_told_per_tick']} PriceUpdates per tick), pool workers {results['workers']}; "
        f"seed {results['seed_s']} s, engine start {results['engine_start_s']} s"
    )
    print(f"{'measure':48} {'n':>3} {'median ms':>10} {'p99 ms':>8} {'min ms':>8} {'max ms':>8}")
    for key, value in results.items():
        if isinstance(value, dict):
            print(
                f"{key:48} {value['n']:>3} {value['median_ms']:>10} {value['p99_ms']:>8} {value['min_ms']:>8}"
                f" {value['max_ms']:>8}"
            )
    print("command: .venv/bin/python -m bench.bench_price_tick")


if __name__ == "__main__":
    _print(run())
