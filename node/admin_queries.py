"""The admin socket's read-only side: ``status``, ``stats``, ``users``, ``user``, ``positions``, ``trades``.

``AdminQueries`` is the base of ``EngineAdminHandler`` (``node/admin_handler.py``), which adds the commands
that change things. Both take the parts of the engine they use (refs, pool, venues, clock, stop controls), not
the engine. Everything here runs on the I/O loop, inside ``handle``: asks to actors (pykka futures)
run in the loop's default executor (``_blocking``), database reads are ``SELECT``s awaited on the engine's
asyncpg pool (reads are allowed anywhere; every write goes through the persistence actor). Replies are
JSON-ready dicts (records become dicts; the admin server encodes ``Decimal`` as a string and ``datetime`` as
ISO 8601). Lists are capped at ``ROW_LIMIT`` rows, newest first, and say so (``capped``).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import msgspec
import pykka

from actors.persistence import PersistenceActor
from actors.router import SignalRouterActor
from engine import runtime
from engine.admin_commands import CommandError, Positions, Trades
from engine.clock import Clock
from engine.messages import PositionRow, SnapshotRow
from engine.portfolio import Performance, performance
from node.stats import collect_stats
from node.venues import Venue

__all__ = ["ROW_LIMIT", "SNAPSHOT_LIMIT", "AdminQueries", "OperatorPauses"]

T = TypeVar("T")
_PACKAGE = "copytrade-engine"

ROW_LIMIT = 1000  # rows per list reply: an operator reads a screen, not a table dump
SNAPSHOT_LIMIT = 10_000  # equity points for the drawdown (the latest ones)

_USERS_SQL = """
SELECT u.id AS user_id, u.name, u.preferred_exchange, u.copy_trading_enabled, u.paused,
       (SELECT count(*) FROM user_whale_follows f WHERE f.user_id = u.id) AS follows,
       (SELECT count(*) FROM positions p WHERE p.user_id = u.id AND p.status IN ('open', 'closing'))
           AS open_positions
