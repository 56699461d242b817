"""How the persistence actor writes a batch: one statement per table, the rows as one JSON document.

A batch of Structs is encoded by msgspec (C, ~1 µs a row: Decimals as exact strings, enums by value, datetimes
as RFC 3339 — a naive one would be read in the session's TimeZone; the engine's are aware UTC — nested payloads
as they are) and sent as a single ``text`` parameter; the server unpacks it with
``json_to_recordset`` and upserts with the row kind's ``ON CONFLICT`` rule from ``adapters.database.RowSpec``.
That replaced a COPY into a staging table plus an ``INSERT … SELECT`` per table: no per-row Python tuple, no
per-value Cython encoding (Decimals and jsonb through a Python codec), one round trip per table instead of
three. The rules themselves (versions never go back, facts are inserted once, signal status only moves
forward) are unchanged: they live in the SQL of ``RowSpec``.

Runs on the I/O loop.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import cache
from typing import Any

import asyncpg
import msgspec

from adapters import database as db
from engine.messages import DomainEventRow

# Decimals as strings: exact (a JSON number would go through a float on some readers; PostgreSQL reads either).
_encoder = msgspec.json.Encoder(decimal_format="string")

_SQL_TYPES: dict[type[msgspec.inspect.Type], str] = {
    msgspec.inspect.StrType: "text",
    msgspec.inspect.EnumType: "text",
    msgspec.inspect.LiteralType: "text",
    msgspec.inspect.IntType: "bigint",  # narrower columns take it by assignment (and reject what does not fit)
    msgspec.inspect.BoolType: "boolean",
    msgspec.inspect.DecimalType: "numeric",
    msgspec.inspect.DateTimeType: "timestamptz",
    msgspec.inspect.DictType: "jsonb",
    msgspec.inspect.AnyType: "jsonb",
}


def _sql_type(field_type: msgspec.inspect.Type) -> str:
    if isinstance(field_type, msgspec.inspect.UnionType):
        (field_type,) = (t for t in field_type.types if not isinstance(t, msgspec.inspect.NoneType))
    return _SQL_TYPES[type(field_type)]


def _select_list(spec: db.RowSpec) -> str:
    # A timeless fact gets the time it is stored (an explicit NULL would defeat the column default).
    fix = {"occurred_at": "coalesce(occurred_at, now())"} if spec.kind is DomainEventRow else {}
    return ", ".join(fix.get(c, c) for c in spec.columns)


@cache
def upsert_sql(spec: db.RowSpec) -> str:
    """The statement that writes a batch of ``spec``'s rows: ``$1`` is the JSON array of the rows."""
    info = msgspec.inspect.type_info(spec.kind)
    assert isinstance(info, msgspec.inspect.StructType)
    columns = ", ".join(f"{f.encode_name} {_sql_type(f.type)}" for f in info.fields)
    source = f"SELECT {_select_list(spec)} FROM json_to_recordset($1::text::json) AS r({columns})"  # noqa: S608
    return spec.upsert_sql(source)


def encode(rows: Sequence[Any]) -> str:
    """The JSON array of ``rows`` (Structs of one kind). Raises ``TypeError`` for a value JSON cannot carry,
    which the bisect treats like a value the schema rejects."""
    return _encoder.encode(rows).decode()


BeforeCommit = Callable[[], Awaitable[None]]


def collapse(rows: Iterable[Any]) -> dict[tuple[Any, ...], Any]:
    """One row per natural key, keyed by ``(table, *natural key)``: the highest version, the later one on a
    tie (``ON CONFLICT`` cannot touch a row twice in one statement, and the newest state is the one to keep).
    Same rule as ``adapters.database.collapse``; the keys tell whether two batches may be written at once."""
    latest: dict[tuple[Any, ...], Any] = {}
    for row in rows:
        key = _KEY_OF[type(row)](row)
        old = latest.get(key)
        if old is None or getattr(row, "version", 0) >= getattr(old, "version", 0):
            latest[key] = row
    return latest


def _key_function(spec: db.RowSpec) -> Callable[[Any], tuple[Any, ...]]:
    table, get = spec.table, operator.attrgetter(*spec.key)
    if len(spec.key) == 1:
        return lambda row: (table, get(row))
    return lambda row: (table, *get(row))


_KEY_OF = {kind: _key_function(spec) for kind, spec in db.ROW_SPECS.items()}


async def write_rows(
    conn: asyncpg.Connection,
    rows: Sequence[Any],
    *,
    intents: bool = False,
    before_commit: BeforeCommit | None = None,
) -> None:
    """Upsert ``rows`` (already collapsed: one per natural key) in one transaction, one statement per table.
    ``intents``: trade intents, inserted once (``ON CONFLICT DO NOTHING``), whatever state an existing row has.
    ``before_commit`` runs inside the transaction after the writes; if it raises, the transaction rolls back.
    Tables are written in the order their kinds first appear in ``rows``."""
    by_spec: dict[db.RowSpec, list[Any]] = {}
    for row in rows:
        spec = db.INTENT_SPEC if intents else db.ROW_SPECS[type(row)]
        by_spec.setdefault(spec, []).append(row)
    statements = [(upsert_sql(spec), encode(kind_rows)) for spec, kind_rows in by_spec.items()]
    async with conn.transaction():
        for sql, data in statements:
            await conn.execute(sql, data)
        if before_commit is not None:
            await before_commit()


async def write_with_bisect(
    conn: asyncpg.Connection,
    rows: Sequence[Any],
    *,
    intents: bool = False,
    before_commit: BeforeCommit | None = None,
) -> list[tuple[Any, str]]:
    """``write_rows`` under ``adapters.database.bisect_writes``: the rows at fault come back, the rest is written."""
    return await db.bisect_writes(
        rows, lambda chunk: write_rows(conn, chunk, intents=intents, before_commit=before_commit)
    )
