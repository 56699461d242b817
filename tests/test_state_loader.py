"""Start-up state: users, follows, balances, open positions, open trades and today's counters from PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from adapters.database import connect, connect_pool
from adapters.state_loader import load_followers, load_whale_ids
from engine.follower_state import FollowerState
from engine.messages import FollowSettings, PositionStatus, SizingMode, TradeStatus
from tests.kit import capture_logs, events, execute, fresh_database


def _load(dsn: str, user_ids: list[int] | None = None) -> tuple[list[FollowerState], frozenset[int]]:
    async def run() -> tuple[list[FollowerState], frozenset[int]]:
        conn = await connect(dsn)
        try:
            return await load_followers(conn, user_ids), await load_whale_ids(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_loads_everything_a_follower_is_rebuilt_from(pg_dsn: str) -> None:
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    execute(pg_dsn, "INSERT INTO whales (id, name) VALUES (501, 'w'), (502, 'off')")
    execute(pg_dsn, "UPDATE whales SET enabled = false WHERE id = 502")
    execute(
        pg_dsn, "INSERT INTO users (id, name, max_leverage, paused) VALUES (601, 'a', 7, true), (602, 'b', 3, false)"
    )
    execute(
        pg_dsn,
        "INSERT INTO user_whale_follows (user_id, whale_id, sizing_mode, fixed_usdt, stop_loss_pct)"
        " VALUES (601, 501, 'fixed_usdt', 42, 3)",
    )
    execute(
        pg_dsn, "INSERT INTO balances (user_id, venue, asset, free, reserved) VALUES (601, 'paper', 'USDT', 900, 100)"
    )
    position = (
        "INSERT INTO positions (position_id, user_id, venue, symbol, trade_type, side, qty, entry_price, leverage,"
        " margin_usdt, status, realized_pnl_usdt, opened_at, closed_at)"
        " VALUES ($1, 601, 'paper', $2, 'futures', 'long', 1, 100, 5, 20, $3, $4, $5, $6)"
    )
    execute(pg_dsn, position, "p-open", "BTC/USDT:USDT", "open", Decimal("-0.5"), now, None)
    execute(
        pg_dsn,
        position,
        "p-old",
        "ETH/USDT:USDT",
        "closed",
        Decimal(7),
        midnight - timedelta(days=2),
        midnight - timedelta(days=1),
    )
    execute(pg_dsn, position, "p-today", "SOL/USDT:USDT", "closed", Decimal(-3), midnight - timedelta(days=1), now)
    trade = (
        "INSERT INTO trades (client_order_id, user_id, venue, symbol, trade_type, side, qty, price, status,"
        " reserved_usdt, position_id, reduce_only, created_at, updated_at)"
        " VALUES ($1, 601, 'paper', 'BTC/USDT:USDT', 'futures', 'buy', 1, 100, $2, $3, $4, $5, $6, $6)"
    )
    execute(pg_dsn, trade, "c-unknown", "unknown", Decimal(21), "p-new", False, now)
    execute(pg_dsn, trade, "c-filled-today", "filled", Decimal(0), "p-open", False, now)
    execute(pg_dsn, trade, "c-filled-old", "filled", Decimal(0), "p-old", False, midnight - timedelta(days=1))
    execute(pg_dsn, trade, "x-close-rejected", "rejected", Decimal(0), "p-open", True, now)

    states, whales = _load(pg_dsn, [601, 602])
    assert whales >= {501} and 502 not in whales
    by_id = {s.user.user_id: s for s in states}
    a = by_id[601]
    assert a.user.max_leverage == 7 and a.user.paused is True
    assert [(f.whale_id, f.fixed_usdt, f.stop_loss_pct) for f in a.follows] == [(501, Decimal(42), Decimal(3))]
    assert [(b.free, b.reserved) for b in a.balances] == [(Decimal(900), Decimal(100))]
    assert [p.position_id for p in a.positions] == ["p-open"]
    assert a.positions[0].status is PositionStatus.OPEN
    assert [(t.client_order_id, t.status, t.reserved_usdt) for t in a.open_trades] == [
        ("c-unknown", TradeStatus.UNKNOWN, Decimal(21))
    ]
    assert "c-unknown" in a.trade_created_at
    assert a.close_attempts == {"p-open": 1}  # the rejected engine close spent its id
    assert a.realized_total_usdt == Decimal("3.5")  # -0.5 + 7 - 3
    assert a.trades_today == 1
    # No snapshot before midnight: today's realised PnL is that of positions opened or closed today.
    assert a.realized_today_usdt == Decimal("-3.5")
    assert by_id[602].follows == () and by_id[602].positions == ()

    # With a snapshot from before midnight, today's realised PnL is the difference of totals.
    execute(
        pg_dsn,
        "INSERT INTO portfolio_snapshots (user_id, taken_at, equity_usdt, free_usdt, reserved_usdt,"
        " unrealized_pnl_usdt, realized_pnl_usdt, open_positions, trades_today)"
        " VALUES (601, $1, 1000, 1000, 0, 0, 6, 0, 0)",
        midnight - timedelta(minutes=5),
    )
    (a,), _ = _load(pg_dsn, [601])
    assert a.realized_today_usdt == Decimal("-2.5")  # 3.5 now - 6 at midnight


def test_defaults_are_shared_and_a_pool_loads_the_same_as_a_connection(pg_dsn: str) -> None:
    # Start-up reads 100,000 users: a value equal to the struct's default must come back as the default object
    # (no Decimal of its own), equal numerics must share one Decimal, and every other value must round-trip.
    execute(pg_dsn, "INSERT INTO whales (id, name) VALUES (511, 'w')")
    execute(pg_dsn, "INSERT INTO users (id, name, preferred_exchange) VALUES (611, 'a', 'paper'), (612, 'b', 'bn')")
    execute(
        pg_dsn,
        "INSERT INTO user_whale_follows (user_id, whale_id) VALUES (611, 511);"
        " INSERT INTO user_whale_follows (user_id, whale_id, sizing_mode, fixed_usdt, percent_of_balance, paused)"
        " VALUES (612, 511, 'percent_of_balance', 100.50, 5.0, true)",
    )
    execute(
        pg_dsn,
        "INSERT INTO balances (user_id, venue, asset, free, reserved)"
        " VALUES (611, 'paper', 'USDT', 250.10, 0), (612, 'bn', 'USDT', 250.10, 0.00)",
    )
    states, _ = _load(pg_dsn, [611, 612])
    a, b = sorted(states, key=lambda s: s.user.user_id)
    default = FollowSettings(user_id=0, whale_id=0)
    assert a.follows[0] == FollowSettings(user_id=611, whale_id=511)
    assert a.follows[0].fixed_usdt is default.fixed_usdt and a.follows[0].max_slippage_pct is default.max_slippage_pct
    assert (b.user.preferred_exchange, b.follows[0].sizing_mode, b.follows[0].paused) == (
        "bn",
        SizingMode.PERCENT_OF_BALANCE,
        True,
    )
    assert str(b.follows[0].fixed_usdt) == "100.50"  # numerics keep their scale
    assert b.follows[0].percent_of_balance is default.percent_of_balance  # 5.0 = 5: the default
    assert a.balances[0].free is b.balances[0].free and str(a.balances[0].free) == "250.10"
    assert (str(a.balances[0].reserved), str(b.balances[0].reserved)) == ("0", "0.00")

    async def via_pool() -> list[FollowerState]:
        pool = await connect_pool(pg_dsn, min_size=1, max_size=4, connect_timeout_s=10)
        try:
            return [s for s in await load_followers(pool) if s.user.user_id in (611, 612)]
        finally:
            await pool.close()

    assert sorted(asyncio.run(via_pool()), key=lambda s: s.user.user_id) == [a, b]


def test_a_poisoned_row_sets_its_user_aside_and_everyone_else_loads(pg_server: str) -> None:
    """A value PostgreSQL stores but the engine cannot represent, in each table the loader reads: that user is
    left out with ``state.row_undecodable`` (table, user, reason), the others load (was: the whole load raised
    ``OverflowError: date value out of range``, and the engine could not start)."""
    dsn = asyncio.run(fresh_database(pg_server, f"t_state_poison_{uuid.uuid4().hex[:8]}"))
    # As in a database from before schema step 2 (or edited by hand): the follows' bounds are not there.
    execute(dsn, "ALTER TABLE user_whale_follows DROP CONSTRAINT user_whale_follows_amounts_sane")
    execute(dsn, "INSERT INTO whales (id, name) VALUES (1, 'w')")
    users = {"good": 700, "opened_at": 701, "created_at": 702, "follow_nan": 703, "balance_inf": 704, "pnl_nan": 705}
    balance = "INSERT INTO balances (user_id, venue, asset, free, reserved) VALUES ($1, 'paper', 'USDT', 1, 0)"
    for uid in users.values():
        execute(dsn, "INSERT INTO users (id, name) VALUES ($1, 'u')", uid)
        execute(dsn, balance, uid)
    execute(dsn, "INSERT INTO user_whale_follows (user_id, whale_id) VALUES (700, 1)")
    execute(dsn, "INSERT INTO user_whale_follows (user_id, whale_id, fixed_usdt) VALUES (703, 1, 'NaN')")
    execute(dsn, "UPDATE balances SET free = 'Infinity' WHERE user_id = 704")
    position = (
        "INSERT INTO positions (position_id, user_id, venue, symbol, trade_type, side, qty, entry_price, leverage,"
        " margin_usdt, status, realized_pnl_usdt, opened_at)"
        " VALUES ($1, $2, 'paper', 'BTC/USDT:USDT', 'futures', 'long', 1, 100, 5, 20, $3, $4::text::numeric,"
        " $5::text::timestamptz)"
    )
    execute(dsn, position, "p-good", 700, "open", "0", "2026-01-01 00:00:00+00")
    execute(dsn, position, "p-inf", 701, "open", "0", "-infinity")
    execute(dsn, position, "p-nan", 705, "closed", "NaN", "2026-01-01 00:00:00+00")
    execute(
        dsn,
        "INSERT INTO trades (client_order_id, user_id, venue, symbol, trade_type, side, qty, price, status,"
        " created_at) VALUES ('c-far', 702, 'paper', 'BTC/USDT:USDT', 'futures', 'buy', 1, 100, 'unknown',"
        " '200000-01-01 00:00:00+00')",
    )
    skipped: set[int] = set()

    async def run() -> list[FollowerState]:
        conn = await connect(dsn)
        try:
            return await load_followers(conn, skipped=skipped)
        finally:
            await conn.close()

    with capture_logs() as logs:
        states = asyncio.run(run())
    assert [s.user.user_id for s in states] == [700]
    assert [p.position_id for p in states[0].positions] == ["p-good"]
    poisoned = {uid for name, uid in users.items() if name != "good"}
    assert skipped == poisoned
    by_user = {e["user_id"]: e for e in events(logs, "state.row_undecodable")}
    assert set(by_user) == poisoned
    assert by_user[701]["table"] == "positions" and "opened_at out of range" in by_user[701]["reason"]
    assert by_user[702]["table"] == "trades" and "created_at out of range" in by_user[702]["reason"]
    assert by_user[703]["table"] == "user_whale_follows" and "fixed_usdt" in by_user[703]["reason"]
    assert by_user[704]["table"] == "balances" and "free" in by_user[704]["reason"]
    assert "realised PnL" in by_user[705]["reason"]
    # One user at a time (the supervisor's restart) behaves the same.
    assert [s.user.user_id for s in _load(dsn, [701, 700])[0]] == [700]
