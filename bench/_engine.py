"""What the scenarios share: the PostgreSQL of the run, bulk seeding, an engine on it, and the fakes that
isolate the fan-out. The engine start/stop and the fresh database come from the test kit (``tests.kit``).

The parent process (``python -m bench``) starts one ``EmbeddedPostgres`` (fsync ON: the honest default) and
passes its DSN to each scenario's process in ``BENCH_PG_DSN``; every scenario creates its own database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil

from adapters import database as db
from engine.config import load_config
from engine.messages import (
    FollowSettings,
    IntentAck,
    OrderOutcome,
    PersistIntent,
    PlaceOrder,
    Priority,
    Side,
    Signal,
    SignalAction,
    SizingMode,
    TradeStatus,
    TradeType,
    UserSettings,
)
from engine.runtime import SingletonActor
from node.system import EngineSystem
from tests import kit
from tests.kit import fresh_database

PG_ENV = "BENCH_PG_DSN"
_db_names = itertools.count(1)


def server_dsn() -> str:
    dsn = os.environ.get(PG_ENV)
    if not dsn:
        msg = f"{PG_ENV} is not set: run scenarios through `python -m bench`, which starts PostgreSQL"
        raise RuntimeError(msg)
    return dsn


def new_database(prefix: str) -> str:
    """A fresh database with the schema applied on the run's server; returns its DSN."""

    return asyncio.run(fresh_database(server_dsn(), f"bench_{prefix}_{os.getpid()}_{next(_db_names)}"))


def rss_bytes() -> int:
    gc.collect()
    value: int = psutil.Process().memory_info().rss
    return value


# ---- seeding by COPY (what the users application writes) --------------------------------------------------


def seed(
    dsn: str,
    *,
    whales: int,
    users: int,
    follows_per_user: int = 1,
    usdt: Decimal = Decimal(10_000),
    follow: dict[str, Any] | None = None,
    open_positions: int = 0,
) -> None:
    """``users`` users (ids 1..N), user u following whale ``(u - 1) % whales + 1`` (and the next ones when
    ``follows_per_user`` > 1), a paper USDT balance each, and one open ETH futures position for the first
    ``open_positions`` users."""
    follow_cols = dict(follow or {})

    async def run() -> None:
        conn = await db.connect(dsn, timeout_s=30)
        try:
            await conn.copy_records_to_table(
                "whales", records=[(w, f"whale-{w}") for w in range(1, whales + 1)], columns=["id", "name"]
            )
            await conn.copy_records_to_table(
                "users", records=[(u, f"user-{u}") for u in range(1, users + 1)], columns=["id", "name"]
            )
            names = ["user_id", "whale_id", *follow_cols]
            records = [
                (u, (u - 1 + k) % whales + 1, *follow_cols.values())
                for u in range(1, users + 1)
                for k in range(min(follows_per_user, whales))
            ]
            await conn.copy_records_to_table("user_whale_follows", records=records, columns=names)
            await conn.copy_records_to_table(
                "balances",
                records=[(u, "paper", "USDT", usdt, Decimal(0)) for u in range(1, users + 1)],
                columns=["user_id", "venue", "asset", "free", "reserved"],
            )
            if open_positions:
                now = datetime.now(UTC)
                await conn.copy_records_to_table(
                    "positions",
                    records=[_position_record(u, (u - 1) % whales + 1, now) for u in range(1, open_positions + 1)],
                    columns=list(_POSITION_COLUMNS),
                )
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    asyncio.run(run())


_POSITION_COLUMNS = (
    "position_id", "user_id", "venue", "symbol", "trade_type", "side", "qty",
    "entry_price", "leverage", "margin_usdt", "status", "whale_id", "opened_at",
)  # fmt: skip


def _position_record(user_id: int, whale_id: int, now: datetime) -> tuple[Any, ...]:
    return (
        f"pbench{user_id}", user_id, "paper", "ETH/USDT:USDT", "futures", "long", Decimal("0.01"),
        Decimal(3000), 5, Decimal(6), "open", whale_id, now,
    )  # fmt: skip


def insert_signal_row(dsn: str, signal: Signal) -> None:
    """The ``whale_signals`` row a detector would have written (status processing: already claimed)."""

    async def run() -> None:
        conn = await db.connect(dsn)
        try:
            await conn.execute(
                """INSERT INTO whale_signals (id, external_id, whale_id, symbol, side, action, trade_type, price,
                       size_usdt, leverage, priority, detected_at, expires_at, status)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'processing')""",
                signal.signal_id, signal.external_id, signal.whale_id, signal.symbol, signal.side.value,
                signal.action.value, signal.trade_type.value, signal.price, signal.size_usdt, signal.leverage,
                signal.priority.value, signal.detected_at, signal.expires_at,
            )  # fmt: skip
        finally:
            await conn.close()

    asyncio.run(run())


def make_signal(
    signal_id: int,
    *,
    whale_id: int,
    symbol: str,
    price: Decimal,
    action: SignalAction = SignalAction.OPEN,
    leverage: int = 5,
    size_usdt: Decimal = Decimal(50_000),
) -> Signal:
    now = datetime.now(UTC)
    return Signal(
        signal_id=signal_id,
        external_id=f"bench-{uuid.uuid4().hex[:16]}",
        whale_id=whale_id,
        symbol=symbol,
        side=Side.BUY,
        action=action,
        trade_type=TradeType.FUTURES if symbol.endswith(":USDT") else TradeType.SPOT,
        price=price,
        size_usdt=size_usdt,
        leverage=leverage,
        priority=Priority.MEDIUM,
        detected_at=now,
        expires_at=now + timedelta(minutes=5),
    )


