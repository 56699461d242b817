"""PostgreSQL access: connection pools with the engine's codecs, the schema and its numbered migrations.

Runs on the I/O loop (asyncpg). Codecs: ``numeric`` is ``Decimal`` both ways (asyncpg's binary codec, never
float); ``json``/``jsonb`` are Python objects through orjson (Decimal and Structs in payloads become strings /
dicts).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec
import orjson

from engine import jsonenc
from engine.logs import get_logger
from engine.messages import BalanceRow, DomainEventRow, PositionRow, SignalStatusRow, SnapshotRow, TradeRow

log = get_logger(__name__)


# pg_advisory_lock key serialising schema changes between processes ("ctschema" as an int64).
_SCHEMA_LOCK_KEY = 0x6374736368656D61


class Migration(NamedTuple):
    """One numbered schema step. Steps are applied in order, each in its own transaction, and recorded in
    ``schema_migrations``. Never edit a released step: add the next number."""

    version: int
    name: str
    sql: str


def schema_sql() -> str:
    """The text of ``adapters/schema.sql``, package data found through ``importlib.resources`` (so an installed
    wheel has it, not only a source checkout)."""
    return importlib.resources.files("adapters").joinpath("schema.sql").read_text(encoding="utf-8")


_STEP_MARK = re.compile(r"^(?=-- Migration step \d+: )", re.MULTILINE)


def migrations() -> tuple[Migration, ...]:
    """The steps of ``schema.sql``, each starting at a ``-- Migration step N:`` line (so the file alone, replayed
    by hand, is the whole schema); name a new step below. Never edit a released step: append the next one."""
    steps = [part for part in _STEP_MARK.split(schema_sql()) if part.strip()]
    names = (
        "initial schema",
        "refuse what the engine cannot represent",
        "configuration rows' updated_at representable",
    )
    assert len(steps) == len(names), "one name per step of schema.sql"
    return tuple(Migration(n, name, sql) for n, (name, sql) in enumerate(zip(names, steps, strict=True), 1))


def json_dumps(value: Any) -> str:
    """JSON for PostgreSQL under ``engine.jsonenc``'s policy (Decimals as plain strings, which ``NUMERIC`` reads
    exactly); an unknown type raises rather than being stored as its repr."""
    return jsonenc.dumps(value, strict=True).decode()


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + jsonenc.dumps(value, strict=True)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    """Install the engine's codecs on a new connection (also for a plain ``asyncpg.connect``)."""
    await conn.set_type_codec("json", schema="pg_catalog", encoder=json_dumps, decoder=orjson.loads, format="text")
    # Binary jsonb (a version byte, then the text) so COPY, which is binary, can carry it too.
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_encode, decoder=_jsonb_decode, format="binary"
    )


async def connect(dsn: str, *, timeout_s: float = 5.0) -> asyncpg.Connection:
    """One connection with the engine's codecs (LISTEN, tools, tests)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=timeout_s)
    await init_connection(conn)
    return conn


async def connect_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    connect_timeout_s: float = 5.0,
    command_timeout_s: float | None = None,
) -> asyncpg.Pool:
    """A pool whose connections carry the engine's codecs. ``connect_timeout_s`` bounds each connection
    attempt (asyncpg's default is 60 s, far too long to notice an unreachable server)."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        timeout=connect_timeout_s,
        command_timeout=command_timeout_s,
        server_settings={"application_name": "copytrade-engine"},
    )
    return pool


async def apply_schema(pool_or_conn: asyncpg.Pool | asyncpg.Connection) -> list[int]:
    """Apply the migration steps not yet recorded; return the versions applied now (empty if none).

    Safe when several processes start at once: a session advisory lock serialises them, and each step
    re-checks ``schema_migrations`` under that lock.
    """
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            return await _apply_schema(conn)
    return await _apply_schema(pool_or_conn)


async def _apply_schema(conn: asyncpg.Connection) -> list[int]:
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _SCHEMA_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for step in migrations():
            if step.version in done:
                continue
            async with conn.transaction():
                await conn.execute(step.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", step.version, step.name
                )
            applied_now.append(step.version)
            log.info("database.migration_applied", version=step.version, name=step.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _SCHEMA_LOCK_KEY)
    return applied_now


