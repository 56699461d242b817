"""The snapshot timers on their own, and the day close that a restart on the next day counts "today" from.

* ``Portfolio.snapshot``: the first snapshot after 00:00 UTC closes the day that ended (no I/O);
* the periodic job writes ``portfolio_snapshots`` rows every ``snapshot_interval_s`` with nobody asking;
* the day-roll job, driven by the engine's injected clock (no waiting for midnight), writes the day close, and
  an engine started the next day counts only what was realised after midnight toward the daily loss limit;
* a clean stop before midnight writes one snapshot per follower with its settled books, so an engine started
  the next day does not count a loss realised after the last periodic snapshot as today's.

Engines here run one at a time (stopping one stops every pooled actor in the process), on this module's own
database, with the markets and helpers of ``tests/test_snapshots.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.paper import PaperVenue
from engine.clock import FakeClock
from engine.ids import position_id_for
from engine.portfolio import Portfolio, day_end
from node.stats import take_snapshots
from node.system import EngineSystem
from tests.kit import SHORT_WINDOWS, engine_config, fetch, settle, short_timers, wait_for
from tests.kit.snapshots import PRICES, copied, figures, follow, markets, signal, status, tick

D = Decimal
VENUES = '[{name = "paper", price_poll_interval_ms = 600000, price_stale_after_ms = 600000}]'


def start_engine(dsn: str, data_dir: Path, venue: PaperVenue, **env: str) -> EngineSystem:
    """An engine on the real clock."""
    env = {"ENGINE_VENUES": VENUES, "ENGINE_PERSISTENCE__FLUSH_INTERVAL_MS": "10", **env}
    cfg = engine_config(dsn, data_dir, **env)
    system = EngineSystem(cfg, venue_adapters={"paper": venue})
    system.start()
    return system


@contextlib.contextmanager
def engine_on(clock: FakeClock, dsn: str, data_dir: Path, venue: PaperVenue, **env: str) -> Iterator[EngineSystem]:
    """An engine on ``clock``, stopped on the way out. Its persistence windows are timers of that clock: the
    kit's ``short_timers`` runs them (a nanosecond each), the test moves the clock past everything longer."""
    with short_timers(clock):
        cfg = engine_config(dsn, data_dir, **{"ENGINE_VENUES": VENUES, **SHORT_WINDOWS, **env})
        system = EngineSystem(cfg, venue_adapters={"paper": venue}, clock=clock)
        system.start()
        try:
            yield system
        finally:
            system.stop()


@contextlib.contextmanager
def ten_to_midnight(dsn: str, data_dir: Path) -> Iterator[tuple[datetime, FakeClock, PaperVenue, EngineSystem]]:
    """Today's midnight (the loader's "today" starts there), an engine whose clock reads 23:50 the day before,
    and its paper venue. The periodic snapshot timer is off (an hour): a test takes that snapshot itself."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    clock = FakeClock(midnight - timedelta(minutes=10))
    venue = PaperVenue(markets=markets(), initial_marks=PRICES, latency_ms=0)
    with engine_on(clock, dsn, data_dir, venue, ENGINE_SNAPSHOT_INTERVAL_S="3600") as system:
        yield midnight, clock, venue, system


def signal_on(clock: FakeClock, dsn: str, whale_id: int, symbol: str, **kwargs: Any) -> int:
    """A signal detected at the engine's time: the intake judges its age (and the future) on that clock."""
    return signal(dsn, whale_id, symbol, detected_at=clock.now(), **kwargs)


def snapshots(dsn: str, user_id: int) -> list[dict[str, Any]]:
    rows = fetch(dsn, "SELECT * FROM portfolio_snapshots WHERE user_id = $1 ORDER BY taken_at", user_id)
    return [dict(r) for r in rows]


