"""Log capture. The engine's loggers are cached on first use (``engine.logs``), and a cached logger does not
see ``structlog.testing.capture_logs``; these drop the caches around the capture, so every logger is seen."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from typing import Any

import structlog

from engine import logs as engine_logs

LogEntries = list[MutableMapping[str, Any]]


@contextlib.contextmanager
def capture_logs() -> Iterator[LogEntries]:
    """Every log entry made inside the block, as dicts (``entry["event"]`` is the event name)."""
    engine_logs._reset_caches()
    try:
        with structlog.testing.capture_logs() as entries:
            yield entries
    finally:
        engine_logs._reset_caches()


def events(entries: LogEntries, name: str) -> LogEntries:
    """The entries of one event name."""
    return [e for e in entries if e["event"] == name]


def reset_log_config() -> None:
    """Undo an ``engine.logs.configure()`` a test made (cached JSON logging), so later captures see every logger."""
    if engine_logs.current_level() != "info" or structlog.get_config().get("cache_logger_on_first_use"):
        engine_logs.reset_for_tests()
