"""Demo mode (``run_engine.py --demo``): seed whales and followers, then drive prices and whale signals.

The demo plays the two outside parties of a real deployment: the application that writes users and follows
(``seed_demo``, once, only into empty tables) and the whale detector that INSERTs into ``whale_signals``
(``DemoFeed``, on its own connection), so the engine's production intake path (NOTIFY + claim) is what runs.
Prices follow a seeded random walk on the paper venue.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any, Protocol

import asyncpg

from engine.clock import Clock
from engine.config import DemoConfig
from engine.logs import get_logger
from engine.precision import round_price

log = get_logger(__name__)

DEMO_SYMBOLS = ("BTC", "ETH", "SOL", "XRP", "DOGE")


async def seed_demo(pool: asyncpg.Pool, cfg: DemoConfig) -> bool:
    """Whales, users and follows with mixed settings, only if there are no users yet. True if seeded."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT count(*) FROM users") > 0:
            return False
        rng = random.Random(cfg.seed)
        whale_ids = [
            await conn.fetchval("INSERT INTO whales (name) VALUES ($1) RETURNING id", f"whale-{i + 1}")
            for i in range(cfg.whales)
        ]
        users = [(f"follower-{i + 1}", rng.choice((5, 10, 20)), rng.random() < 0.03) for i in range(cfg.followers)]
        user_ids = [
            r["id"]
            for r in await conn.fetch(
                """INSERT INTO users (name, max_leverage, paused)
                   SELECT * FROM unnest($1::text[], $2::int[], $3::bool[]) RETURNING id""",
                [u[0] for u in users],
                [u[1] for u in users],
                [u[2] for u in users],
            )
        ]
        follows = []
        for uid in user_ids:
            for wid in rng.sample(whale_ids, k=rng.randint(1, len(whale_ids))):
                mode = rng.choice(("fixed_usdt", "percent_of_balance", "multiplier_of_whale"))
                follows.append(
                    (
                        uid,
                        wid,
                        mode,
                        Decimal(rng.choice((20, 50, 100, 250))),
                        Decimal(rng.choice((1, 2, 5))),
                        Decimal(rng.choice(("0.001", "0.01", "0.05"))),
                        rng.choice((3, 5, 10)),
                        Decimal(rng.choice((2, 3, 5))) if rng.random() < 0.7 else None,
                        Decimal(rng.choice((3, 5, 10))) if rng.random() < 0.7 else None,
                        rng.choice((2, 5, 10)),
                        rng.random() < 0.95,
                    )
                )
        await conn.executemany(
            """INSERT INTO user_whale_follows (user_id, whale_id, sizing_mode, fixed_usdt, percent_of_balance,
                   whale_multiplier, max_leverage, stop_loss_pct, take_profit_pct, max_open_positions,
                   auto_copy_enabled)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
            follows,
        )
    log.info("demo.seeded", whales=len(whale_ids), followers=len(user_ids), follows=len(follows))
    return True


class DemoVenue(Protocol):
    """What the demo needs of a venue (``node.venues.Venue``): its adapter and markets."""

    @property
    def adapter(self) -> Any: ...

    @property
    def markets(self) -> Mapping[str, Any]: ...


class DemoFeed:
    """Random-walk prices on the paper venue and whale signals inserted into ``whale_signals``."""

    def __init__(self, *, venues: Mapping[str, DemoVenue], dsn: str, config: DemoConfig, clock: Clock) -> None:
        """``venues``: the engine's; the first whose marks are settable is driven. ``dsn``: where signals go;
        ``clock`` stamps them."""
        self._venues = venues
        self._clock = clock
        self._dsn = dsn
        self._cfg = config
        self._rng = random.Random(self._cfg.seed)
        self._tasks: list[asyncio.Task[None]] = []
        self._whale_books: dict[int, dict[str, tuple[str, str]]] = {}
        self._venue_name = "paper"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._prices(), name="demo-prices"),
            loop.create_task(self._signals(), name="demo-signals"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _paper(self) -> Any:
        for name, venue in self._venues.items():
            if venue.adapter.settable_marks:
                self._venue_name = name
                return venue.adapter
        return None

    async def _prices(self) -> None:
        paper = self._paper()
        if paper is None:
            return
        while True:
            await asyncio.sleep(self._cfg.price_interval_ms / 1000)
            for base in DEMO_SYMBOLS:
                mark = paper.marks().get(f"{base}/USDT:USDT")
                if mark is None:
                    continue
                step = Decimal(str(round(self._rng.gauss(0, 0.002), 6)))
                tick = self._venues[self._venue_name].markets[f"{base}/USDT:USDT"].price_tick
                paper.set_mark(base, round_price(mark * (1 + step), tick))

    async def _signals(self) -> None:
        conn: asyncpg.Connection | None = None
        while True:
            await asyncio.sleep(self._cfg.signal_interval_ms / 1000)
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self._dsn, timeout=10)
                whales = [r["id"] for r in await conn.fetch("SELECT id FROM whales WHERE enabled")]
                if whales:
                    await self._insert_signal(conn, self._rng.choice(whales))
            except asyncio.CancelledError:
                if conn is not None:
                    await conn.close(timeout=2)
                raise
            except Exception as exc:  # noqa: BLE001 - the demo keeps going
                log.warning("demo.signal_failed", error=repr(exc))
                conn = None

    async def _insert_signal(self, conn: asyncpg.Connection, whale_id: int) -> None:
        book = self._whale_books.setdefault(whale_id, {})
        paper = self._paper()
        if book and self._rng.random() < 0.4:
            symbol, (side, trade_type) = self._rng.choice(sorted(book.items()))
            action = "close" if self._rng.random() < 0.7 else "reduce"
            fraction = Decimal(1) if action == "close" else Decimal("0.5")
            if action == "close":
                del book[symbol]
        else:
            base = self._rng.choice(DEMO_SYMBOLS)
            trade_type = "futures" if self._rng.random() < 0.8 else "spot"
            symbol = f"{base}/USDT:USDT" if trade_type == "futures" else f"{base}/USDT"
            if symbol in book:
                return
            side = "buy" if trade_type == "spot" or self._rng.random() < 0.6 else "sell"
            action, fraction = "open", None
            book[symbol] = (side, trade_type)
        price = paper.marks().get(symbol) if paper is not None else None
        if price is None:
            return
        now = self._clock.now()
        await conn.execute(
            """INSERT INTO whale_signals (external_id, whale_id, symbol, side, action, trade_type, price,
                   size_usdt, leverage, priority, detected_at, expires_at, fraction)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
            f"demo-{uuid.uuid4().hex[:16]}",
            whale_id,
            symbol,
            side,
            action,
            trade_type,
            price,
            Decimal(self._rng.choice((5000, 20000, 100000))),
            self._rng.choice((1, 3, 5, 10, 20)) if trade_type == "futures" else 1,
            self._rng.choice(("high", "medium", "low")),
            now,
            now + timedelta(seconds=30),
            fraction,
        )
