"""Scenario 4, start and stop: 100,000 users with follows and 10,000 open positions loaded from PostgreSQL and
their follower actors started (``EngineSystem.start``), then a clean shutdown (``EngineSystem.stop``).

Every repeat is a fresh process on the same seeded database (the parent seeds; ``--startstop-child`` runs
one start/stop and prints its figures), so the RSS delta is not blurred by a previous engine's garbage.
Memory per idle follower = (RSS after start - RSS before start) / users: it includes everything the engine
holds for them (actors, books, the router's index, the paper venue's wallets), not only the actor objects.

    .venv/bin/python -m bench startstop [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.paper import PaperVenue
from bench import configure_logs
from bench._engine import engine_config, new_database, rss_bytes, seed
from bench._report import row
from node.system import EngineSystem

SCENARIO = "4 start and stop"


def _one(dsn: str) -> dict[str, float]:

    configure_logs(on=False)
    with tempfile.TemporaryDirectory(prefix="bench-startstop-") as tmp:
        venue = PaperVenue(latency_ms=0)
        system = EngineSystem(engine_config(dsn, Path(tmp)), venue_adapters={"paper": venue})
        rss_before = rss_bytes()
        started = time.perf_counter()
        system.start()
        start_s = time.perf_counter() - started
        followers = len(system.follower_refs()) if system.supervisor else 0
        rss_after = rss_bytes()
        started = time.perf_counter()
        system.stop()
        stop_s = time.perf_counter() - started
    return {"start_s": start_s, "stop_s": stop_s, "rss_delta": rss_after - rss_before, "followers": followers}


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    users = 20_000 if quick else 100_000
    positions = 2_000 if quick else 10_000
    repeats = 2 if quick else 3
    dsn = new_database("startstop")
    seed(dsn, whales=100, users=users, open_positions=positions)
    results = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-m", "bench.startstop", dsn],
            check=True, capture_output=True, text=True, timeout=600, env=dict(os.environ),
        )  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if any(r["followers"] != users for r in results):
        msg = f"expected {users} followers, got {[r['followers'] for r in results]}"
        raise RuntimeError(msg)
    start = [r["start_s"] for r in results]
    stop = [r["stop_s"] for r in results]
    per_follower_kb = [r["rss_delta"] / users / 1024 for r in results]
    return [
        row(SCENARIO, f"start: {users:,} users, {positions:,} open positions", start, unit="s",
            target="≤ 5 s", ok=sorted(start)[len(start) // 2] <= 5),
        row(SCENARIO, "clean shutdown", stop, unit="s", target="≤ 5 s", ok=sorted(stop)[len(stop) // 2] <= 5),
        row(SCENARIO, "memory per idle follower (RSS delta / N)", per_follower_kb, unit="KB",
            target="≤ 5 KB", ok=sorted(per_follower_kb)[len(per_follower_kb) // 2] <= 5,
            note="a fresh process per run; start includes connecting, schema check, loading and starting actors"),
    ]  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(_one(sys.argv[1])))
    sys.stdout.flush()
    os._exit(0)
