"""Paper copy flows end to end: seeding groups of followers, signals with reserved ids, and reading back what
the engine wrote (trades, positions, balances, domain events). Shared by the copy-flow, fault, recovery and
bad-signal tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from adapters.database import connect
from node.system import EngineSystem
from tests.kit.engine import insert_signal, seed_whale, settle, wait_signal_done
from tests.kit.pg import execute, fetch, fetchval
from tests.kit.waiting import GENEROUS_S, wait_for

D = Decimal
#: ``paper_starting_usdt``: the balance of a paper follower without a balances row.
PAPER_START_USDT = D(10_000)


@dataclass
class Group:
    """Followers with the same settings: ``user`` columns of ``users``, ``follow`` of ``user_whale_follows``."""

    name: str
    user_ids: range
    user: dict[str, Any] = field(default_factory=dict)
    follow: dict[str, Any] = field(default_factory=dict)
    usdt: Decimal | None = None  # a balances row with this free USDT (else the paper default)


def seed_groups(dsn: str, whale_id: int, groups: Iterable[Group]) -> None:
    """Users, follows and balances for every group, in one connection (a thousand followers in a second)."""

    async def run() -> None:
        conn = await connect(dsn)
        try:
            async with conn.transaction():
                for group in groups:
                    await _insert_many(
                        conn, "users", [{"id": uid, "name": f"u{uid}", **group.user} for uid in group.user_ids]
                    )
                    await _insert_many(
                        conn,
                        "user_whale_follows",
                        [{"user_id": uid, "whale_id": whale_id, **group.follow} for uid in group.user_ids],
                    )
                    if group.usdt is not None:
                        await _insert_many(
                            conn,
                            "balances",
                            [
                                {
                                    "user_id": uid,
                                    "venue": "paper",
                                    "asset": "USDT",
                                    "free": group.usdt,
                                    "reserved": D(0),
                                }
                                for uid in group.user_ids
                            ],
                        )
        finally:
            await conn.close()

    asyncio.run(run())


async def _insert_many(conn: asyncpg.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    names = list(rows[0])
    params = ", ".join(f"${i + 1}" for i in range(len(names)))
    await conn.executemany(
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({params})", [tuple(r[n] for n in names) for r in rows]
    )


def seed_simple(dsn: str, whale_id: int, user_ids: range, **follow: Any) -> None:
    """A whale and followers with default user settings and the given follow settings."""
    seed_whale(dsn, whale_id)
    seed_groups(dsn, whale_id, [Group("all", user_ids, follow=follow)])


def next_signal_id(dsn: str) -> int:
    """Reserve a ``whale_signals`` id, so a test knows its client order ids before the signal exists."""
    value: int = fetchval(dsn, "SELECT nextval(pg_get_serial_sequence('whale_signals', 'id'))")
    return value


def insert_signal_with_id(
    dsn: str,
    signal_id: int,
    *,
    whale_id: int,
    symbol: str,
    side: str = "buy",
    action: str = "open",
    price: Decimal | str | int,
    size_usdt: Decimal | str | int = 10_000,
    leverage: int = 1,
    fraction: Decimal | str | None = None,
    detected_at: datetime | None = None,
) -> int:
    """INSERT a pending ``whale_signals`` row with a reserved id (see ``next_signal_id``)."""
    now = datetime.now(UTC)
    execute(
        dsn,
        """INSERT INTO whale_signals (id, external_id, whale_id, symbol, side, action, trade_type, price, size_usdt,
               leverage, detected_at, expires_at, fraction)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
        signal_id,
        f"test-id-{signal_id}",
        whale_id,
        symbol,
        side,
        action,
        "futures" if symbol.endswith(":USDT") else "spot",
        D(str(price)),
        D(str(size_usdt)),
        leverage,
        detected_at or now,
        now + timedelta(minutes=5),
        D(str(fraction)) if fraction is not None else None,
    )
    return signal_id


def trades_by_user(dsn: str, signal_id: int) -> dict[int, dict[str, Any]]:
    rows = fetch(dsn, "SELECT * FROM trades WHERE signal_id = $1", signal_id)
    return {r["user_id"]: dict(r) for r in rows}


def trade(dsn: str, cid: str) -> dict[str, Any]:
    rows = fetch(dsn, "SELECT * FROM trades WHERE client_order_id = $1", cid)
    return dict(rows[0]) if rows else {}


def position(dsn: str, position_id: str) -> dict[str, Any]:
    rows = fetch(dsn, "SELECT * FROM positions WHERE position_id = $1", position_id)
    return dict(rows[0]) if rows else {}


def usdt(dsn: str, user_id: int) -> tuple[Decimal, Decimal]:
    """``(free, reserved)`` of the user's paper USDT balance row."""
    rows = fetch(
        dsn, "SELECT free, reserved FROM balances WHERE user_id = $1 AND venue = 'paper' AND asset = 'USDT'", user_id
    )
    assert rows, f"no balance row for user {user_id}"
    return rows[0]["free"], rows[0]["reserved"]


def event_count(dsn: str, event_type: str, *, signal_id: int | None = None, user_id: int | None = None) -> int:
    value: int = fetchval(
        dsn,
        """SELECT count(*) FROM domain_events WHERE event_type = $1
           AND ($2::bigint IS NULL OR signal_id = $2) AND ($3::bigint IS NULL OR user_id = $3)""",
        event_type,
        signal_id,
        user_id,
    )
    return value


def wait_trades_final(
    dsn: str, cids: Iterable[str], statuses: tuple[str, ...] = ("filled",), timeout_s: float = GENEROUS_S
) -> None:
    """Wait until every trade in ``cids`` has one of ``statuses`` in the database."""
    wanted = list(cids)

    def done() -> bool:
        rows = fetch(dsn, "SELECT status FROM trades WHERE client_order_id = ANY($1::text[])", wanted)
        return len(rows) == len(wanted) and all(r["status"] in statuses for r in rows)

    wait_for(done, timeout_s)


def signal_and_wait(dsn: str, system: EngineSystem, **kwargs: Any) -> int:
    """Insert a signal (``insert_signal`` arguments), wait until it is processed and everything settled."""
    signal_id = insert_signal(dsn, **kwargs)
    assert wait_signal_done(dsn, signal_id)["status"] == "processed"
    settle(system)
    return signal_id
