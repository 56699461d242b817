"""Log-based monitoring: the ``engine.stats`` line says what happened, and follow changes written by another
application are picked up without an admin ``reload``."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from adapters.paper import PaperVenue
from engine import logs, metrics
from engine.messages import Side, Signal, SignalAction, TradeType
from tests.kit import (
    execute,
    insert_signal,
    running_engine,
    seed_followers,
    seed_whale,
    settle,
    wait_for,
    wait_signal_done,
)


def _events(buffer: io.BytesIO, name: str) -> list[dict[str, Any]]:
    return [e for e in (orjson.loads(line) for line in buffer.getvalue().splitlines()) if e["event"] == name]


def test_stats_line_matches_what_happened(pg_dsn: str, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    logs.configure("info", buffer)
    metrics.reset_for_tests()
    try:
        seed_whale(pg_dsn, 9101)
        seed_followers(pg_dsn, whale_id=9101, user_ids=range(910_101, 910_105), follow={"fixed_usdt": Decimal(100)})
        seed_followers(pg_dsn, whale_id=9101, user_ids=[910_105], user={"paused": True})
        venue = PaperVenue()
        with running_engine(pg_dsn, tmp_path, venue=venue, ENGINE_STATS_INTERVAL_S="0.5") as system:
            mark = venue.marks()["BNB/USDT:USDT"]
            signal_id = insert_signal(pg_dsn, whale_id=9101, symbol="BNB/USDT:USDT", price=mark, leverage=2)
            wait_signal_done(pg_dsn, signal_id)
            settle(system)
            line = wait_for(
                lambda: next((e for e in reversed(_events(buffer, "engine.stats")) if e["fills"] == 4), None), 30
            )
    finally:
        logs.reset_for_tests()
    assert line["signals_received"] == 1
    assert line["signals_processed"] == 1
    assert line["copies"] == 4 and line["orders_sent"] == 4 and line["fills"] == 4
    assert line["skips"] == {"paused": 1}
    assert line["rejects"] == 0 and line["unknowns"] == 0
    assert line["database_reachable"] is True
    assert line["venues"]["paper"]["breaker"] == "closed"
    # The latency samples of the interval with the orders in it: one per order, p50 <= p99.
    with_samples = [e for e in _events(buffer, "engine.stats") if e["latency_samples"]]
    assert sum(e["latency_samples"] for e in with_samples) == 4
    assert all(e["signal_to_order_ms_p50"] <= e["signal_to_order_ms_p99"] for e in with_samples)


def test_follow_changes_are_picked_up_without_reload(pg_dsn: str, tmp_path: Path) -> None:
    seed_whale(pg_dsn, 9201)
    seed_followers(pg_dsn, whale_id=9201, user_ids=[920_101])
    venue = PaperVenue()
    # Polling far slower than the waits below: only the NOTIFY path can make these pass.
    with running_engine(pg_dsn, tmp_path, venue=venue, ENGINE_SIGNALS__FOLLOWS_POLL_INTERVAL_MS="600000") as system:
        seed_followers(pg_dsn, whale_id=9201, user_ids=[920_102], follow={"fixed_usdt": Decimal(50)})
        wait_for(lambda: 920_102 in system.follower_refs(), 30)
        wait_for(lambda: 920_102 in system.router.proxy().followers_of(9201).get(timeout=10), 30)
        execute(pg_dsn, "UPDATE user_whale_follows SET paused = true WHERE user_id = 920101 AND whale_id = 9201")
        probe, mark = _probe(venue), venue.marks()["ADA/USDT:USDT"]
        follower = system.follower_refs()[920_101]
        wait_for(lambda: follower.proxy().dry_run(probe, mark).get(timeout=10).get("reason") == "paused", 30)
        signal_id = insert_signal(pg_dsn, whale_id=9201, symbol="ADA/USDT:USDT", price=venue.marks()["ADA/USDT:USDT"])
        row = wait_signal_done(pg_dsn, signal_id)
        settle(system)
    assert row["copied"] == 1
    assert row["skip_reasons"] == {"paused": 1}


def _probe(venue: PaperVenue):  # type: ignore[no-untyped-def]

    mark = venue.marks()["ADA/USDT:USDT"]
    return Signal(
        signal_id=1,
        external_id="probe",
        whale_id=9201,
        symbol="ADA/USDT:USDT",
        side=Side.BUY,
        action=SignalAction.OPEN,
        trade_type=TradeType.FUTURES,
        price=mark,
        size_usdt=Decimal(1000),
        detected_at=datetime.now(UTC),
    )
