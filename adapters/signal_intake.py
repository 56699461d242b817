"""PostgreSQL signal intake: external detectors INSERT into ``whale_signals``; the engine claims and routes them.

A trigger NOTIFYs channel ``whale_signals`` on insert. The intake LISTENs on its own connection and, on a
notification or every ``poll_interval_ms`` (a NOTIFY can be missed while the connection is down), claims pending
rows with ``FOR UPDATE SKIP LOCKED`` (several engines could share a table) in priority-then-age order. At
start-up the first poll claims whatever arrived while the engine was down.

Claiming is a write, so it runs through the persistence actor's ``write`` hook (the only writer); this module
only listens, decodes and hands each row on. Rows that fail validation are marked FAILED / EXPIRED with the
reason; they never reach the router. Runs on the I/O loop.

Poison rows never block the queue. PostgreSQL stores timestamps Python cannot hold (year 200000, 4000 BC,
``±infinity``) and numerics it cannot use (``NaN``, ``Infinity``); asyncpg raises while decoding such a value, and
a claim that returned one would fail as a whole, on every poll, with every good row behind it left pending. So
the claim decodes nothing it has not checked: in the same statement that claims a batch, a row whose
``detected_at`` / ``expires_at`` lies outside Python's ``datetime`` range is marked ``failed`` with
``undecodable: <column> out of range: <value>`` instead of ``processing``, and comes back with those columns
NULL; numerics come back as text (``parse_signal`` refuses a non-finite one with a reason), and the claim returns
only the columns the parser reads (never ``created_at`` & co., which another writer could have poisoned too).
Python then logs ``intake.row_undecodable`` once per such row. As a second line, any error other than
``SignalRejected`` while turning one row into a ``Signal`` fails that row alone with ``undecodable: ...``; the rest
of the batch is routed. The schema's CHECKs (migration 2) refuse such rows on insert; this covers rows from before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from engine import metrics
from engine.clock import Clock
from engine.logs import get_logger
from engine.messages import Signal, SignalStatus, SignalStatusRow
from engine.signals import EXPIRED, STALE, SignalRejected, parse_signal

log = get_logger(__name__)

# Python's datetime range, a day inside each end (a UTC value near an end may not survive a time-zone shift).
_REPRESENTABLE = "BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'"

CLAIM_SQL = f"""
WITH picked AS (
    SELECT id, CASE
        WHEN NOT coalesce(detected_at {_REPRESENTABLE}, false)
            THEN 'detected_at out of range: ' || detected_at::text
        WHEN expires_at IS NOT NULL AND NOT coalesce(expires_at {_REPRESENTABLE}, false)
            THEN 'expires_at out of range: ' || expires_at::text
    END AS undecodable
    FROM whale_signals
    WHERE status = 'pending'
    ORDER BY priority_rank, detected_at, id
    FOR UPDATE SKIP LOCKED
    LIMIT $1
)
UPDATE whale_signals AS s
SET status = CASE WHEN p.undecodable IS NULL THEN 'processing' ELSE 'failed' END,
    error = CASE WHEN p.undecodable IS NULL THEN s.error ELSE 'undecodable: ' || p.undecodable END,
    processed_at = CASE WHEN p.undecodable IS NULL THEN s.processed_at ELSE now() END,
    claimed_at = now(), updated_at = now(), version = s.version + 1
FROM picked AS p WHERE s.id = p.id
RETURNING s.id, s.external_id, s.whale_id, s.symbol, s.side, s.action, s.trade_type, s.leverage, s.priority,
    s.price::text AS price, s.size_usdt::text AS size_usdt, s.fraction::text AS fraction,
    CASE WHEN p.undecodable IS NULL THEN s.detected_at END AS detected_at,
    CASE WHEN p.undecodable IS NULL THEN s.expires_at END AS expires_at,
    p.undecodable
"""  # noqa: S608 - a fixed fragment, no value formatted in

# An admin-injected signal, stored 'pending' like a detector's row: the intake claims and routes it (its NOTIFY
# wakes the intake), so a row that committed is routed even when its inserter never learnt that it did.
INSERT_SQL = """
INSERT INTO whale_signals (external_id, whale_id, symbol, side, action, trade_type, price, size_usdt,
                           leverage, priority, detected_at, expires_at, fraction, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'pending')
