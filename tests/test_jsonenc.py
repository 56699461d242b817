"""engine.jsonenc: the one JSON policy (Decimals as plain strings) for logs, admin replies and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.admin_socket import encode_reply
from adapters.database import connect, json_dumps
from engine import jsonenc


class _Row(msgspec.Struct, frozen=True):
    qty: Decimal
    at: datetime


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1E-8"), "0.00000001"),
        (Decimal("0E-8"), "0.00000000"),
        (Decimal("1.500"), "1.500"),
        (Decimal("1E+3"), "1000"),
        (Decimal("-42.10"), "-42.10"),
        (Decimal("12345678901234567890.123456789"), "12345678901234567890.123456789"),
    ],
)
def test_a_decimal_is_a_string_in_plain_notation_with_its_digits(value: Decimal, text: str) -> None:
    assert orjson.loads(jsonenc.dumps({"v": value})) == {"v": text}
    assert orjson.loads(json_dumps({"v": value})) == {"v": text}  # the database's encoder
    assert orjson.loads(encode_reply({"v": value})) == {"v": text}  # the admin socket's


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_the_string_reads_back_as_the_same_decimal(value: Decimal) -> None:
    text = orjson.loads(jsonenc.dumps(value))
    assert "E" not in text and Decimal(text) == value


def test_structs_sets_and_exceptions() -> None:
    at = datetime(2024, 5, 1, tzinfo=UTC)
    doc = orjson.loads(jsonenc.dumps({"row": _Row(qty=Decimal("1E-3"), at=at), "ids": {3, 1, 2}, "e": KeyError("x")}))
    assert doc["row"]["qty"] == "0.001" and doc["row"]["at"].startswith("2024-05-01T00:00:00")
    assert doc["ids"] == [1, 2, 3]
    assert doc["e"] == "KeyError: 'x'"
    assert orjson.loads(jsonenc.dumps({1, "a"})) == [1, "a"]  # members that do not compare: sorted by text


def test_unknown_types_are_text_for_logs_but_refused_for_the_database() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing"

    assert orjson.loads(jsonenc.dumps(Thing())) == "thing"
    with pytest.raises(TypeError, match="Thing"):
        json_dumps({"x": Thing()})


def test_postgresql_reads_the_strings_into_numeric_exactly(pg_dsn: str) -> None:
    """The database path: json_to_recordset (the batched lane's shape) and the jsonb codec."""
    values = [Decimal("1E-8"), Decimal("1.500"), Decimal("1E+3"), Decimal("12345678901234567890.123456789")]

    async def run() -> tuple[list[Any], Any]:
        conn = await connect(pg_dsn)
        try:
            sql = "SELECT q FROM json_to_recordset($1::text::json) AS r(q numeric)"
            rows = await conn.fetch(sql, json_dumps([{"q": v} for v in values]))
            doc = await conn.fetchval("SELECT ($1::jsonb ->> 'q')::numeric", {"q": Decimal("2E-8")})
            return [r["q"] for r in rows], doc
        finally:
            await conn.close()

    numbers, from_jsonb = asyncio.run(run())
    assert numbers == values
    assert from_jsonb == Decimal("0.00000002")
