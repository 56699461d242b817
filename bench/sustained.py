"""Scenario 6, sustained load: 50 signals/s, 1,000 followers each, for 60 s, on a paper venue with 20 ms
simulated latency, a real ``EngineSystem`` on the run's PostgreSQL (fsync on).

50 whales with 1,000 followers each (50,000 users); an injector thread tells the router one signal every
20 ms, whale after whale, so each follower copies one signal per second (``BENCH_SUSTAINED_S`` changes the
duration, ``BENCH_SUSTAINED_RATE`` the rate). Signal -> order latency is the engine's own
``signal_to_order_ms`` metric (router intake to ``PlaceOrder`` told to the exchange actor), drained every
second, together with RSS, the pooled mailboxes' total depth and the persistence queue.

"No growth": compares the second 10 s window (after warm-up) with the last 10 s window; RSS may grow by at
most 10 %, the median mailbox depth may at most double (plus 1,000 messages of slack).

    .venv/bin/python -m bench sustained [--quick]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from actors.router import RouteSignal
from adapters.paper import DEFAULT_MARKS, PaperVenue
from bench._engine import make_signal, new_database, running_engine, seed
from bench._report import percentile, row
from engine import metrics, runtime

SCENARIO = "6 sustained load"
SYMBOLS = [f"{b}/USDT:USDT" for b in ("ETH", "XRP", "DOGE", "BNB", "ADA", "LINK", "LTC")]


class Injector(threading.Thread):
    """Tells the router ``rate`` signals per second on an absolute schedule (late ticks are caught up)."""

    def __init__(self, router: Any, *, whales: int, rate: float, duration_s: float) -> None:
        super().__init__(name="bench-injector", daemon=True)
        self._router, self._whales, self._rate, self._duration_s = router, whales, rate, duration_s
        self.sent = 0
        self.started_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        total = int(self._rate * self._duration_s)
        for k in range(total):
            due = self.started_at + k / self._rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            whale = k % self._whales + 1
            symbol = SYMBOLS[(k // self._whales) % len(SYMBOLS)]
            signal = make_signal(
                100_000 + k, whale_id=whale, symbol=symbol, price=DEFAULT_MARKS[symbol.split("/")[0]], leverage=5
            )
            self._router.tell(RouteSignal(signal=signal, received_at_ns=time.monotonic_ns()))
            self.sent += 1


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    from bench import configure_logs

    configure_logs(on=False)
    duration_s = float(os.environ.get("BENCH_SUSTAINED_S", "20" if quick else "60"))
    rate = float(os.environ.get("BENCH_SUSTAINED_RATE", "50"))
    per_whale = 1_000
    whales = int(rate)  # one signal per whale per second
    dsn = new_database("sustained")
    seed(
        dsn, whales=whales, users=whales * per_whale,
        follow={"fixed_usdt": 20, "max_leverage": 5, "max_open_positions": 100, "max_trades_per_day": 100_000},
    )  # fmt: skip
    latencies: list[float] = []
    windows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sustained-") as tmp:
        venue = PaperVenue(latency_ms=20)
        with running_engine(dsn, Path(tmp), venue=venue, ENGINE_SHUTDOWN_GRACE_S="5") as system:
            metrics.drain_samples()
            orders_before = metrics.counters().get("orders.sent", 0)
            injector = Injector(system.router, whales=whales, rate=rate, duration_s=duration_s)
            injector.start()
            t0 = time.monotonic()
            while injector.is_alive() or time.monotonic() - t0 < duration_s:
                time.sleep(1.0)
                samples = metrics.drain_samples().get("signal_to_order_ms", [])
                latencies.extend(samples)
                pool = runtime.pool_stats()
                queue = system.persistence.proxy().stats().get(timeout=30)["queue_depth"]
                rss = psutil.Process().memory_info().rss
                windows.append(
                    {"t": time.monotonic() - t0, "rss": rss, "mailbox": pool.mailbox_depth_total, "queue": queue}
                )
            elapsed = time.monotonic() - t0
            orders = metrics.counters().get("orders.sent", 0) - orders_before
            backlog = runtime.pool_stats().mailbox_depth_total
    return _rows(latencies, windows, injector.sent, orders, elapsed, backlog, rate, duration_s, whales * per_whale)


def _rows(
    latencies: list[float], windows: list[dict[str, float]], sent: int, orders: int, elapsed: float,
    backlog: int, rate: float, duration_s: float, users: int,
) -> list[dict[str, Any]]:  # fmt: skip
    early = [w for w in windows if 10 <= w["t"] < 20] or windows[: len(windows) // 2]
    late = [w for w in windows if w["t"] >= windows[-1]["t"] - 10] or windows[len(windows) // 2 :]
    rss_early = statistics.median(w["rss"] for w in early)
    rss_late = statistics.median(w["rss"] for w in late)
    box_early = statistics.median(w["mailbox"] for w in early)
    box_late = statistics.median(w["mailbox"] for w in late)
    stats = None
    if latencies:
        stats = {
            "median": statistics.median(latencies), "p99": percentile(latencies, 99),
            "min": min(latencies), "max": max(latencies), "n": len(latencies),
        }  # fmt: skip
    p99 = stats["p99"] if stats else float("inf")
    offered = rate * users / max(1, int(rate))
    rss_growth = rss_late / rss_early
    return [
        row(
            SCENARIO, f"signal → order, {rate:.0f} signals/s × 1,000 followers, {duration_s:.0f} s", [],
            unit="ms", stats=stats, target="p99 ≤ 250 ms", ok=p99 <= 250,
            note=f"{sent:,} signals sent, {orders:,} orders placed in {elapsed:.0f} s "
            f"({orders / elapsed:,.0f}/s achieved of {offered:,.0f}/s offered); runs: number of orders",
        ),
        row(
            SCENARIO, "RSS, last 10 s vs 10–20 s", [rss_late / 1e6], unit="MB", ratio=rss_growth,
            ratio_label="late / early", target="no growth (≤ 1.10x)", ok=rss_growth <= 1.10,
            note=f"RSS {rss_early / 1e6:,.0f} MB at 10–20 s, {rss_late / 1e6:,.0f} MB in the last 10 s",
        ),
        row(
            SCENARIO, "mailbox depth (all followers), last 10 s", [box_late], unit="msgs",
            target="no growth (≤ 2x + 1,000)", ok=box_late <= 2 * box_early + 1_000,
            note=f"median total depth {box_early:,.0f} at 10–20 s, {box_late:,.0f} in the last 10 s; "
            f"{backlog:,} queued when the injector stopped; persistence queue at the end "
            f"{windows[-1]['queue']:,.0f} rows",
        ),
    ]