ON CONFLICT (external_id) DO NOTHING
RETURNING id
"""


# Rows a previous run claimed and never finished (it crashed between claim and PROCESSED). Routing them again is
# safe: every order they caused has a durable intent with a deterministic client order id, and a replayed
# intent is recognised as a duplicate (the persistence actor's ``IntentAck.duplicate``), never sent twice.
REQUEUE_SQL = """
UPDATE whale_signals SET status = 'pending', claimed_at = NULL, updated_at = now(), version = version + 1
WHERE status = 'processing'
RETURNING id
"""


def row_to_signal(row: asyncpg.Record | dict[str, Any], *, now: datetime, max_age_s: float) -> Signal:
    """A claimed ``whale_signals`` row as a ``Signal``; raises ``SignalRejected``."""
    data = dict(row)
    data["signal_id"] = data.pop("id")
    data.pop("undecodable", None)
    return parse_signal(data, now=now, max_age_s=max_age_s)


def rejected_status(exc: SignalRejected) -> SignalStatus:
    return SignalStatus.EXPIRED if exc.reason in (EXPIRED, STALE) else SignalStatus.FAILED


class SignalIntake:
    """LISTEN + poll + claim. ``claim(limit)`` runs ``CLAIM_SQL`` through the persistence actor;
    ``route(signal)`` hands a signal to the router; ``reject(row)`` records a refused row."""

    def __init__(
        self,
        *,
        dsn: str,
        claim: Callable[[int], Awaitable[list[Any]]],
        route: Callable[[Signal], None],
        reject: Callable[[SignalStatusRow], None],
        poll_interval_ms: float,
        batch_size: int,
        max_age_s: float,
        clock: Clock,
    ) -> None:
        self._dsn = dsn
        self._claim = claim
        self._route = route
        self._reject = reject
        self._poll_s = poll_interval_ms / 1000
        self._batch = batch_size
        self._max_age_s = max_age_s
        self._clock = clock  # a signal's age and expiry are judged on the engine's clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._paused = False
        self._failed_rounds = 0  # consecutive failed rounds: an outage is logged when it starts and when it ends
        self._failing_since = 0.0

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="signal-intake")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_conn()

    def pause(self, paused: bool = True) -> None:
        """While paused (draining), nothing is claimed: pending rows wait in the table for the next run."""
        self._paused = paused
        if not paused:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._ensure_listening()
                if not self._paused:
                    await self._claim_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the intake must outlive any one failure
                # A lost connection or a failed claim: the rows stay pending, the next round takes them.
                self._failed(f"{type(exc).__name__}: {exc}")
                await self._close_conn()
            else:
                self._recovered()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()

    def _failed(self, error: str) -> None:
        """Logged once per outage (``intake.error``), not once per poll; the rounds are counted."""
        self._failed_rounds += 1
        if self._failed_rounds == 1:
            self._failing_since = self._clock.monotonic()
            log.warning("intake.error", error=error)

    def _recovered(self) -> None:
        if self._failed_rounds:
            log.info(
                "intake.recovered",
                failed_rounds=self._failed_rounds,
                outage_s=round(self._clock.monotonic() - self._failing_since, 3),
            )
            self._failed_rounds = 0

    async def _ensure_listening(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        self._conn = await asyncpg.connect(self._dsn, timeout=10)
        await self._conn.add_listener("whale_signals", self._on_notify)

    def _on_notify(self, *_args: Any) -> None:
        self._wake.set()

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _claim_all(self) -> None:
        while not self._paused:
            rows = await self._claim(self._batch)
            if not rows:
                return
            now = self._clock.now()
            for row in rows:
                self._handle_row(row, now)
            if len(rows) < self._batch:
                return

    def _handle_row(self, row: Any, now: datetime) -> None:
        if (reason := _get(row, "undecodable")) is not None:  # already marked failed by the claim itself
            self._undecodable(row, reason)
            return
        try:
            signal = row_to_signal(row, now=now, max_age_s=self._max_age_s)
        except SignalRejected as exc:
            status = rejected_status(exc)
            metrics.incr("signals.expired" if status is SignalStatus.EXPIRED else "signals.failed")
            log.info(
                "signal." + status.value,
                signal_id=row["id"],
                external_id=row["external_id"],
                reason=exc.reason,
                detail=exc.detail,
            )
            self._reject(SignalStatusRow(signal_id=row["id"], status=status, error=f"{exc.reason}: {exc.detail}"))
            return
        except Exception as exc:  # noqa: BLE001 - one row the parser chokes on must not stop the batch
            reason = f"{type(exc).__name__}: {exc}"
            self._undecodable(row, reason)
            failed = SignalStatusRow(signal_id=row["id"], status=SignalStatus.FAILED, error=f"undecodable: {reason}")
            self._reject(failed)
            return
        self._route(signal)

    def _undecodable(self, row: Any, reason: str) -> None:
        metrics.incr("signals.failed")
        log.error("intake.row_undecodable", signal_id=row["id"], external_id=_get(row, "external_id"), reason=reason)


def _get(row: Any, key: str) -> Any:
    """``row[key]`` or None: an asyncpg Record has no ``.get`` with a default for a missing column."""
    try:
        return row[key]
    except (KeyError, IndexError):
        return None
