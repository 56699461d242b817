"""JSON logs: one object per line with ts/level/event, level filtering, runtime level change."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from decimal import Decimal

import orjson
import pytest

from engine import logs
from engine.messages import SkipReason


@pytest.fixture
def output() -> Iterator[io.BytesIO]:
    buffer = io.BytesIO()
    logs.configure("info", buffer)
    yield buffer
    logs.reset_for_tests()


def lines(buffer: io.BytesIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in buffer.getvalue().splitlines()]


def test_every_line_is_json_with_ts_level_event(output: io.BytesIO) -> None:
    log = logs.get_logger("test.logs")
    log.info("order.filled", client_order_id="c1", qty=Decimal("0.001"), reasons={"paused": 2})
    log.debug("not.shown")
    (line,) = lines(output)
    assert line["event"] == "order.filled"
    assert line["level"] == "info"
    assert str(line["ts"]).endswith("Z")
    assert line["qty"] == "0.001"  # Decimal as a string, never a float
    assert line["reasons"] == {"paused": 2}


def test_set_level_applies_to_cached_loggers(output: io.BytesIO) -> None:
    log = logs.get_logger("test.logs.level")
    log.info("first")  # caches the logger
    logs.set_level("warning")
    log.info("hidden")
    log.warning("shown")
    logs.set_level("debug")
    log.debug("debug.shown")
    assert [line["event"] for line in lines(output)] == ["first", "shown", "debug.shown"]
    assert logs.current_level() == "debug"
    assert logs.enabled("debug") and logs.enabled("error")
    logs.set_level("warning")
    assert not logs.enabled("info") and logs.enabled("warning")


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        logs.configure("verbose", io.BytesIO())


def test_library_logs_become_json_lines(output: io.BytesIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("asyncpg.pool").exception("connection lost")
    (line,) = lines(output)
    assert line["event"] == "lib.log"
    assert line["logger"] == "asyncpg.pool"
    assert "RuntimeError: boom" in str(line["exception"])


def test_non_string_keys_do_not_break_a_line(output: io.BytesIO) -> None:

    logs.get_logger("test.logs.keys").info("signal.processed", reasons={SkipReason.PAUSED: 1})
    assert lines(output)[0]["reasons"] == {"paused": 1}