FROM users u ORDER BY u.id LIMIT $1
"""

_POSITION_COLUMNS = """position_id, user_id, venue, symbol, trade_type, side, qty, entry_price, leverage,
    margin_usdt, status, whale_id, stop_loss_price, take_profit_price, liquidation_price, realized_pnl_usdt,
    unrealized_pnl_usdt, opened_at, closed_at, close_reason"""

_TRADE_COLUMNS = """id AS trade_id, client_order_id, user_id, signal_id, whale_id, venue, symbol, trade_type,
    side, qty, price, status, reduce_only, leverage, position_id, executed_qty, executed_price, fee_usdt,
    error, created_at, updated_at"""


@dataclass
class OperatorPauses:
    """What the operator paused. Touched only on the I/O loop (by the handler)."""

    everything: bool = False
    users: set[int] = field(default_factory=set)
    whales: set[int] = field(default_factory=set)
    exchanges: set[str] = field(default_factory=set)

    def user_paused(self, user_id: int) -> bool:
        return self.everything or user_id in self.users

    def as_dict(self) -> dict[str, Any]:
        return {
            "all": self.everything,
            "users": sorted(self.users),
            "whales": sorted(self.whales),
            "exchanges": sorted(self.exchanges),
        }


class AdminQueries:
    """Read-only admin commands and the helpers the handler shares. ``pauses`` is the operator's state."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        router: pykka.ActorRef[SignalRouterActor],
        persistence: pykka.ActorRef[PersistenceActor],
        venues: Mapping[str, Venue],
        clock: Clock,
        started_at: float,
        shutdown: threading.Event,
        ask_timeout_s: float = 30.0,
    ) -> None:
        """``pool`` reads (never writes); ``router``, ``persistence`` and the ``venues``' exchange actors are
        asked for live figures; ``clock`` and ``started_at`` (its monotonic time at start) give the uptime;
        ``shutdown`` is the engine's stop control, read for ``status`` (draining is the router's: asked of it)."""
        self._pool = pool
        self._router = router
        self._persistence = persistence
        self._venues = venues
        self._clock = clock
        self._started_at = started_at
        self._shutdown = shutdown
        self._ask_timeout_s = ask_timeout_s
        self.pauses = OperatorPauses()

    # ---- helpers -----------------------------------------------------------------------------------------

    async def _blocking(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (actor asks, blocking system helpers) off the loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    def _get(self, future: Any) -> Any:
        return future.get(timeout=self._ask_timeout_s)

    def _refs(self) -> dict[int, Any]:
        """Every follower's ref, asked of the router (their owner). Blocks: call it in the executor."""
        return dict(self._get(self._router.proxy().follower_refs()))

    async def _ref(self, user_id: int) -> Any:
        """One follower's ref (``None``: not running), asked of the router off the loop."""
        router = self._router
        refs = await self._blocking(lambda: self._get(router.proxy().refs_of([user_id])))
        return refs.get(user_id)

    async def _follower(self, user_id: int) -> Any:
        ref = await self._ref(user_id)
        if ref is None or not ref.is_alive():
            raise CommandError(f"no running follower for user {user_id}")
        return ref

    # ---- status and stats --------------------------------------------------------------------------------

    async def _status(self) -> dict[str, Any]:
        reachable = await database_reachable(self._pool)
        live = await self._blocking(self._live_status)
        pool = runtime.pool_stats()
        return {
            "uptime_s": self._uptime_s(),
            "version": _version(),
            "draining": live["draining"],
            "shutdown_requested": self._shutdown.is_set(),
            **live["counts"],
            "actors": pool.actors,
            "workers": pool.workers,
            "queued_actors": pool.queued_actors,
            "mailbox_depth_total": pool.mailbox_depth_total,
            "mailbox_depth_max": pool.mailbox_depth_max,
            "persistence": live["persistence"],
            "venues": live["venues"],
            "database_reachable": reachable,
            "paused": self.pauses.as_dict(),
        }

    def _live_status(self) -> dict[str, Any]:
        """Runs in the executor: asks the router, the persistence actor and every exchange actor."""
        stats = self._get(self._persistence.proxy().stats())
        keys = ("queue_depth", "durable_pending", "last_flush_ms", "avg_flush_ms", "db_reachable")
        persistence = {k: stats.get(k) for k in keys}
        venues: dict[str, Any] = {}
        for name, venue in self._venues.items():
            try:
                status = self._get(venue.exchange.proxy().status())
            except Exception as exc:  # noqa: BLE001 - one stuck venue must not hide the others
                status = {"error": f"{type(exc).__name__}: {exc}"}
            venues[name] = {
                "kind": venue.kind,
                "entries_open": venue.entries_open,
                "paused": name in self.pauses.exchanges,
                **{k: v for k, v in status.items() if k not in ("venue", "counters")},
            }
        counts = self._get(self._router.proxy().counts())
        return {
            "counts": {
                "followers": counts.get("followers"),
                "whales": counts.get("whales"),
                "signals_in_flight": counts.get("in_flight"),
            },
            "draining": bool(counts.get("draining")),
            "persistence": persistence,
            "venues": venues,
        }

    async def _stats(self) -> dict[str, Any]:
        figures = await self._blocking(lambda: collect_stats(self._persistence, self._venues, consume=False))
        counts = await self._blocking(lambda: self._get(self._router.proxy().counts()))
        reachable = await database_reachable(self._pool)
        return {
            "uptime_s": self._uptime_s(),
            "version": _version(),
            **figures,
            "followers": counts.get("followers"),
            "whales": counts.get("whales"),
            "signals_in_flight": counts.get("in_flight"),
            "database_reachable": reachable,
        }

    def _uptime_s(self) -> float:
        return round(self._clock.monotonic() - self._started_at, 1)

    # ---- users -------------------------------------------------------------------------------------------

    async def _users(self) -> dict[str, Any]:
        rows = await list_users(self._pool)
        refs = await self._blocking(self._refs)
        for row in rows:
            ref = refs.get(row["user_id"])
            row["running"] = ref is not None and ref.is_alive()
            row["operator_paused"] = self.pauses.user_paused(row["user_id"])
        limit = ROW_LIMIT
        return {"users": rows[:limit], "count": min(len(rows), limit), "capped": len(rows) > limit}

    async def _user(self, user_id: int) -> dict[str, Any]:
        history = await user_history(self._pool, user_id)
        ref = await self._ref(user_id)
        live: dict[str, Any] | None = None
        if ref is not None:
            try:
                live = await self._blocking(lambda: self._get(ref.proxy().describe()))
            except pykka.ActorDeadError:
                live = None
        if history is None and live is None:
            raise CommandError(f"no user {user_id}")
        return {"user_id": user_id, "running": live is not None, "live": live, **(history or {})}

    async def _positions(self, cmd: Positions) -> dict[str, Any]:
        return await list_positions(self._pool, cmd)

    async def _trades(self, cmd: Trades) -> dict[str, Any]:
        return await list_trades(self._pool, cmd)


def _version() -> str:
    try:
        return importlib.metadata.version(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---- SQL -------------------------------------------------------------------------------------------------


def records(rows: Iterable[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(r) for r in rows]


def _capped(key: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    # We fetch ROW_LIMIT + 1 rows: the extra one only tells us there were more.
    return {key: rows[:ROW_LIMIT], "count": min(len(rows), ROW_LIMIT), "capped": len(rows) > ROW_LIMIT}


async def database_reachable(pool: asyncpg.Pool, timeout_s: float = 2.0) -> bool:
    """``SELECT 1`` within ``timeout_s`` (connection wait included)."""
    try:
        async with pool.acquire(timeout=timeout_s) as conn:
            return bool(await conn.fetchval("SELECT 1", timeout=timeout_s) == 1)
    except Exception:  # noqa: BLE001 - any failure is the answer: not reachable
        return False


async def list_users(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    return records(await pool.fetch(_USERS_SQL, ROW_LIMIT + 1))


async def position_owner(pool: asyncpg.Pool, position_id: str) -> int:
    """The user holding ``position_id``; ``CommandError`` if there is no such position."""
    user_id = await pool.fetchval("SELECT user_id FROM positions WHERE position_id = $1", position_id)
    if user_id is None:
        raise CommandError(f"no position {position_id!r}")
    return int(user_id)


async def list_positions(pool: asyncpg.Pool, cmd: Positions) -> dict[str, Any]:
    where: list[str] = []
    args: list[Any] = []
    if cmd.user_id is not None:
        args.append(cmd.user_id)
        where.append(f"user_id = ${len(args)}")
    if cmd.open_only:
        where.append("status IN ('open', 'closing')")
    args.append(ROW_LIMIT + 1)
    sql = (
        f"SELECT {_POSITION_COLUMNS} FROM positions {'WHERE ' + ' AND '.join(where) if where else ''} "  # noqa: S608 - fixed fragments
        f"ORDER BY opened_at DESC NULLS LAST, position_id LIMIT ${len(args)}"
    )
    return _capped("positions", records(await pool.fetch(sql, *args)))


async def list_trades(pool: asyncpg.Pool, cmd: Trades) -> dict[str, Any]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("user_id", cmd.user_id), ("signal_id", cmd.signal_id), ("status", cmd.status)):
        if value is not None:
            args.append(value.value if column == "status" else value)  # type: ignore[union-attr]
            where.append(f"{column} = ${len(args)}")
    args.append(ROW_LIMIT + 1)
    sql = (
        f"SELECT {_TRADE_COLUMNS} FROM trades {'WHERE ' + ' AND '.join(where) if where else ''} "  # noqa: S608 - fixed fragments
        f"ORDER BY id DESC LIMIT ${len(args)}"
    )
    return _capped("trades", records(await pool.fetch(sql, *args)))


async def user_history(pool: asyncpg.Pool, user_id: int) -> dict[str, Any] | None:
    """The user's row, follows, latest snapshot and performance; ``None`` if the user does not exist."""
    user = await pool.fetchrow(
        "SELECT id AS user_id, name, preferred_exchange, copy_trading_enabled, max_leverage, paused, "
        "created_at FROM users WHERE id = $1",
        user_id,
    )
    if user is None:
        return None
    follows = await pool.fetch(
        "SELECT whale_id, auto_copy_enabled, sizing_mode, fixed_usdt, percent_of_balance, whale_multiplier, "
        "max_usdt_per_trade, max_leverage, stop_loss_pct, take_profit_pct, paused "
        "FROM user_whale_follows WHERE user_id = $1 ORDER BY whale_id",
        user_id,
    )
    closed = await pool.fetch(
        "SELECT * FROM positions WHERE user_id = $1 AND status IN ('closed', 'liquidated')", user_id
    )
    snapshots = await pool.fetch(
        "SELECT * FROM portfolio_snapshots WHERE user_id = $1 ORDER BY taken_at DESC LIMIT $2",
        user_id,
        SNAPSHOT_LIMIT,
    )
    perf = performance((_row(r, PositionRow) for r in closed), [_row(r, SnapshotRow) for r in reversed(snapshots)])
    latest = dict(snapshots[0]) if snapshots else None
    if latest is not None:
        latest.pop("created_at", None)
    return {
        "settings": dict(user),
        "follows": records(follows),
        "latest_snapshot": latest,
        "performance": performance_dict(perf),
    }


def performance_dict(perf: Performance) -> dict[str, Any]:
    return {
        "closed_positions": perf.closed,
        "wins": perf.wins,
        "losses": perf.losses,
        "win_rate": perf.win_rate,
        "realized_pnl_usdt": perf.realized_pnl_usdt,
        "realized_pnl_by_day": {day.isoformat(): pnl for day, pnl in perf.realized_by_day.items()},
        "max_drawdown_usdt": perf.max_drawdown_usdt,
        "max_drawdown_pct": perf.max_drawdown_pct,
    }


def _row(record: asyncpg.Record, kind: type[Any]) -> Any:
    fields = set(kind.__struct_fields__)
    data = {k: v for k, v in dict(record).items() if k in fields and v is not None}
    return msgspec.convert(data, kind, strict=False)
