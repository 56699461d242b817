"""Reads the engine's state from PostgreSQL: users, follows, balances, open positions and open trades.

Reads only; every write goes through the persistence actor. Used at start-up (all followers, in a few big
queries rather than one per user), by the supervisor (one follower, after a failure) and on follow changes.

Start-up reads 100,000 users, follows and balances, so rows become structs cheaply (bench scenario 4): each
query selects exactly a struct's fields, a value equal to the struct's default comes back as NULL and is left
out (the struct then shares its default object instead of holding its own ``Decimal``), numerics come as text
and equal texts share one ``Decimal``, and on a pool the queries run concurrently on several connections.

A poisoned row never stops the engine from starting. PostgreSQL stores timestamps Python cannot hold (year
200000, 4000 BC, ``±infinity``) and numerics the engine cannot use (``NaN``, ``Infinity``); asyncpg would raise
while decoding the whole result, and the engine would not start. So every timestamp is selected through a guard
(NULL when outside Python's range) and each row carries an ``undecodable`` column naming what the guard hid;
numerics come as text and are checked finite in Python; a row that still cannot become its struct is caught.
Such a row's user is not loaded (``state.row_undecodable``: table, user, reason), everyone else is; a caller that
passes ``skipped`` learns which users were left out (the supervisor keeps their running follower on a reload).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from engine.follower_state import FollowerState
from engine.logs import get_logger
from engine.messages import BalanceRow, FollowSettings, PositionRow, TradeRow, UserSettings

log = get_logger(__name__)

_OPEN_TRADE_STATUSES = ("pending", "submitted", "unknown")
_ZERO = Decimal(0)
# Python's datetime range, a day inside each end (a UTC value near an end may not survive a time-zone shift).
_REPRESENTABLE = "BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'"


def _guarded(column: str) -> str:
    """A timestamp column, NULL when Python cannot hold it (``_unrepresentable`` says why)."""
    return f"CASE WHEN {column} {_REPRESENTABLE} THEN {column} END"


def _unrepresentable(column: str) -> str:
    return (
        f"CASE WHEN {column} IS NOT NULL AND NOT coalesce({column} {_REPRESENTABLE}, false)"
        f" THEN '{column} out of range: ' || {column}::text END"
    )


def _literal(value: Any) -> str:
    """A struct default as an SQL literal of the column's type (fixed values from our own code)."""
    text = value.value if isinstance(value, enum.Enum) else str(value).lower() if isinstance(value, bool) else value
    return "'" + str(text).replace("'", "''") + "'"


