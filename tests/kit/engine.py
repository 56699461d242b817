"""An engine for tests: ``EngineSystem`` on the test PostgreSQL, with a venue the test owns; seeding and signals
as the users application and the whale detector write them; waiting for the engine to settle.

The venue object outlives the engine, as a real venue does, so restart tests stop one engine and start another
on the same database and the same venue::

    def test_copy(pg_dsn, tmp_path):
        venue = PaperVenue(latency_ms=0)
        seed_whale(pg_dsn, 1)
        seed_followers(pg_dsn, whale_id=1, user_ids=range(1, 101))
        with running_engine(pg_dsn, tmp_path, venue=venue) as system:
            signal_id = insert_signal(pg_dsn, whale_id=1, symbol="BTC/USDT:USDT", side="buy", price=venue_mark)
            wait_for(lambda: signal_status(pg_dsn, signal_id) == "processed")
            system.persistence.proxy().flush().get()

Signals normally go in as an external detector puts them: INSERT into ``whale_signals`` (the intake claims them).
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine import runtime
from engine.config import load_config
from node.system import EngineSystem
from tests.kit.pg import execute, fetch, fetchval
from tests.kit.waiting import GENEROUS_S, wait_for

_external_ids = itertools.count(1)


def engine_config(dsn: str, data_dir: Path, **env: str) -> Any:
    """Config for a test engine: this database, no admin socket unless asked, fast timers."""
    base = {
        "ENGINE_DATABASE_URL": dsn,
        "ENGINE_DATA_DIR": str(data_dir),
        "ENGINE_ADMIN__ENABLED": "false",
        "ENGINE_SIGNALS__POLL_INTERVAL_MS": "100",
        "ENGINE_STATS_INTERVAL_S": "3600",
        "ENGINE_SHUTDOWN_GRACE_S": "5",
        "ENGINE_LOG_LEVEL": "warning",
    }
    base.update(env)
    return load_config(env=base)


@contextlib.contextmanager
def running_engine(
    dsn: str,
    data_dir: Path,
    *,
    venue: Any = None,
    venues: dict[str, Any] | None = None,
    config: Any = None,
    **env: str,
) -> Iterator[EngineSystem]:
    """Start an engine (paper venue ``venue`` under the name "paper"; ``config`` instead of
    ``engine_config(dsn, data_dir, **env)`` if given), yield it, stop it."""
    adapters = dict(venues or {})
    if venue is not None:
        adapters["paper"] = venue
    system = EngineSystem(config or engine_config(dsn, data_dir, **env), venue_adapters=adapters)
    system.start()
    try:
        yield system
    finally:
        system.stop()


# ---- seeding (what the users application writes) ------------------------------------------------------------


def seed_whale(dsn: str, whale_id: int, name: str | None = None) -> None:
    execute(
        dsn,
        "INSERT INTO whales (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        whale_id,
        name or f"whale-{whale_id}",
    )


def seed_followers(
    dsn: str,
    *,
    whale_id: int,
    user_ids: Iterable[int],
    user: dict[str, Any] | None = None,
    follow: dict[str, Any] | None = None,
) -> list[int]:
    """Users (``users`` columns in ``user``) following ``whale_id`` (``user_whale_follows`` columns in ``follow``)."""
    ids = list(user_ids)
    user_cols = dict(user or {})
    follow_cols = dict(follow or {})
    for uid in ids:
        cols = {"id": uid, "name": f"user-{uid}", **user_cols}
        names = ", ".join(cols)
        params = ", ".join(f"${i + 1}" for i in range(len(cols)))
        execute(dsn, f"INSERT INTO users ({names}) VALUES ({params}) ON CONFLICT (id) DO NOTHING", *cols.values())
        fcols = {"user_id": uid, "whale_id": whale_id, **follow_cols}
        names = ", ".join(fcols)
        params = ", ".join(f"${i + 1}" for i in range(len(fcols)))
        execute(
            dsn,
            f"INSERT INTO user_whale_follows ({names}) VALUES ({params}) ON CONFLICT DO NOTHING",
            *fcols.values(),
        )
    return ids


# ---- signals (what the whale detector writes) ---------------------------------------------------------------


def insert_signal(
    dsn: str,
    *,
    whale_id: int,
    symbol: str,
    side: str = "buy",
    action: str = "open",
    trade_type: str | None = None,
    price: Decimal | str | int,
    size_usdt: Decimal | str | int = 10_000,
    leverage: int = 1,
    priority: str = "medium",
    detected_at: datetime | None = None,
    expires_at: datetime | None = None,
    fraction: Decimal | str | None = None,
    external_id: str | None = None,
) -> int:
    """INSERT a ``whale_signals`` row as an external detector does; returns its id."""
    trade_type = trade_type or ("futures" if symbol.endswith(":USDT") else "spot")
    now = datetime.now(UTC)
    value: int = fetchval(
        dsn,
        """INSERT INTO whale_signals (external_id, whale_id, symbol, side, action, trade_type, price, size_usdt,
               leverage, priority, detected_at, expires_at, fraction)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id""",
        external_id or f"test-{uuid.uuid4().hex[:12]}-{next(_external_ids)}",
        whale_id,
        symbol,
        side,
        action,
        trade_type,
        Decimal(str(price)),
        Decimal(str(size_usdt)),
        leverage,
        priority,
        detected_at or now,
        expires_at or now + timedelta(minutes=5),
        Decimal(str(fraction)) if fraction is not None else None,
    )
    return value


def signal_row(dsn: str, signal_id: int) -> dict[str, Any]:
    rows = fetch(dsn, "SELECT * FROM whale_signals WHERE id = $1", signal_id)
    return dict(rows[0]) if rows else {}


def wait_signal_done(dsn: str, signal_id: int, timeout_s: float = GENEROUS_S) -> dict[str, Any]:
    """Wait until the signal left PENDING/PROCESSING; return its row."""
    return wait_for(
        lambda: (row := signal_row(dsn, signal_id)) and row["status"] not in ("pending", "processing") and row,
        timeout_s,
    )


def settle(system: EngineSystem, timeout_s: float = GENEROUS_S) -> None:
    """Wait for nothing in flight (router, exchange, durable lane), then flush the batched lane."""

    def idle() -> bool:
        pool = runtime.pool_stats()
        return not any(system.in_flight().values()) and pool.mailbox_depth_total == 0 and pool.queued_actors == 0

    wait_for(lambda: idle() and idle(), timeout_s)
    system.persistence.proxy().flush(30).get(timeout=60)