def snapshot_then_stop_loss(
    system: EngineSystem, dsn: str, venue: PaperVenue, clock: FakeClock, midnight: datetime, position_id: str
) -> None:
    """The day's last periodic snapshot at 23:55, then DLA's stop loss (90) hit at 89 at 23:58: -55 gross, exit
    fee 0.2225, realised after that snapshot."""
    clock.set(midnight - timedelta(minutes=5))
    take_snapshots(system.follower_refs())
    settle(system)
    clock.set(midnight - timedelta(minutes=2))
    venue.set_mark("DLA/USDT:USDT", D(89))
    tick(system)
    wait_for(lambda: status(dsn, position_id) == "closed")
    settle(system)


def test_first_snapshot_of_a_day_closes_the_day_before() -> None:
    midnight = datetime(2024, 3, 2, tzinfo=UTC)
    p = Portfolio(7, now=midnight - timedelta(hours=1))
    p.record_trade(midnight - timedelta(minutes=30))
    p.record_realized(D(-5), midnight - timedelta(minutes=30))
    periodic = p.snapshot(midnight - timedelta(minutes=5), {})
    assert (periodic.taken_at, periodic.trades_today, periodic.realized_pnl_usdt) == (
        midnight - timedelta(minutes=5), 1, D(-5)
    )  # fmt: skip
    p.record_realized(D(-3), midnight - timedelta(seconds=30))  # after the last periodic snapshot
    p.record_realized(D(-1), midnight + timedelta(milliseconds=200))  # the new day's, before the day roll
    close = p.snapshot(midnight + timedelta(seconds=1), {})
    assert close.taken_at == day_end(midnight.date() - timedelta(days=1)) == midnight - timedelta(microseconds=1)
    assert (close.trades_today, close.realized_pnl_usdt) == (1, D(-8))  # the closed day's, the total at 00:00
    assert (p.trades_today, p.realized_today_usdt, p.realized_total_usdt) == (0, D(-1), D(-9))
    later = p.snapshot(midnight + timedelta(minutes=5), {})
    assert (later.taken_at, later.trades_today, later.realized_pnl_usdt) == (
        midnight + timedelta(minutes=5), 0, D(-9)
    )  # fmt: skip


def test_periodic_job_writes_snapshots_on_its_own(pg_dsn: str, tmp_path: Path) -> None:
    user, whale = 4001, 401
    venue = PaperVenue(markets=markets(), initial_marks=PRICES, latency_ms=0)
    clock = FakeClock(datetime.now(UTC))
    with engine_on(clock, pg_dsn, tmp_path, venue, ENGINE_SNAPSHOT_INTERVAL_S="0.2") as system:
        follow(system, pg_dsn, user, whale)
        assert copied(system, pg_dsn, signal_on(clock, pg_dsn, whale, "SNF/USDT:USDT"))["copied"] == 1
        settle(system)
        assert snapshots(pg_dsn, user) == []  # the clock has not moved: no snapshot is due

        # Nothing here asks for a snapshot: rows come from the timer alone, one per interval of the clock.
        def after_an_interval() -> list[dict[str, Any]]:
            clock.advance(0.2)
            return snapshots(pg_dsn, user)

        rows = wait_for(lambda: (r := after_an_interval()) and len(r) >= 3 and r)
    assert len({r["taken_at"] for r in rows}) == len(rows)
    # A copy of 100 USDT of margin at x5 on SNF @ 100: fee 0.25; the mark has not moved.
    assert figures(rows[-1]) == {
        "free_usdt": D("9899.75"),
        "reserved_usdt": D(0),
        "unrealized_pnl_usdt": D(0),
        "realized_pnl_usdt": D("-0.25"),
        "equity_usdt": D("9999.75"),
        "open_positions": 1,
        "trades_today": 1,
    }