def dsn_with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` instead."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(name)))


async def create_database(server_dsn: str, name: str) -> str:
    """Create database ``name`` (if missing) on the server of ``server_dsn``; return its DSN. For tests."""
    conn = await asyncpg.connect(server_dsn, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            quoted = '"' + name.replace('"', '""') + '"'
            # Created meanwhile by another session: same outcome.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f"CREATE DATABASE {quoted} TEMPLATE template0")
    finally:
        await conn.close()
    return dsn_with_database(server_dsn, name)


# ------------------------------------------------------------------------------------------------------------
# Row writes for the persistence actor: one idempotent statement per row kind, keyed by its natural key.
# ------------------------------------------------------------------------------------------------------------

_ClientDataError: type[Exception] = asyncpg.exceptions._base.DataError  # noqa: SLF001 - bad query argument, client side

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # admin shutdown, cannot connect now (server starting)
    asyncpg.InterfaceError,  # "connection is closed" and friends
)


def is_data_error(exc: BaseException) -> bool:
    """True when the rows are at fault (a CHECK, a NOT NULL, a value that does not encode): retrying the
    same rows can never succeed, so the batch is bisected to find them."""
    if isinstance(exc, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError | _ClientDataError):
        return True
    return isinstance(exc, ValueError | TypeError) and not isinstance(exc, asyncpg.InterfaceError)


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, CONNECTION_ERRORS) and not is_data_error(exc)


_STATUS_RANK = "CASE {0} WHEN 'pending' THEN 0 WHEN 'processing' THEN 1 ELSE 2 END"
_TERMINAL = "('processed', 'failed', 'expired')"


class RowSpec(NamedTuple):
    """How one Struct kind is written: its table, its columns (= Struct fields, in order) and statements."""

    kind: type[msgspec.Struct]
    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    versioned: bool

    @property
    def staging(self) -> str:
        return f"stage_{self.table}"

    def create_staging_sql(self) -> str:
        rename = {"signal_id": "id AS signal_id"} if self.kind is SignalStatusRow else {}
        select = ", ".join(rename.get(c, c) for c in self.columns)
        return (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.staging} ON COMMIT DELETE ROWS AS "  # noqa: S608 - constants
            f"SELECT {select} FROM {self.table} WITH NO DATA"
        )

    def upsert_sql(self, source: str) -> str:
        cols = ", ".join(self.columns)
        if self.kind is SignalStatusRow:
            return _signal_status_sql(source)
        head = f"INSERT INTO {self.table} AS t ({cols}) {source} ON CONFLICT ({', '.join(self.key)}) DO "
        if not self.versioned:
            return head + "NOTHING"
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns if c not in self.key)
        # >= not >: a retried batch re-applies the same version harmlessly; an older one never lands.
        return head + f"UPDATE SET {sets}, updated_at = now() WHERE t.version <= EXCLUDED.version"

    def values_source(self) -> str:
        if self.kind is SignalStatusRow:
            return (
                "SELECT $1::bigint AS signal_id, $2::text AS status, $3::int AS copied, $4::int AS skipped,"
                " $5::int AS failed, $6::jsonb AS skip_reasons, $7::text AS error"
            )
        return "VALUES (" + ", ".join(f"${i + 1}" for i in range(len(self.columns))) + ")"

    def natural_key(self, row: Any) -> tuple[Any, ...]:
        return tuple(getattr(row, k) for k in self.key)

    def record(self, row: Any, *, stored_at: datetime) -> tuple[Any, ...]:
        """``row``'s column values; ``stored_at`` (the caller's clock) stamps an event row that has no time."""
        if type(row) is DomainEventRow and row.occurred_at is None:
            # An explicit NULL would defeat the column default: a timeless fact gets the time it is stored.
            row = msgspec.structs.replace(row, occurred_at=stored_at)
        return tuple(getattr(row, c) for c in self.columns)


def _signal_status_sql(source: str) -> str:
    # An UPDATE: the signal row exists (its source inserted it). Status only moves forward
    # (pending -> processing -> terminal), so a late retry of an older status cannot undo a newer one.
    # Identifiers and SQL fragments are module constants, hence the noqa.
    return (
        "UPDATE whale_signals AS t SET status = s.status, copied = s.copied, skipped = s.skipped,"  # noqa: S608
        " failed = s.failed, skip_reasons = s.skip_reasons, error = s.error,"
        " claimed_at = CASE WHEN s.status <> 'pending' THEN coalesce(t.claimed_at, now())"
        " ELSE t.claimed_at END,"
        f" processed_at = CASE WHEN s.status IN {_TERMINAL} THEN coalesce(t.processed_at, now())"
        " ELSE t.processed_at END,"
        " updated_at = now(), version = t.version + 1"
        f" FROM ({source}) AS s WHERE t.id = s.signal_id"
        f" AND {_STATUS_RANK.format('s.status')} >= {_STATUS_RANK.format('t.status')}"
    )


def _spec(kind: type[msgspec.Struct], table: str, key: tuple[str, ...], *, versioned: bool) -> RowSpec:
    return RowSpec(kind, table, tuple(kind.__struct_fields__), key, versioned)


ROW_SPECS: dict[type[Any], RowSpec] = {
    spec.kind: spec
    for spec in (
        _spec(TradeRow, "trades", ("client_order_id",), versioned=True),
        _spec(PositionRow, "positions", ("position_id",), versioned=True),
        _spec(BalanceRow, "balances", ("user_id", "venue", "asset"), versioned=True),
        _spec(DomainEventRow, "domain_events", ("event_id",), versioned=False),
        _spec(SnapshotRow, "portfolio_snapshots", ("user_id", "taken_at"), versioned=False),
        _spec(SignalStatusRow, "whale_signals", ("signal_id",), versioned=False),
    )
}
INTENT_SPEC = RowSpec(TradeRow, "trades", ROW_SPECS[TradeRow].columns, ("client_order_id",), versioned=False)


def collapse(rows: Iterable[Any]) -> list[Any]:
    """One row per natural key: the highest version, the later one on a tie (ON CONFLICT cannot touch a row
    twice in one statement, and the newest state is the one to keep)."""
    latest: dict[tuple[Any, ...], Any] = {}
    for row in rows:
        spec = ROW_SPECS[type(row)]
        key = (spec.table, *spec.natural_key(row))
        old = latest.get(key)
        if old is None or getattr(row, "version", 0) >= getattr(old, "version", 0):
            latest[key] = row
    return list(latest.values())


async def write_rows(
    conn: asyncpg.Connection,
    rows: Sequence[Any],
    *,
    stored_at: datetime,
    use_copy: bool = True,
    intents: bool = False,
) -> None:
    """Upsert ``rows`` (already collapsed) in one transaction. ``intents``: trade intents, inserted once
    (ON CONFLICT DO NOTHING) so an existing row, whatever its state, is left alone. ``stored_at``: the time
    an event row without one is stamped with (the caller's clock)."""
    by_spec: dict[RowSpec, list[tuple[Any, ...]]] = {}
    for row in rows:
        spec = INTENT_SPEC if intents else ROW_SPECS[type(row)]
        by_spec.setdefault(spec, []).append(spec.record(row, stored_at=stored_at))
    async with conn.transaction():
        for spec, records in by_spec.items():
            if use_copy:
                await conn.execute(spec.create_staging_sql())
                await conn.copy_records_to_table(spec.staging, records=records, columns=list(spec.columns))
                source = f"SELECT {', '.join(spec.columns)} FROM {spec.staging}"  # noqa: S608 - constants
                await conn.execute(spec.upsert_sql(source))
            else:
                await conn.executemany(spec.upsert_sql(spec.values_source()), records)


async def bisect_writes(
    rows: Sequence[Any], write: Callable[[Sequence[Any]], Awaitable[None]]
) -> list[tuple[Any, str]]:
    """``write(rows)``; on a data error split the batch until the rows at fault are alone. Returns those
    ``(row, error)`` pairs; everything else is written. Any other error propagates (nothing is lost: the
    caller retries the whole batch, and the writes are idempotent)."""
    poison: list[tuple[Any, str]] = []

    async def attempt(chunk: Sequence[Any]) -> None:
        try:
            await write(chunk)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            if len(chunk) == 1:
                poison.append((chunk[0], f"{getattr(exc, 'sqlstate', None) or type(exc).__name__}: {exc}"))
                return
            mid = len(chunk) // 2
            await attempt(chunk[:mid])
            await attempt(chunk[mid:])

    await attempt(rows)
    return poison


async def write_with_bisect(
    conn: asyncpg.Connection,
    rows: Sequence[Any],
    *,
    stored_at: datetime,
    use_copy: bool = True,
    intents: bool = False,
) -> list[tuple[Any, str]]:
    """``write_rows`` under ``bisect_writes``."""
    return await bisect_writes(
        rows, lambda chunk: write_rows(conn, chunk, stored_at=stored_at, use_copy=use_copy, intents=intents)
    )


def _storable(value: Any) -> Any:
    """``value`` with every NUL character written out as ``\\x00``: PostgreSQL text and jsonb refuse U+0000
    (a venue's error text can carry one), and a dead letter that cannot be stored would fail its batch."""
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


async def write_dead_letters(conn: asyncpg.Connection, letters: Sequence[tuple[Any, str]]) -> None:
    """Store rows the schema rejected, once each (by fingerprint). A value JSON cannot carry (the very reason
    some rows are here) is stored as its ``repr`` instead of failing the batch, which would then be retried
    forever."""
    records = []
    for row, error in letters:
        kind = type(row).__name__
        payload = _storable(msgspec.to_builtins(row, enc_hook=repr))
        fingerprint = hashlib.sha256(kind.encode() + orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
        records.append((kind, payload, _storable(error), fingerprint.hexdigest()))
    await conn.executemany(
        "INSERT INTO dead_letters (kind, payload, error, fingerprint) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (fingerprint) DO NOTHING",
        records,
    )
