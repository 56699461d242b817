"""Persistence throughput on this machine: group commit vs single-row autocommit; the batch writers (JSON
document per table, the default; COPY into a staging table; executemany) directly and through the actor.

Runs its own embedded PostgreSQL with fsync ON (commit cost is what group commit amortises) in a temp dir.

    .venv/bin/python -m bench.bench_persistence
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from actors import persistence_sql
from actors.persistence import PersistenceActor
from actors.persistence_io import WriteMethod
from adapters import database as db
from adapters.embedded_pg import EmbeddedPostgres
from adapters.ioloop import IoLoop
from engine.clock import SYSTEM_CLOCK
from engine.config import DatabaseConfig, PersistenceConfig
from engine.messages import IntentAck, PersistIntent, PersistRows, Side, TradeRow, TradeStatus, TradeType


def _trade(cid: str, version: int = 1) -> TradeRow:
    return TradeRow(
        client_order_id=cid,
        user_id=1,
        venue="paper",
        symbol="BTC/USDT",
        trade_type=TradeType.SPOT,
        side=Side.BUY,
        qty=Decimal("0.001"),
        price=Decimal("65000.5"),
        status=TradeStatus.PENDING,
        version=version,
    )


async def _single_row_autocommit(dsn: str, n: int) -> float:
    conn = await db.connect(dsn)
    spec = db.INTENT_SPEC
    sql = spec.upsert_sql(spec.values_source())
    started = time.perf_counter()
    for i in range(n):
        await conn.execute(sql, *spec.record(_trade(f"single-{i}"), stored_at=datetime.now(UTC)))
    elapsed = time.perf_counter() - started
    await conn.close()
    return n / elapsed


async def _batched(dsn: str, n: int, batch: int, *, method: WriteMethod, tag: str) -> dict[str, float]:
    conn = await db.connect(dsn)
    out = {}
    for phase, version in (("insert", 1), ("update", 2)):
        rows = [_trade(f"{tag}-{i}", version) for i in range(n)]
        started = time.perf_counter()
        for k in range(0, n, batch):
            if method == "json":
                await persistence_sql.write_rows(conn, rows[k : k + batch])
            else:
                await db.write_rows(conn, rows[k : k + batch], stored_at=datetime.now(UTC), use_copy=method == "copy")
        out[phase] = n / (time.perf_counter() - started)
    await conn.close()
    return out


class _Acks:
    def __init__(self, expected: int) -> None:
        self.count = 0
        self.durable = 0
        self._expected = expected
        self._lock = threading.Lock()
        self.done = threading.Event()

    def tell(self, ack: IntentAck) -> None:
        with self._lock:
            self.count += 1
            self.durable += ack.durable
            if self.count == self._expected:
                self.done.set()


def _group_commit(io_loop: IoLoop, dsn: str, threads_n: int, per_thread: int) -> dict[str, float]:
    ref = PersistenceActor.start(
        io_loop=io_loop, dsn=dsn, config=PersistenceConfig(), database=DatabaseConfig(), clock=SYSTEM_CLOCK
    )
    try:
        ref.proxy().flush().get()  # pool warm
        acks = _Acks(threads_n * per_thread)

        def send(t: int) -> None:
            for i in range(per_thread):
                ref.tell(PersistIntent(row=_trade(f"gc-{t}-{i}"), reply_to=acks))

        started = time.perf_counter()
        threads = [threading.Thread(target=send, args=(t,)) for t in range(threads_n)]
        for t in threads:
            t.start()
        acks.done.wait(120)
        elapsed = time.perf_counter() - started
        stats = ref.proxy().stats().get()
        return {
            "intents_per_s": round(acks.count / elapsed),
            "intents": acks.count,
            "durable": acks.durable,
            "transactions": stats["durable_commits"],
        }
    finally:
        ref.stop()


def _actor_batched(io_loop: IoLoop, dsn: str, n: int, *, method: WriteMethod) -> float:
    ref = PersistenceActor.start(
        io_loop=io_loop,
        dsn=dsn,
        config=PersistenceConfig(),
        database=DatabaseConfig(),
        clock=SYSTEM_CLOCK,
        write_method=method,
    )
    try:
        proxy = ref.proxy()
        proxy.flush().get()
        started = time.perf_counter()
        chunk = 500
        for k in range(0, n, chunk):
            ref.tell(PersistRows(rows=tuple(_trade(f"actor-{method}-{i}") for i in range(k, k + chunk))))
        proxy.flush(timeout_s=300).get()
        return n / (time.perf_counter() - started)
    finally:
        ref.stop()


def run(n_rows: int = 100_000, n_single: int = 2000, threads_n: int = 20, per_thread: int = 500) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp), durable=True)
        io_loop = IoLoop().start()
        try:
            server_dsn = server.start()

            async def setup() -> str:
                dsn = await db.create_database(server_dsn, "bench")
                conn = await db.connect(dsn)
                await db.apply_schema(conn)
                await conn.close()
                return dsn

            dsn = asyncio.run(setup())
            results: dict[str, Any] = {
                "single_row_autocommit_rows_per_s": round(asyncio.run(_single_row_autocommit(dsn, n_single))),
                "group_commit": _group_commit(io_loop, dsn, threads_n, per_thread),
            }
            methods: tuple[WriteMethod, ...] = ("json", "copy", "executemany")
            for method in methods:
                rates = asyncio.run(_batched(dsn, n_rows, 5000, method=method, tag=method))
                results[f"batched_{method}_rows_per_s"] = {k: round(v) for k, v in rates.items()}
                results[f"actor_batched_{method}_rows_per_s"] = round(
                    _actor_batched(io_loop, dsn, n_rows, method=method)
                )
            return results
        finally:
            io_loop.stop()
            server.stop()


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
