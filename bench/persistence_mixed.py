"""Scenario 3, persistence: mixed rows (trades, positions, domain events) through the persistence actor, against
single-row autocommit INSERTs measured in the same run, on the run's PostgreSQL (fsync on).

The rows go in as followers send them: ``PersistRows`` of a trade, its position and an event (three rows per
message, as ``FollowerBooks.finish`` does); the clock stops when ``flush()`` says everything is written.
The baseline is ``bench.bench_persistence``'s single-row autocommit loop (one INSERT, one commit, per row).
The same rows also go through the actor's previous writer (COPY into a staging table + ``INSERT … SELECT`` per
table, one batch in flight), so the gain of the default writer is measured in the same run.

    .venv/bin/python -m bench persistence [--quick]
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from actors.persistence import PersistenceActor
from adapters.ioloop import IoLoop
from bench import configure_logs
from bench._engine import new_database
from bench._report import row
from bench.bench_persistence import _single_row_autocommit
from engine.clock import SYSTEM_CLOCK
from engine.config import DatabaseConfig, PersistenceConfig
from engine.events import PositionOpened
from engine.messages import (
    PersistRows,
    PositionRow,
    PositionSide,
    PositionStatus,
    Side,
    TradeRow,
    TradeStatus,
    TradeType,
)

SCENARIO = "3 persistence"


def _rows(tag: str, i: int, now: datetime) -> tuple[Any, ...]:
    cid, pid = f"m{tag}t{i}", f"m{tag}p{i}"
    trade = TradeRow(
        client_order_id=cid, user_id=i % 5000 + 1, venue="paper", symbol="ETH/USDT:USDT",
        trade_type=TradeType.FUTURES, side=Side.BUY, qty=Decimal("0.03"), price=Decimal("3000.5"),
        status=TradeStatus.FILLED, leverage=5, signal_id=7, whale_id=1, position_id=pid,
        executed_qty=Decimal("0.03"), executed_price=Decimal("3001.1"), fee_usdt=Decimal("0.045"), version=3,
    )  # fmt: skip
    position = PositionRow(
        position_id=pid, user_id=i % 5000 + 1, venue="paper", symbol="ETH/USDT:USDT",
        trade_type=TradeType.FUTURES, side=PositionSide.LONG, qty=Decimal("0.03"), entry_price=Decimal("3001.1"),
        leverage=5, margin_usdt=Decimal("18.0066"), status=PositionStatus.OPEN, whale_id=1, opened_at=now,
    )  # fmt: skip
    event = PositionOpened(
        occurred_at=now, user_id=i % 5000 + 1, signal_id=7, position_id=pid, symbol="ETH/USDT:USDT",
        side=PositionSide.LONG, qty=Decimal("0.03"), entry_price=Decimal("3001.1"), leverage=5,
        margin_usdt=Decimal("18.0066"), whale_id=1,
    )  # fmt: skip
    return (trade, position, event.to_row())


def _through_actor(io_loop: IoLoop, dsn: str, messages: int, tag: str, **actor_kw: Any) -> float:
    ref = PersistenceActor.start(
        io_loop=io_loop, dsn=dsn, config=PersistenceConfig(), database=DatabaseConfig(), clock=SYSTEM_CLOCK, **actor_kw
    )
    try:
        proxy = ref.proxy()
        proxy.flush().get()  # pool warm
        now = datetime.now(UTC)
        batch = [PersistRows(rows=_rows(tag, i, now)) for i in range(messages)]
        started = time.perf_counter()
        for message in batch:
            ref.tell(message)
        if not proxy.flush(timeout_s=600).get():
            msg = "persistence did not flush"
            raise RuntimeError(msg)
        return messages * 3 / (time.perf_counter() - started)
    finally:
        ref.stop()


def run(*, quick: bool = False) -> list[dict[str, Any]]:

    configure_logs(on=False)
    messages = 10_000 if quick else 50_000  # x3 rows
    singles = 1_000 if quick else 2_000
    repeats = 3 if quick else 5
    dsn = new_database("persist")
    io_loop = IoLoop().start()
    try:
        single = [asyncio.run(_single_row_autocommit(dsn, singles)) for _ in range(3)]
        mixed = [_through_actor(io_loop, dsn, messages, f"{k}x") for k in range(repeats + 1)][1:]
        old = [_through_actor(io_loop, dsn, messages, f"{k}c", write_method="copy") for k in range(3)]
    finally:
        io_loop.stop()
    med_mixed, med_single, med_old = sorted(mixed)[len(mixed) // 2], sorted(single)[1], sorted(old)[1]
    ratio = med_mixed / med_single
    return [
        row(SCENARIO, f"single-row autocommit INSERT ({singles:,} rows)", single, unit="rows/s"),
        row(
            SCENARIO, f"persistence actor, mixed ({messages * 3:,} rows)", mixed, unit="rows/s",
            target="≥ 150,000 rows/s", ok=med_mixed >= 150_000,
            note="trades + positions + domain_events, 3 rows per PersistRows, new rows (inserts); rows/s, so "
            "higher is better and p99 is the best run",
        ),
        row(
            SCENARIO, f"previous writer: COPY + staging, 1 batch in flight ({messages * 3:,} rows)", old,
            unit="rows/s", ratio=med_mixed / med_old, ratio_label="default writer / previous",
            note="the same rows through the actor with write_method='copy' (one batch at a time)",
        ),
        row(
            SCENARIO, "persistence actor vs single-row", [ratio], unit="x", ratio=ratio,
            ratio_label="actor / single-row", target="≥ 30x", ok=ratio >= 30,
        ),
    ]  # fmt: skip
