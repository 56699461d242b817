"""Follows written by another application (users, ``user_whale_follows``), picked up while the engine runs.

Runs on the I/O loop. What changed is handed to ``reload`` (the supervisor's), which applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from engine.logs import get_logger

__all__ = ["FOLLOWS_POLL_OVERLAP_S", "FollowsWatcher"]

log = get_logger(__name__)


# How far back each poll looks again. ``updated_at`` is the writer's transaction start, so a row can commit with a
# timestamp older than the last poll; NOTIFY (sent at commit) catches it first, the overlap catches it if the
# notification was lost. Rows already applied at the same ``updated_at`` are not reloaded twice.
FOLLOWS_POLL_OVERLAP_S = 60.0

# least(): a row stamped beyond Python's datetime (year 200000, 'infinity') must not fail every poll (issue 13).
_CHANGED_SQL = """
SELECT 'u' AS kind, id AS user_id, 0::bigint AS whale_id, least(updated_at, '9999-12-30+00') AS updated_at
FROM users WHERE updated_at >= $1
UNION ALL
SELECT 'f', user_id, whale_id, least(updated_at, '9999-12-30+00') FROM user_whale_follows WHERE updated_at >= $1"""


class FollowsWatcher:
    """Picks up users / follows written by another application: NOTIFY ``follows_changed`` (debounced) plus a
    poll on ``updated_at`` (database clock, with an overlap) in case a notification was missed. When the LISTEN
    connection had to be opened again, every follower is reloaded: notifications sent while it was down are
    lost, deletes among them, and a deleted row leaves nothing for the poll to find."""

    def __init__(
        self,
        *,
        dsn: str,
        pool: asyncpg.Pool,
        reload: Callable[[list[int] | None], Awaitable[object]],
        poll_interval_ms: float,
    ) -> None:
        """``reload(user_ids)`` applies those users as the database has them now (``None``: everyone)."""
        self._dsn = dsn
        self._pool = pool
        self._reload = reload
        self._poll_interval_s = poll_interval_ms / 1000
        self._pending: set[int] = set()
        self.notifications_received = 0  # NOTIFYs delivered to this watcher (loop thread; tests wait on it)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._since: datetime | None = None  # database clock of the last poll
        self._applied: dict[tuple[str, int, int], datetime] = {}  # row -> updated_at already applied

    async def prepare(self) -> None:
        """LISTEN, and note the rows as they are now, before the engine loads its followers: whatever commits
        after this is notified, whatever committed before is in the load."""
        await self._listen()
        await self._changed_since()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="follows-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close(timeout=2)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications_received += 1
        with contextlib.suppress(ValueError):
            self._pending.add(int(payload))
        self._wake.set()

    async def _run(self) -> None:
        interval_s = self._poll_interval_s
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._listen()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval_s)
                self._wake.clear()
                await asyncio.sleep(0.05)  # debounce a burst of row changes into one reload
                # Take the ids before any await: a notification that arrives during the poll below stays for
                # the next round (and has set the wake event again).
                changed, self._pending = self._pending, set()
                changed |= await self._changed_since()
                if changed:
                    await self._reload(sorted(changed))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep watching; the next round retries
                log.warning("follows.watch_error", error=f"{type(exc).__name__}: {exc}")
                # A closed connection is opened again (and everything reloaded) at the top of the loop.
                await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        reconnect = self._conn is not None
        conn = await asyncpg.connect(self._dsn, timeout=10)
        try:
            await conn.add_listener("follows_changed", self._on_notify)
            # A lost connection wakes the loop, which opens it again at once rather than at the next poll.
            conn.add_termination_listener(lambda _conn: self._wake.set())
            if reconnect:
                log.warning("follows.listen_restored", action="full_reload")
                await self._reload(None)
        except BaseException:
            await conn.close(timeout=2)  # listening without the reload would hide what was missed; retry both
            raise
        self._conn = conn

    async def _changed_since(self) -> set[int]:
        """Users whose ``users`` or ``user_whale_follows`` rows changed since the last poll (minus the overlap),
        leaving out rows already reloaded at the same ``updated_at``."""
        async with self._pool.acquire() as conn:
            now: datetime = await conn.fetchval("SELECT now()")
            since = (self._since or now) - timedelta(seconds=FOLLOWS_POLL_OVERLAP_S)
            rows = await conn.fetch(_CHANGED_SQL, since)
        self._since = now
        changed: set[int] = set()
        for r in rows:
            key = (r["kind"], r["user_id"], r["whale_id"])
            if self._applied.get(key) != r["updated_at"]:
                self._applied[key] = r["updated_at"]
                changed.add(r["user_id"])
        for key in [k for k, at in self._applied.items() if at < since]:
            del self._applied[key]
        return changed
