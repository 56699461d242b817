"""Reading the admin socket's lines: an idle timeout between lines, a deadline within one, a size limit.

A line has ``line_deadline_s`` from its first byte to its newline, however its bytes trickle in, so a peer that
starts a line and stops (or drips it) holds its connection for seconds, not for the idle timeout. Runs on the
admin socket's loop (``adapters/admin_socket.py``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from engine.logs import get_logger

__all__ = ["Conn", "LineDeadline", "LineTooLong", "read_line"]

_log = get_logger(__name__)

_READ_CHUNK = 65_536


@dataclass(eq=False)
class Conn:
    """One served connection, as the server sees it (loop thread only)."""

    conn_id: int
    task: asyncio.Task[Any]
    reading: bool = False  # waiting for a line (not running a command): it may be evicted
    idle_since: float = 0.0  # loop time its wait for a line began
    line_started: float | None = None  # loop time the first byte of its unfinished line came
    evicted_for: int | None = None  # the conn_id it made room for


class LineDeadline(Exception):
    """A started line was not finished within the line deadline."""


class LineTooLong(Exception):
    """A line is longer than ``max_line_bytes``."""


async def read_line(
    reader: asyncio.StreamReader,
    buffer: bytearray,
    conn: Conn,
    *,
    idle_timeout_s: float,
    line_deadline_s: float,
    max_line_bytes: int,
) -> tuple[bytes, bool] | None:
    """The next line (newline excluded) and whether it is the last one (the peer ended it with EOF, not a
    newline); None when the peer left, or was idle for ``idle_timeout_s``. ``buffer`` holds what was read past
    the previous line. Raises ``LineDeadline`` when a started line is not finished within ``line_deadline_s`` of
    its first byte, ``LineTooLong`` past ``max_line_bytes``. ``conn`` shows meanwhile that it waits for a line."""
    loop = asyncio.get_running_loop()
    conn.reading, conn.idle_since, conn.line_started = True, loop.time(), None
    try:
        while True:
            end = buffer.find(b"\n")
            if end > max_line_bytes or (end < 0 and len(buffer) > max_line_bytes):
                raise LineTooLong
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                return line, False
            now = loop.time()
            if buffer and conn.line_started is None:
                conn.line_started = now
            started = conn.line_started
            wait = idle_timeout_s if started is None else max(0.0, started + line_deadline_s - now)
            try:
                async with asyncio.timeout(wait):
                    chunk = await reader.read(_READ_CHUNK)
            except TimeoutError:
                if conn.line_started is not None:
                    raise LineDeadline from None
                _log.info("admin.idle_timeout", conn_id=conn.conn_id, idle_timeout_s=idle_timeout_s)
                return None
            if not chunk:
                return (bytes(buffer), True) if buffer.strip() else None
            buffer += chunk
    finally:
        conn.reading = False