# ---- an engine on the bench database ---------------------------------------------------------------------


def engine_config(dsn: str, data_dir: Path, **env: str) -> Any:
    """Config for a bench engine: this database, no admin socket, no signal intake (signals are told to the
    router directly), quiet logs, and a paper venue whose rate budget does not throttle (the paper venue has
    no real limit; a real venue's 6,000 weight/min would dominate any fan-out of 10,000)."""
    base = {
        "ENGINE_DATABASE_URL": dsn,
        "ENGINE_DATA_DIR": str(data_dir),
        "ENGINE_ADMIN__ENABLED": "false",
        "ENGINE_SIGNALS__LISTEN": "false",
        "ENGINE_STATS_INTERVAL_S": "3600",
        "ENGINE_SNAPSHOT_INTERVAL_S": "3600",
        "ENGINE_SHUTDOWN_GRACE_S": "10",
        "ENGINE_LOG_LEVEL": "warning",
        "ENGINE_VENUES": '[{name = "paper", weight_per_minute = 100000000, orders_per_second_per_account = 1000,'
        " max_in_flight = 100000}]",
    }
    base.update(env)
    return load_config(env=base)


@contextlib.contextmanager
def running_engine(dsn: str, data_dir: Path, *, venue: Any, **env: str) -> Iterator[EngineSystem]:
    with kit.running_engine(dsn, data_dir, venue=venue, config=engine_config(dsn, data_dir, **env)) as system:
        yield system


# ---- fakes that isolate the fan-out (scenario 1 and 5) ------------------------------------------------------


class AckingPersistence(SingletonActor):
    """Answers every ``PersistIntent`` at once with ``IntentAck(durable=True)``; drops every ``PersistRows``."""

    def on_receive(self, message: Any) -> None:
        if isinstance(message, PersistIntent):
            message.reply_to.tell(IntentAck(client_order_id=message.row.client_order_id, durable=True))


class CountingExchange(SingletonActor):
    """Counts ``PlaceOrder`` requests; sets ``done`` when ``expect(n)``'s n have arrived. Answers only when told
    to (``cancel_all``, after the clock has stopped): then every order it holds is CANCELLED, so its follower
    releases the reservation and forgets the order, as it would after a venue's answer.

    Its intake is the real ``ExchangeActor``'s (``SingletonActor``): a tell costs the sender the same."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._target = -1
        self.done = threading.Event()
        self.done_at = 0.0  # perf_counter() when the expected order arrived, on this actor's thread
        self._unanswered: list[PlaceOrder] = []

    def cancel_all(self) -> int:
        """Answer every order held so far with CANCELLED (nothing filled); returns how many."""
        orders, self._unanswered = self._unanswered, []
        for order in orders:
            if order.reply_to is not None:
                order.reply_to.tell(
                    OrderOutcome(
                        client_order_id=order.request.client_order_id,
                        status=TradeStatus.CANCELLED,
                        error="bench: cancelled once counted",
                    )
                )
        return len(orders)

    def expect(self, total: int) -> None:
        """Set ``done`` once ``total`` orders (counted since the start) have arrived."""
        self._target = total
        if self.count >= total:
            self.done_at = time.perf_counter()
            self.done.set()

    def on_receive(self, message: Any) -> None:
        if isinstance(message, PlaceOrder):
            self.count += 1
            self._unanswered.append(message)
            if self.count == self._target:
                # Stamped here: the waiting thread may need up to a GIL switch interval (5 ms) to wake up.
                self.done_at = time.perf_counter()
                self.done.set()


class NullActor(SingletonActor):
    """Swallows everything (a router that does not care about decisions)."""

    def on_receive(self, message: Any) -> None:
        return None


# ---- followers with mixed settings ---------------------------------------------------------------------------


def mixed_settings(user_id: int, whale_id: int) -> tuple[UserSettings, FollowSettings, Decimal]:
    """Deterministic, varied settings: every sizing mode, leverages, caps, some paused/disabled, some poor."""
    i = user_id
    mode = (SizingMode.FIXED_USDT, SizingMode.PERCENT_OF_BALANCE, SizingMode.MULTIPLIER_OF_WHALE)[i % 3]
    user = UserSettings(
        user_id=user_id,
        copy_trading_enabled=i % 53 != 0,
        max_leverage=(1, 3, 5, 10, 20)[i % 5],
        paused=i % 47 == 0,
    )
    follow = FollowSettings(
        user_id=user_id,
        whale_id=whale_id,
        auto_copy_enabled=i % 59 != 0,
        sizing_mode=mode,
        fixed_usdt=Decimal(20 + (i % 17) * 10),
        percent_of_balance=Decimal((i % 9) + 1),
        whale_multiplier=Decimal("0.001") * ((i % 7) + 1),
        max_usdt_per_trade=Decimal((100, 250, 1000)[i % 3]),
        min_notional_usdt=Decimal(5 + (i % 4) * 5),
        max_leverage=(2, 5, 10)[i % 3],
        stop_loss_pct=Decimal(5) if i % 2 else None,
        take_profit_pct=Decimal(10) if i % 4 == 0 else None,
        max_slippage_pct=Decimal(1),
    )
    usdt = Decimal(30) if i % 41 == 0 else Decimal(5_000 + (i % 11) * 1_000)  # a few cannot afford a copy
    return user, follow, usdt
