"""``make run``-style: the engine in a subprocess on its own embedded PostgreSQL, demo feed, SIGINT, exit 0,
and nothing lost (every trade the logs reported is in the database, none left in flight); and the demo's
positions closing on stop-loss and take-profit when an operator moves a mark through the admin CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson

from adapters.embedded_pg import EmbeddedPostgres
from tests.kit import fetch, fetchval

ROOT = Path(__file__).resolve().parent.parent
Event = dict[str, Any]


class _EngineLog:
    """The engine's stdout (JSON lines), read on a thread of its own: the engine must never block on a full
    pipe while the test waits for something else (an admin CLI call)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._cond = threading.Condition()
        self._events: list[Event] = []
        self._ended = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), name="engine-log", daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        try:
            for line in stream:
                event = orjson.loads(line)
                with self._cond:
                    self._events.append(event)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout_s: float, what: str = "") -> list[Event]:
        """Every event so far, once ``predicate(events)`` holds; AssertionError (saying ``what``) after
        ``timeout_s``."""
        with self._cond:
            self._cond.wait_for(lambda: self._ended or predicate(self._events), timeout_s)
            if predicate(self._events):
                return list(self._events)
            last = [e.get("event") for e in self._events[-10:]]
        raise AssertionError(f"{what} not seen within {timeout_s}s (stdout ended: {self._ended}); last: {last}")

    def snapshot(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def all(self, timeout_s: float = 30) -> list[Event]:
        """Every event, once stdout has ended (the engine exited)."""
        self._thread.join(timeout_s)
        with self._cond:
            assert self._ended, "engine stdout still open"
            return list(self._events)


def _start_demo(pg_data_dir: Path, **env: str) -> tuple[subprocess.Popen[bytes], _EngineLog]:
    with (pg_data_dir / "stderr.txt").open("wb") as stderr:  # a file: nobody reads a pipe while it runs
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_engine.py"), "--demo"],
            cwd=ROOT,
            env={**os.environ, "ENGINE_DATA_DIR": str(pg_data_dir / "var"), **env},
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    return proc, _EngineLog(proc.stdout)


def _stop(pg_data_dir: Path, proc: subprocess.Popen[bytes], log: _EngineLog) -> list[Event]:
    """SIGINT (what Ctrl-C sends); the engine must exit 0, end with ``engine.stopped`` and log no error."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    err = (pg_data_dir / "stderr.txt").read_text(errors="replace")
    assert proc.returncode == 0, err[-3000:]
    events = log.all()
    assert events[-1]["event"] == "engine.stopped"
    assert all(e["level"] != "error" for e in events), [e for e in events if e["level"] == "error"][:3]
    return events


def _wait_ready(log: _EngineLog) -> Event:
    events = log.wait_for(lambda seen: any(e["event"] == "engine.ready" for e in seen), 120)
    return next(e for e in events if e["event"] == "engine.ready")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _admin(pg_data_dir: Path, *args: str) -> dict[str, Any]:
    """One admin CLI call the way an operator makes it (a separate process, through the socket)."""
    socket_path = pg_data_dir / "var" / "admin" / "engine.sock"
    out = subprocess.run(
        [sys.executable, str(ROOT / "run_engine.py"), "admin", "--socket", str(socket_path), *args, "--json"],
        cwd=ROOT, capture_output=True, check=False, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    reply: dict[str, Any] = orjson.loads(out.stdout)
    return reply


def test_demo_run_and_clean_stop(pg_data_dir: Path) -> None:
    proc, log = _start_demo(
        pg_data_dir,
        ENGINE_DEMO__FOLLOWERS="60",
        ENGINE_DEMO__SIGNAL_INTERVAL_MS="200",
        ENGINE_STATS_INTERVAL_S="1",
    )
    try:
        ready = _wait_ready(log)
        assert ready["followers"] == 60
        assert ready["venues"] == ["paper"]
        # Let the demo feed copy a few signals, then stop it the way Ctrl-C does.
        log.wait_for(lambda seen: sum(1 for x in seen if x["event"] == "order.filled") >= 20, 120)
        events = _stop(pg_data_dir, proc, log)
    finally:
        _kill(proc)
    names = [e["event"] for e in events]
    assert "persistence.flushed" in names
    assert next(e for e in events if e["event"] == "persistence.flushed")["complete"] is True
    filled = {e["client_order_id"] for e in events if e["event"] == "order.filled"}

    # Nothing lost: reopen the data directory the engine left behind.
    server = EmbeddedPostgres(pg_data_dir / "var" / "pgdata")
    dsn = server.start()
    try:
        rows = fetch(dsn, "SELECT client_order_id, status FROM trades")
        stored = {r["client_order_id"]: r["status"] for r in rows}
        assert filled <= set(stored)
        assert all(stored[cid] in ("filled", "partially_filled") for cid in filled)
        assert fetchval(dsn, "SELECT count(*) FROM trades WHERE status IN ('pending', 'submitted')") == 0
        assert fetchval(dsn, "SELECT count(*) FROM whale_signals WHERE status = 'processed'") >= 1
    finally:
        server.stop()


# ---- stop-loss and take-profit in the demo ----------------------------------------------------------------
# The demo's follows have SL 2/3/5 % and TP 3/5/10 % (or none). Its random walk (0.2 % a step) reaches them on
# its own only now and then, and its whales close most positions first; so the test acts as an operator
# would: `pause all` (no more copies, whale closes included: the books stay put, still protected by SL/TP),
# pick an open long from `positions --open` (PostgreSQL, where the price feed learns who holds what), and
# `price BASE PRICE` 1 % past its stop loss (or take profit): far enough that the walk cannot take it back
# before the tick, near enough to stay short of its liquidation price.
_PAST = Decimal("0.01")


def _base(symbol: str) -> str:
    return symbol.split("/", maxsplit=1)[0]


def _longs_on_bases(events: list[Event], *, per_base: int) -> int:
    """How many bases have at least ``per_base`` longs opened so far."""
    opened = Counter(_base(e["symbol"]) for e in events if e["event"] == "position.opened" and e["side"] == "long")
    return sum(1 for n in opened.values() if n >= per_base)


def _pick_long(pg_data_dir: Path, log: _EngineLog, *, trigger: str, skip_base: str = "") -> tuple[Event, Decimal]:
    """An open long with ``trigger`` (``stop_loss_price`` / ``take_profit_price``) set, and the mark that hits it."""
    ended = {
        e["position_id"]
        for e in log.snapshot()
        if e["event"] in ("position.closing", "position.closed", "position.reduced", "position.liquidated")
    }
    rows = _admin(pg_data_dir, "positions", "--open")["positions"]
    for row in rows:
        if row["status"] != "open" or row["side"] != "long" or row[trigger] is None:
            continue
        if row["position_id"] in ended or _base(row["symbol"]) == skip_base:
            continue
        level = Decimal(row[trigger])
        mark = level * (1 - _PAST) if trigger == "stop_loss_price" else level * (1 + _PAST)
        if row["liquidation_price"] is None or mark > Decimal(row["liquidation_price"]):
            return row, mark.quantize(Decimal("0.000001"))  # finer than any paper tick (DOGE is 0.15)
    raise AssertionError(f"no open long with {trigger} (other than on {skip_base!r}) among {len(rows)} positions")


def _hit(pg_data_dir: Path, log: _EngineLog, position: Event, mark: Decimal, *, trigger: str) -> None:
    """Move the mark of ``position``'s base and wait for the position to close: for the ``trigger`` it was
    picked for, at a mark past that level."""
    base, pid, reason = _base(position["symbol"]), position["position_id"], trigger.removesuffix("_price")
    reply = _admin(pg_data_dir, "price", base, str(mark))
    assert reply["feeds_poked"] == 1, reply
    events = log.wait_for(
        lambda seen: any(e["event"] == "position.closed" and e["position_id"] == pid for e in seen),
        30,
        f"position.closed of {pid} ({position['symbol']} long) after `price {base} {mark}`",
    )
    closed = next(e for e in events if e["event"] == "position.closed" and e["position_id"] == pid)
    assert closed["reason"] == reason, (closed, position)
    closing = next(e for e in events if e["event"] == "position.closing" and e["position_id"] == pid)
    assert closing["reason"] == reason
    level, seen_mark = Decimal(position[trigger]), Decimal(closing["mark"])
    assert seen_mark <= level if reason == "stop_loss" else seen_mark >= level, (closing, position)


def test_demo_closes_positions_on_stop_loss_and_take_profit(pg_data_dir: Path) -> None:
    proc, log = _start_demo(pg_data_dir, ENGINE_DEMO__FOLLOWERS="60", ENGINE_DEMO__SIGNAL_INTERVAL_MS="200")
    try:
        _wait_ready(log)
        log.wait_for(lambda seen: _longs_on_bases(seen, per_base=5) >= 2, 120, "longs on two bases")
        assert _admin(pg_data_dir, "pause", "all")["paused"] is True
        stop_loss, mark = _pick_long(pg_data_dir, log, trigger="stop_loss_price")
        _hit(pg_data_dir, log, stop_loss, mark, trigger="stop_loss_price")
        # Another base: the stop-loss move above may also have closed that base's longs.
        take_profit, mark = _pick_long(
            pg_data_dir, log, trigger="take_profit_price", skip_base=_base(stop_loss["symbol"])
        )
        _hit(pg_data_dir, log, take_profit, mark, trigger="take_profit_price")
        _stop(pg_data_dir, proc, log)
    finally:
        _kill(proc)