def _scalar(t: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """``X | None`` -> ``X``."""
    if isinstance(t, msgspec.inspect.UnionType):
        return next(u for u in t.types if not isinstance(u, msgspec.inspect.NoneType))
    return t


class _Table:
    """How one struct kind is read from its table: its fields only, defaults as NULL, numerics as text."""

    def __init__(
        self,
        kind: type[msgspec.Struct],
        table: str,
        *,
        renames: dict[str, str] | None = None,
        timestamps: tuple[str, ...] = (),
    ) -> None:
        self.kind = kind
        self.table = table
        info = msgspec.inspect.type_info(kind)
        assert isinstance(info, msgspec.inspect.StructType)
        self.names = tuple(f.name for f in info.fields)
        self.decimals: list[str] = []
        self.enums: list[tuple[str, type[enum.Enum]]] = []
        exprs = []
        checks = [_unrepresentable(column) for column in timestamps]  # extra columns the query selects
        for f in info.fields:
            expr = (renames or {}).get(f.name, f.name)
            if f.default is not msgspec.NODEFAULT and f.default is not None:
                expr = f"NULLIF({expr}, {_literal(f.default)})"
            scalar = _scalar(f.type)
            if isinstance(scalar, msgspec.inspect.DateTimeType):
                checks.append(_unrepresentable(expr))
                expr = _guarded(expr)
            elif isinstance(scalar, msgspec.inspect.DecimalType):
                expr = f"({expr})::text"
                self.decimals.append(f.name)
            elif isinstance(scalar, msgspec.inspect.EnumType):
                self.enums.append((f.name, scalar.cls))
            exprs.append(expr)
        # Last of the struct's columns: NULL, or what the timestamp guards hid (the row is then set aside).
        why = f"NULLIF(concat_ws('; ', {', '.join(checks)}), '')" if checks else "NULL"
        exprs.append(f"{why} AS undecodable")
        self.columns = ", ".join(exprs)

    def build(self, rows: Iterable[Sequence[Any]], decimal: Callable[[str], Decimal], bad: dict[int, str]) -> list[Any]:
        """Structs from rows of ``SELECT {columns} [, extra columns]`` (extra columns are ignored). A row that
        cannot become its struct is left out and its user put in ``bad`` with the reason."""
        kind, names, decimals, enums = self.kind, self.names, self.decimals, self.enums
        undecodable = len(names)
        out = []
        for row in rows:
            data = {name: value for name, value in zip(names, row, strict=False) if value is not None}
            try:
                if (reason := row[undecodable]) is not None:
                    raise ValueError(reason)
                for name in decimals:
                    if name in data:
                        value = data[name] = decimal(data[name])
                        if not value.is_finite():
                            raise ValueError(f"{name} is not a finite number: {value}")
                for name, cls in enums:
                    if name in data:
                        data[name] = cls(data[name])
                out.append(kind(**data))
            except Exception as exc:  # noqa: BLE001 - one poisoned row must not stop the engine from starting
                self.set_aside(data.get("user_id"), f"{type(exc).__name__}: {exc}", bad)
        return out

    def set_aside(self, user_id: Any, reason: str, bad: dict[int, str]) -> None:
        log.error("state.row_undecodable", table=self.table, user_id=user_id, reason=reason)
        if isinstance(user_id, int):
            bad.setdefault(user_id, f"{self.table}: {reason}")


def _decimals() -> Callable[[str], Decimal]:
    """Text -> ``Decimal``, one object per distinct text (most balances and positions repeat a few values)."""
    cache: dict[str, Decimal] = {}

    def decimal(text: str) -> Decimal:
        value = cache.get(text)
        if value is None:
            value = cache[text] = Decimal(text)
        return value

    return decimal


_USERS = _Table(UserSettings, "users", renames={"user_id": "id"})
_FOLLOWS = _Table(FollowSettings, "user_whale_follows")
_BALANCES = _Table(BalanceRow, "balances")
_POSITIONS = _Table(PositionRow, "positions")
_TRADES = _Table(TradeRow, "trades", timestamps=("created_at",))
_CREATED = _guarded("created_at") + " AS created_at"


def _queries(ids: list[int] | None) -> dict[str, tuple[str, list[Any]]]:
    where_user = "" if ids is None else "WHERE id = ANY($1::bigint[])"
    where_uid = "" if ids is None else "WHERE user_id = ANY($1::bigint[])"
    and_uid = "" if ids is None else "AND user_id = ANY($1::bigint[])"
    args: list[Any] = [] if ids is None else [ids]
    statuses = f"${len(args) + 1}::text[]"
    # Fixed fragments and struct field names only: no value is ever formatted into these strings.
    sql = {
        "users": f"SELECT {_USERS.columns} FROM users {where_user} ORDER BY id",  # noqa: S608
        "follows": f"SELECT {_FOLLOWS.columns} FROM user_whale_follows {where_uid}",  # noqa: S608
        "balances": f"SELECT {_BALANCES.columns} FROM balances {where_uid}",  # noqa: S608
        "positions": f"SELECT {_POSITIONS.columns} FROM positions WHERE status IN ('open', 'closing') {and_uid}",  # noqa: S608
        "trades": f"SELECT {_TRADES.columns}, {_CREATED} FROM trades WHERE status = ANY({statuses}) {and_uid}",  # noqa: S608
        "failed_closes": f"""SELECT position_id, count(*) AS n FROM trades
            WHERE reduce_only AND position_id IS NOT NULL AND left(client_order_id, 1) IN ('x', 'r')
              AND status IN ('rejected', 'failed', 'cancelled', 'partially_filled', 'filled') {and_uid}
            GROUP BY position_id""",  # noqa: S608
        # Today (UTC) so far: filled trades, and realised PnL = the total now minus the total at the last
        # snapshot taken before midnight. With the engine up at midnight that is the day-close snapshot
        # (engine/portfolio.py), stamped 23:59:59.999999 with the total at the boundary: exact. Stopped cleanly
        # before midnight, it is the shutdown snapshot (EngineSystem.stop), taken with the books settled: exact
        # too. Without any snapshot before midnight, the realised PnL of positions opened or closed today.
        "today": f"""SELECT user_id, count(*) AS n FROM trades
            WHERE status IN ('filled', 'partially_filled')
              AND updated_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' {and_uid}
            GROUP BY user_id""",  # noqa: S608
        "realized_today": f"""
            WITH midnight AS (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS t),
                 before AS (
                    SELECT DISTINCT ON (user_id) user_id, realized_pnl_usdt FROM portfolio_snapshots, midnight
                    WHERE taken_at < midnight.t ORDER BY user_id, taken_at DESC),
                 total AS (SELECT user_id, sum(realized_pnl_usdt) AS s FROM positions GROUP BY user_id),
                 touched AS (
                    SELECT user_id, sum(realized_pnl_usdt) AS s FROM positions, midnight
                    WHERE opened_at >= midnight.t OR closed_at >= midnight.t GROUP BY user_id)
            SELECT user_id, s::text FROM (
                SELECT t.user_id,
                       CASE WHEN b.user_id IS NULL THEN coalesce(x.s, 0) ELSE t.s - b.realized_pnl_usdt END AS s
                FROM total t LEFT JOIN before b USING (user_id) LEFT JOIN touched x USING (user_id)
                WHERE true {and_uid.replace("user_id", "t.user_id")}) d
            WHERE s <> 0""",  # noqa: S608
        "realized": f"""SELECT user_id, sum(realized_pnl_usdt)::text FROM positions {where_uid}
            GROUP BY user_id HAVING sum(realized_pnl_usdt) <> 0""",  # noqa: S608
    }  # fmt: skip
    return {
        name: (text, [*args, list(_OPEN_TRADE_STATUSES)] if name == "trades" else args) for name, text in sql.items()
    }


async def _fetch(
    conn: asyncpg.Connection | asyncpg.Pool, queries: dict[str, tuple[str, list[Any]]], *, concurrent: bool
) -> dict[str, Any]:
    """Every query's rows; on a pool, if ``concurrent``, on several connections at once (the server works on
    one query while we decode another). Only for the full load: a one-user reload should not take the pool."""
    if concurrent and isinstance(conn, asyncpg.Pool):
        results = await asyncio.gather(*(conn.fetch(text, *args) for text, args in queries.values()))
        return dict(zip(queries, results, strict=True))
    return {name: await conn.fetch(text, *args) for name, (text, args) in queries.items()}


def _by_user(items: Iterable[Any]) -> dict[int, tuple[Any, ...]]:
    grouped: dict[int, list[Any]] = {}
    for item in items:
        grouped.setdefault(item.user_id, []).append(item)
    return {uid: tuple(group) for uid, group in grouped.items()}


async def load_followers(
    conn: asyncpg.Connection | asyncpg.Pool, user_ids: Iterable[int] | None = None, *, skipped: set[int] | None = None
) -> list[FollowerState]:
    """Every user's ``FollowerState`` (or only ``user_ids``), built from a handful of set-based queries. A user
    with a row that cannot be decoded is left out (logged) and added to ``skipped``."""
    ids = list(user_ids) if user_ids is not None else None
    rows = await _fetch(conn, _queries(ids), concurrent=ids is None)
    decimal = _decimals()
    bad: dict[int, str] = {}
    follows = _by_user(_FOLLOWS.build(rows["follows"], decimal, bad))
    balances = _by_user(_BALANCES.build(rows["balances"], decimal, bad))
    positions = _by_user(_POSITIONS.build(rows["positions"], decimal, bad))
    open_trades = _by_user(_TRADES.build(rows["trades"], decimal, bad))
    created: dict[int, dict[str, datetime]] = {}
    for r in rows["trades"]:
        created.setdefault(r["user_id"], {})[r["client_order_id"]] = r["created_at"]
    attempts: dict[str, int] = {r["position_id"]: int(r["n"]) for r in rows["failed_closes"]}
    trades_today: dict[int, int] = {r["user_id"]: int(r["n"]) for r in rows["today"]}
    pnl_today = _finite_totals(rows["realized_today"], decimal, bad)
    totals = _finite_totals(rows["realized"], decimal, bad)

    states = []
    for user in _USERS.build(rows["users"], decimal, bad):
        uid = user.user_id
        if uid in bad:
            continue
        extra: dict[str, Any] = {}  # only what differs from FollowerState's defaults
        if (held := positions.get(uid)) is not None:
            extra["positions"] = held
            if close_attempts := {p.position_id: attempts[p.position_id] for p in held if p.position_id in attempts}:
                extra["close_attempts"] = close_attempts
        if (trades := open_trades.get(uid)) is not None:
            extra["open_trades"] = trades
            extra["trade_created_at"] = created[uid]
        if (total := totals.get(uid)) is not None:
            extra["realized_total_usdt"] = total
        if (count := trades_today.get(uid)) is not None:
            extra["trades_today"] = count
        if (pnl := pnl_today.get(uid)) is not None:
            extra["realized_today_usdt"] = pnl
        states.append(FollowerState(user=user, follows=follows.get(uid, ()), balances=balances.get(uid, ()), **extra))
    if skipped is not None:
        skipped.update(bad)
    return states


def _finite_totals(
    rows: Iterable[Sequence[Any]], decimal: Callable[[str], Decimal], bad: dict[int, str]
) -> dict[int, Decimal]:
    """``user_id -> realised PnL`` from ``(user_id, sum::text)`` rows; a non-finite sum sets its user aside."""
    totals = {}
    for user_id, text in rows:
        value = decimal(text)
        if value.is_finite():
            totals[user_id] = value
        else:
            _POSITIONS.set_aside(user_id, f"realised PnL is not a finite number: {value}", bad)
    return totals


async def load_whale_ids(conn: asyncpg.Connection | asyncpg.Pool) -> frozenset[int]:
    """Whales signals may come from (enabled ones)."""
    rows = await conn.fetch("SELECT id FROM whales WHERE enabled")
    return frozenset(r["id"] for r in rows)
