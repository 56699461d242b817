"""``make run``-style: the engine in a subprocess on its own embedded PostgreSQL, demo feed, SIGINT, exit 0,
and nothing lost (every trade the logs reported is in the database, none left in flight)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from adapters.embedded_pg import EmbeddedPostgres
from tests.pg import fetch, fetchval

ROOT = Path(__file__).resolve().parent.parent


def _read_until(proc: subprocess.Popen[bytes], predicate, timeout_s: float) -> list[dict]:  # type: ignore[no-untyped-def]
    assert proc.stdout is not None
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        event = orjson.loads(line)
        seen.append(event)
        if predicate(event, seen):
            return seen
    raise AssertionError(f"not seen within {timeout_s}s; last events: {[e.get('event') for e in seen[-10:]]}")


def test_demo_run_and_clean_stop(pg_data_dir: Path) -> None:
    env = {
        **os.environ,
        "ENGINE_DATA_DIR": str(pg_data_dir / "var"),
        "ENGINE_DEMO__FOLLOWERS": "60",
        "ENGINE_DEMO__SIGNAL_INTERVAL_MS": "200",
        "ENGINE_STATS_INTERVAL_S": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_engine.py"), "--demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        events = _read_until(proc, lambda e, _: e["event"] == "engine.ready", 120)
        ready = events[-1]
        assert ready["followers"] == 60
        assert ready["venues"] == ["paper"]
        # Let the demo feed copy a few signals, then stop it the way Ctrl-C does.
        events += _read_until(
            proc, lambda _e, seen: sum(1 for x in seen if x["event"] == "order.filled") >= 20, 120
        )
        proc.send_signal(signal.SIGINT)
        # Keep reading through the same buffered reader: communicate() reads the raw descriptor and would skip
        # what readline() has already buffered, leaving half a line at the seam.
        assert proc.stdout is not None and proc.stderr is not None
        rest = proc.stdout.read()
        proc.wait(timeout=120)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]
    events += [orjson.loads(line) for line in rest.splitlines()]
    names = [e["event"] for e in events]
    assert names[-1] == "engine.stopped"
    assert "persistence.flushed" in names
    assert next(e for e in events if e["event"] == "persistence.flushed")["complete"] is True
    assert all(e["level"] != "error" for e in events), [e for e in events if e["level"] == "error"][:3]
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
