"""adapters/schema.sql and the migration runner (adapters/database.py)."""

from __future__ import annotations

import asyncio
import decimal
import importlib.resources
import typing
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import msgspec
import pytest

from adapters.database import apply_schema, connect, create_database, migrations, schema_sql
from engine.messages import (
    BalanceRow,
    DomainEventRow,
    FollowSettings,
    PositionRow,
    Signal,
    SignalStatusRow,
    SnapshotRow,
    TradeRow,
    UserSettings,
)
from tests.kit import execute, fetch, fetchval, wait_for_async

# Struct -> (table, renamed fields): every field of each Struct must be a column of its table.
CONTRACT: list[tuple[type[msgspec.Struct], str, dict[str, str]]] = [
    (UserSettings, "users", {"user_id": "id"}),
    (FollowSettings, "user_whale_follows", {}),
    (Signal, "whale_signals", {"signal_id": "id"}),
    (SignalStatusRow, "whale_signals", {"signal_id": "id"}),
    (TradeRow, "trades", {}),
    (PositionRow, "positions", {}),
    (DomainEventRow, "domain_events", {}),
    (SnapshotRow, "portfolio_snapshots", {}),
    (BalanceRow, "balances", {}),
]


def _fresh(pg_server: str) -> str:
    return asyncio.run(create_database(pg_server, f"t_schema_{uuid.uuid4().hex[:10]}"))