def test_day_roll_closes_the_day_and_a_restart_counts_only_today(pg_dsn: str, tmp_path: Path) -> None:
    user, whale = 4002, 402
    with ten_to_midnight(pg_dsn, tmp_path) as (midnight, clock, venue, system):
        follow(system, pg_dsn, user, whale, stop_loss_pct=D(10), daily_loss_limit_usdt=D(20))
        a, b = signal_on(clock, pg_dsn, whale, "DLA/USDT:USDT"), signal_on(clock, pg_dsn, whale, "DLB/USDT:USDT")
        assert copied(system, pg_dsn, a)["copied"] == 1 and copied(system, pg_dsn, b)["copied"] == 1

        snapshot_then_stop_loss(system, pg_dsn, venue, clock, midnight, position_id_for(a, user))

        clock.set(midnight + timedelta(milliseconds=500))  # the day-roll timer falls due on the way and runs
        day_close = midnight - timedelta(microseconds=1)
        wait_for(lambda: any(r["taken_at"] == day_close for r in snapshots(pg_dsn, user)))
        rows = {r["taken_at"]: r for r in snapshots(pg_dsn, user)}
        assert (rows[midnight - timedelta(minutes=5)]["realized_pnl_usdt"], rows[day_close]["trades_today"]) == (
            D("-0.5"), 3
        )  # fmt: skip
        assert rows[day_close]["realized_pnl_usdt"] == D("-55.7225")  # entry fees 0.5 + DLA -55.2225
        proxy = system.follower_refs()[user].proxy()
        described = proxy.describe().get(timeout=30)
        assert (described["trades_today"], described["realized_pnl_today_usdt"]) == (0, D(0))

        clock.set(midnight + timedelta(minutes=1))  # today: the whale closes DLB, exit fee 0.25
        close = signal_on(clock, pg_dsn, whale, "DLB/USDT:USDT", side="sell", action="close")
        assert copied(system, pg_dsn, close)["copied"] == 1
        wait_for(lambda: status(pg_dsn, position_id_for(b, user)) == "closed")
        settle(system)

    # The next engine runs on the real clock: today is the same day. Yesterday's -55.7225, even the part
    # realised after the last periodic snapshot, is not today's; the exit fee is, and stays under the limit.
    system = start_engine(pg_dsn, tmp_path, venue, ENGINE_SNAPSHOT_INTERVAL_S="3600")
    try:
        proxy = system.follower_refs()[user].proxy()
        assert proxy.describe().get(timeout=30)["realized_pnl_today_usdt"] == D("-0.25")
        entry = copied(system, pg_dsn, signal(pg_dsn, whale, "DLC/USDT:USDT"))
        assert (entry["copied"], entry["skip_reasons"]) == (1, {})
    finally:
        system.stop()


def test_clean_stop_snapshots_so_a_restart_the_next_day_counts_nothing_from_yesterday(
    pg_dsn: str, tmp_path: Path
) -> None:
    user, whale = 4003, 403
    with ten_to_midnight(pg_dsn, tmp_path) as (midnight, clock, venue, system):
        follow(system, pg_dsn, user, whale, stop_loss_pct=D(10), daily_loss_limit_usdt=D(20))
        a = signal_on(clock, pg_dsn, whale, "DLA/USDT:USDT")
        assert copied(system, pg_dsn, a)["copied"] == 1

        snapshot_then_stop_loss(system, pg_dsn, venue, clock, midnight, position_id_for(a, user))
        assert [r["taken_at"] for r in snapshots(pg_dsn, user)] == [midnight - timedelta(minutes=5)]
    # Stopped: still yesterday on the engine's clock, no day roll wrote the loss down.

    rows = {r["taken_at"]: r["realized_pnl_usdt"] for r in snapshots(pg_dsn, user)}
    assert rows == {
        midnight - timedelta(minutes=5): D("-0.25"),
        midnight - timedelta(minutes=2): D("-55.4725"),  # the shutdown's: entry fee 0.25 + DLA -55.2225
    }

    # The next engine runs on the real clock: today. The loss was yesterday's, though no periodic snapshot
    # caught it; counted as today's, -55.2225 would be past the 20 USDT limit and skip the next entry.
    system = start_engine(pg_dsn, tmp_path, venue, ENGINE_SNAPSHOT_INTERVAL_S="3600")
    try:
        proxy = system.follower_refs()[user].proxy()
        assert proxy.describe().get(timeout=30)["realized_pnl_today_usdt"] == D(0)
        entry = copied(system, pg_dsn, signal(pg_dsn, whale, "DLC/USDT:USDT"))
        assert (entry["copied"], entry["skip_reasons"]) == (1, {})
    finally:
        system.stop()
