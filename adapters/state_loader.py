"""Reads the engine's state from PostgreSQL: users, follows, balances, open positions and open trades.

Reads only; every write goes through the persistence actor. Used at start-up (all followers, in a few big
queries rather than one per user), by the supervisor (one follower, after a failure) and on follow changes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from actors.follower_base import FollowerState
from engine.messages import (
    BalanceRow,
    FollowSettings,
    PositionRow,
    TradeRow,
    UserSettings,
)

_OPEN_TRADE_STATUSES = ("pending", "submitted", "unknown")


def _convert(record: asyncpg.Record, kind: type[Any], **renames: str) -> Any:
    data = dict(record)
    for column, field in renames.items():
        data[field] = data.pop(column)
    fields = set(kind.__struct_fields__)
    return msgspec.convert({k: v for k, v in data.items() if k in fields and v is not None}, kind, strict=False)


async def load_followers(
    conn: asyncpg.Connection | asyncpg.Pool, user_ids: Iterable[int] | None = None
) -> list[FollowerState]:
    """Every user's ``FollowerState`` (or only ``user_ids``), built from a handful of set-based queries."""
    ids = list(user_ids) if user_ids is not None else None
    where_user = "" if ids is None else "WHERE id = ANY($1::bigint[])"
    where_uid = "" if ids is None else "WHERE user_id = ANY($1::bigint[])"
    and_uid = "" if ids is None else "AND user_id = ANY($1::bigint[])"
    args: list[Any] = [] if ids is None else [ids]

    users = await conn.fetch(f"SELECT * FROM users {where_user} ORDER BY id", *args)  # noqa: S608 - fixed fragments
    follows = await conn.fetch(f"SELECT * FROM user_whale_follows {where_uid}", *args)  # noqa: S608
    balances = await conn.fetch(f"SELECT * FROM balances {where_uid}", *args)  # noqa: S608
    positions = await conn.fetch(
        f"SELECT * FROM positions WHERE status IN ('open', 'closing') {and_uid}",  # noqa: S608
        *args,
    )
    trades = await conn.fetch(
        f"SELECT * FROM trades WHERE status = ANY($%d::text[]) {and_uid}" % (len(args) + 1),  # noqa: S608
        *args,
        list(_OPEN_TRADE_STATUSES),
    )
    failed_closes = await conn.fetch(
        f"""SELECT position_id, count(*) AS n FROM trades
            WHERE reduce_only AND position_id IS NOT NULL AND left(client_order_id, 1) IN ('x', 'r')
              AND status IN ('rejected', 'failed', 'cancelled') {and_uid}
            GROUP BY position_id""",  # noqa: S608
        *args,
    )
    # Today (UTC) so far: filled trades, and realised PnL = the total now minus the total at the last snapshot
    # taken before midnight; without such a snapshot, the realised PnL of positions opened or closed today.
    today = await conn.fetch(
        f"""SELECT user_id, count(*) AS n FROM trades
            WHERE status IN ('filled', 'partially_filled')
              AND updated_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' {and_uid}
            GROUP BY user_id""",  # noqa: S608
        *args,
    )
    realized_today = await conn.fetch(
        f"""WITH midnight AS (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS t),
                 before AS (
                    SELECT DISTINCT ON (user_id) user_id, realized_pnl_usdt FROM portfolio_snapshots, midnight
                    WHERE taken_at < midnight.t ORDER BY user_id, taken_at DESC),
                 total AS (SELECT user_id, sum(realized_pnl_usdt) AS s FROM positions GROUP BY user_id),
                 touched AS (
                    SELECT user_id, sum(realized_pnl_usdt) AS s FROM positions, midnight
                    WHERE opened_at >= midnight.t OR closed_at >= midnight.t GROUP BY user_id)
            SELECT t.user_id, CASE WHEN b.user_id IS NULL THEN coalesce(x.s, 0) ELSE t.s - b.realized_pnl_usdt END AS s
            FROM total t LEFT JOIN before b USING (user_id) LEFT JOIN touched x USING (user_id)
            WHERE true {and_uid.replace("user_id", "t.user_id")}""",  # noqa: S608
        *args,
    )
    realized = await conn.fetch(
        f"""SELECT user_id, coalesce(sum(realized_pnl_usdt), 0) AS total FROM positions
            {where_uid} GROUP BY user_id""",  # noqa: S608
        *args,
    )

    by_user: dict[str, dict[int, list[Any]]] = {
        "follows": defaultdict(list),
        "balances": defaultdict(list),
        "positions": defaultdict(list),
        "trades": defaultdict(list),
    }
    for r in follows:
        by_user["follows"][r["user_id"]].append(_convert(r, FollowSettings))
    for r in balances:
        by_user["balances"][r["user_id"]].append(_convert(r, BalanceRow))
    for r in positions:
        by_user["positions"][r["user_id"]].append(_convert(r, PositionRow))
    created: dict[int, dict[str, datetime]] = defaultdict(dict)
    for r in trades:
        by_user["trades"][r["user_id"]].append(_convert(r, TradeRow))
        created[r["user_id"]][r["client_order_id"]] = r["created_at"]
    attempts: dict[str, int] = {r["position_id"]: int(r["n"]) for r in failed_closes}
    totals: dict[int, Decimal] = {r["user_id"]: r["total"] for r in realized}
    trades_today: dict[int, int] = {r["user_id"]: int(r["n"]) for r in today}
    pnl_today: dict[int, Decimal] = {r["user_id"]: r["s"] for r in realized_today}

    states = []
    for r in users:
        uid = r["id"]
        positions_of = tuple(by_user["positions"].get(uid, ()))
        states.append(
            FollowerState(
                user=_convert(r, UserSettings, id="user_id"),
                follows=tuple(by_user["follows"].get(uid, ())),
                balances=tuple(by_user["balances"].get(uid, ())),
                positions=positions_of,
                open_trades=tuple(by_user["trades"].get(uid, ())),
                trade_created_at=created.get(uid, {}),
                close_attempts={
                    p.position_id: attempts[p.position_id] for p in positions_of if p.position_id in attempts
                },
                realized_total_usdt=totals.get(uid, Decimal(0)),
                trades_today=trades_today.get(uid, 0),
                realized_today_usdt=pnl_today.get(uid, Decimal(0)),
            )
        )
    return states


async def load_whale_ids(conn: asyncpg.Connection | asyncpg.Pool) -> frozenset[int]:
    """Whales signals may come from (enabled ones)."""
    rows = await conn.fetch("SELECT id FROM whales WHERE enabled")
    return frozenset(r["id"] for r in rows)