def test_apply_schema_twice_is_idempotent_and_records_versions(pg_server: str) -> None:
    dsn = _fresh(pg_server)

    async def run() -> tuple[list[int], list[int]]:
        conn = await connect(dsn)
        try:
            first = await apply_schema(conn)
            second = await apply_schema(conn)
            # The raw file is idempotent on its own too (it may be replayed by hand).
            await conn.execute(schema_sql())
            await conn.execute(schema_sql())
            return first, second
        finally:
            await conn.close()

    first, second = asyncio.run(run())
    assert first == [1, 2, 3]
    assert second == []
    rows = fetch(dsn, "SELECT version, applied_at FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert rows[0]["applied_at"] is not None


def test_concurrent_apply_schema_applies_once(pg_server: str) -> None:
    dsn = _fresh(pg_server)

    async def one() -> list[int]:
        conn = await connect(dsn)
        try:
            return await apply_schema(conn)
        finally:
            await conn.close()

    async def race() -> list[list[int]]:
        return list(await asyncio.gather(*(one() for _ in range(4))))

    results = asyncio.run(race())
    assert sorted(results) == [[], [], [], [1, 2, 3]]


@pytest.mark.parametrize(("struct", "table", "renamed"), CONTRACT)
def test_tables_carry_every_struct_field(
    pg_dsn: str, struct: type[msgspec.Struct], table: str, renamed: dict[str, str]
) -> None:
    columns = {
        r["column_name"]: r["data_type"]
        for r in fetch(
            pg_dsn,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1",
            table,
        )
    }
    hints = typing.get_type_hints(struct)
    for field in struct.__struct_fields__:
        column = renamed.get(field, field)
        assert column in columns, f"{table}.{column} missing for {struct.__name__}.{field}"
        if decimal.Decimal in (typing.get_args(hints[field]) or (hints[field],)):
            assert columns[column] == "numeric", f"{table}.{column} must be numeric (money is never float)"


def test_mutable_tables_have_version_and_updated_at(pg_dsn: str) -> None:
    for table in (
        "users",
        "whales",
        "user_whale_follows",
        "whale_signals",
        "trades",
        "positions",
        "balances",
    ):
        cols = {
            r[0]
            for r in fetch(pg_dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table)
        }
        assert {"version", "updated_at"} <= cols, table


def test_indexes_exist(pg_dsn: str) -> None:
    names = {r[0] for r in fetch(pg_dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert {
        "trades_user_status_idx",
        "trades_signal_idx",
        "positions_open_symbol_idx",
        "positions_user_idx",
        "whale_signals_queue_idx",
    } <= names


def test_check_constraints_reject_bad_values(pg_dsn: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        execute(
            pg_dsn,
            "INSERT INTO balances (user_id, venue, asset, free, reserved) VALUES (1, 'paper', 'USDT', -1, 0)",
        )


# (column, value as text) a signal must not carry: the engine cannot represent it (issue 13, poison input).
BAD_SIGNAL_VALUES = [
    ("detected_at", "200000-01-01 00:00:00+00"),
    ("detected_at", "4000-01-01 00:00:00+00 BC"),
    ("detected_at", "-infinity"),
    ("detected_at", "infinity"),
    ("expires_at", "infinity"),
    ("expires_at", "1970-01-01 00:00:00+00"),
    ("price", "NaN"),
    ("price", "Infinity"),
    ("size_usdt", "NaN"),
    ("size_usdt", "Infinity"),
    ("size_usdt", "1e40"),
    ("fraction", "NaN"),
    ("leverage", "1000"),
]
_SIGNAL_COLUMNS = {"detected_at": "timestamptz", "expires_at": "timestamptz", "leverage": "integer"}


def _insert_signal_sql(column: str | None = None) -> str:
    """A whale_signals INSERT with ``column`` given as $1 (text, cast); ``detected_at`` left to its default."""
    values = {"price": "3000", "size_usdt": "100", "leverage": "1"}
    if column is not None:
        values[column] = f"$1::text::{_SIGNAL_COLUMNS.get(column, 'numeric')}"
    names = ", ".join(values)
    return f"""INSERT INTO whale_signals (external_id, whale_id, symbol, side, action, trade_type, {names})
        VALUES (gen_random_uuid()::text, 1, 'BTC/USDT:USDT', 'buy', 'open', 'futures', {", ".join(values.values())})
        RETURNING id"""


@pytest.mark.parametrize(("column", "value"), BAD_SIGNAL_VALUES)
def test_check_constraints_refuse_signals_the_engine_cannot_represent(pg_dsn: str, column: str, value: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        execute(pg_dsn, _insert_signal_sql(column), value)


def test_detected_at_defaults_to_now(pg_dsn: str) -> None:
    signal_id = fetchval(pg_dsn, _insert_signal_sql())
    sql = "SELECT now() - detected_at < interval '1 minute' FROM whale_signals WHERE id = $1"
    assert fetchval(pg_dsn, sql, signal_id)


@pytest.mark.parametrize(
    ("table", "assignment"),
    [
        ("users", "max_leverage = 1000"),
        ("user_whale_follows", "max_leverage = 0"),
        ("user_whale_follows", "max_leverage = 126"),
        ("user_whale_follows", "fixed_usdt = 'NaN'"),
        ("user_whale_follows", "max_usdt_per_trade = 'Infinity'"),
        ("user_whale_follows", "whale_multiplier = 'NaN'"),
        ("user_whale_follows", "stop_loss_pct = 'Infinity'"),
        ("user_whale_follows", "daily_loss_limit_usdt = 'NaN'"),
    ],
)
def test_check_constraints_refuse_settings_the_engine_cannot_use(pg_dsn: str, table: str, assignment: str) -> None:
    execute(pg_dsn, "INSERT INTO users (id, name) VALUES (9101, 'bounds') ON CONFLICT DO NOTHING")
    execute(pg_dsn, "INSERT INTO whales (id, name) VALUES (9101, 'bounds') ON CONFLICT DO NOTHING")
    execute(pg_dsn, "INSERT INTO user_whale_follows (user_id, whale_id) VALUES (9101, 9101) ON CONFLICT DO NOTHING")
    where = "id = 9101" if table == "users" else "user_id = 9101"
    with pytest.raises(asyncpg.CheckViolationError):
        execute(pg_dsn, f"UPDATE {table} SET {assignment} WHERE {where}")


def test_check_constraints_refuse_an_unrepresentable_updated_at(pg_dsn: str) -> None:
    """The follows watcher polls on ``updated_at`` (an UPDATE is stamped by trigger; an INSERT keeps what it is
    given)."""
    execute(pg_dsn, "INSERT INTO whales (id, name) VALUES (9102, 'stamps') ON CONFLICT DO NOTHING")
    with pytest.raises(asyncpg.CheckViolationError):
        execute(pg_dsn, "INSERT INTO users (id, name, updated_at) VALUES (9102, 'x', '200000-01-01 00:00:00+00')")
    execute(pg_dsn, "INSERT INTO users (id, name) VALUES (9102, 'x')")
    with pytest.raises(asyncpg.CheckViolationError):
        execute(
            pg_dsn, "INSERT INTO user_whale_follows (user_id, whale_id, updated_at) VALUES (9102, 9102, 'infinity')"
        )


def test_existing_database_with_a_bad_row_gets_the_new_checks(pg_server: str) -> None:
    """A database from before step 2 that holds a row step 2 would refuse: the step applies (NOT VALID), the row
    stays for the intake to fail by itself, and a new bad row is refused."""
    dsn = _fresh(pg_server)

    async def run() -> list[int]:
        conn = await connect(dsn)
        try:
            await conn.execute(migrations()[0].sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (1, 'initial schema')")
            await conn.execute(_insert_signal_sql("detected_at"), "-infinity")
            return await apply_schema(conn)
        finally:
            await conn.close()

    assert asyncio.run(run()) == [2, 3]
    assert fetchval(dsn, "SELECT count(*) FROM whale_signals WHERE detected_at = '-infinity'") == 1
    with pytest.raises(asyncpg.CheckViolationError):
        execute(dsn, _insert_signal_sql("detected_at"), "-infinity")


def test_triggers_notify(pg_dsn: str) -> None:
    async def run() -> list[tuple[str, str]]:
        got: list[tuple[str, str]] = []
        listener = await connect(pg_dsn)
        writer = await connect(pg_dsn)
        try:
            for channel in ("whale_signals", "follows_changed"):
                await listener.add_listener(channel, lambda _c, _p, ch, payload: got.append((ch, payload)))
            user_id = await writer.fetchval("INSERT INTO users (name) VALUES ('u') RETURNING id")
            whale_id = await writer.fetchval("INSERT INTO whales (name) VALUES ('w') RETURNING id")
            await writer.execute(
                "INSERT INTO user_whale_follows (user_id, whale_id, fixed_usdt) VALUES ($1, $2, $3)",
                user_id,
                whale_id,
                Decimal("12.5"),
            )
            signal_id = await writer.fetchval(
                "INSERT INTO whale_signals (external_id, whale_id, symbol, side, action, trade_type, price,"
                " size_usdt, detected_at) VALUES ($1, $2, 'BTC/USDT', 'buy', 'open', 'spot', 100, 1000, $3)"
                " RETURNING id",
                f"ext-{uuid.uuid4()}",
                whale_id,
                datetime.now(UTC),
            )
            await writer.execute("DELETE FROM user_whale_follows WHERE user_id = $1", user_id)
            await wait_for_async(lambda: len(got) >= 4, interval_s=0.02)
            return [*got, ("ids", f"{user_id},{signal_id}")]
        finally:
            await listener.close()
            await writer.close()

    got = asyncio.run(run())
    user_id, signal_id = got[-1][1].split(",")
    assert ("follows_changed", user_id) in got  # users insert
    assert ("whale_signals", signal_id) in got
    assert got.count(("follows_changed", user_id)) == 3  # users insert, follow insert, follow delete


def test_numeric_and_jsonb_codecs(pg_dsn: str) -> None:
    value = Decimal("12345678901234567890.123456789")
    got = fetchval(pg_dsn, "SELECT $1::numeric", value)
    assert got == value and isinstance(got, Decimal)
    doc = fetchval(pg_dsn, "SELECT $1::jsonb", {"a": 1, "price": Decimal("1.10")})
    assert doc == {"a": 1, "price": "1.10"}


def test_schema_is_package_data_found_through_importlib_resources() -> None:
    """An installed wheel has no source tree around it: the schema travels inside the adapters package."""
    resource = importlib.resources.files("adapters").joinpath("schema.sql")
    assert resource.is_file()
    assert schema_sql() == resource.read_text(encoding="utf-8")
    assert "CREATE TABLE" in schema_sql()
