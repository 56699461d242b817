"""Portfolio snapshots against a hand-computed account, and the daily realised-loss limit.

Real engine on the test PostgreSQL with a paper venue (no slippage: fills at the mark). Made-up markets at round
prices: futures taker fee 0.05 %, spot 0.1 %. Sizing is ``fixed_usdt`` = 100 USDT of margin per copy; every user
starts with 10,000 USDT. The feed's own timer is off (poll interval far beyond a test): tests drive ticks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from adapters.paper import PaperVenue
from engine.ids import client_order_id, close_order_id, position_id_for
from node.stats import take_snapshots
from node.system import EngineSystem
from tests.kit import (
    fetch,
    fetchval,
    running_engine,
    settle,
    wait_for,
)
from tests.kit.snapshots import PRICES, copied, figures, follow, markets, signal, status, tick

D = Decimal


@pytest.fixture(scope="module")
def venue() -> PaperVenue:
    return PaperVenue(markets=markets(), initial_marks=PRICES, latency_ms=0)


@pytest.fixture(scope="module")
def engine(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory, venue: PaperVenue) -> Iterator[EngineSystem]:
    env: dict[str, Any] = {  # Any: mypy lets a ** of dict[str, str] bind running_engine's venues
        "ENGINE_VENUES": '[{name = "paper", price_poll_interval_ms = 600000, price_stale_after_ms = 600000}]',
        "ENGINE_PERSISTENCE__FLUSH_INTERVAL_MS": "10",
    }
    with running_engine(pg_dsn, tmp_path_factory.mktemp("snapshots"), venue=venue, **env) as system:
        yield system


def snapshot_row(dsn: str, user_id: int, taken_at: datetime) -> dict[str, Any]:
    rows = fetch(dsn, "SELECT * FROM portfolio_snapshots WHERE user_id = $1 AND taken_at = $2", user_id, taken_at)
    return dict(rows[0]) if rows else {}


def test_snapshot_figures_against_a_hand_computed_account(engine: EngineSystem, pg_dsn: str, venue: PaperVenue) -> None:
    user, whale = 3001, 301
    follow(engine, pg_dsn, user, whale, stop_loss_pct=D(10))
    for symbol, leverage in (("SNF/USDT:USDT", 5), ("SNS/USDT", 1), ("SNC/USDT:USDT", 2)):
        assert copied(engine, pg_dsn, signal(pg_dsn, whale, symbol, leverage=leverage))["copied"] == 1
    # SNF: long 5 @ 100 x5, margin 100, fee 0.25. SNS: spot 2 @ 50, cost 100, fee 0.1.
    # SNC: long 1 @ 200 x2, margin 100, fee 0.1; its SL (180) is hit at 170: -30, exit fee 0.085.
    venue.set_mark("SNC/USDT:USDT", D(170))
    tick(engine)
    wait_for(lambda: fetchval(pg_dsn, "SELECT close_reason FROM positions WHERE user_id = $1 AND symbol = $2",
                              user, "SNC/USDT:USDT") == "stop_loss")  # fmt: skip
    venue.set_mark("SNF/USDT:USDT", D(104))  # +4 × 5 = +20
    venue.set_mark("SNS/USDT", D(53))  # +3 × 2 = +6
    tick(engine)
    settle(engine)

    proxy = engine.follower_refs()[user].proxy()
    free = D(10_000) - D("100.25") - D("100.1") - D("100.1") + D(100) - D(30) - D("0.085")  # 9769.465
    expected = {
        "free_usdt": free,
        "reserved_usdt": D(0),
        "unrealized_pnl_usdt": D(26),
        "realized_pnl_usdt": D("-30.535"),  # fees -0.25 -0.1 -0.1, SNC -30.085
        "equity_usdt": free + D(0) + D(200) + D(26),  # free + reserved + margin (100 + 100) + unrealised
        "open_positions": 2,
        "trades_today": 4,  # three entries, one exit
    }
    assert expected["equity_usdt"] == D(10_000) + D("-30.535") + D(26)  # the same account, seen from PnL
    row = proxy.snapshot().get(timeout=30)
    assert figures(row) == expected
    engine.persistence.proxy().flush(30).get(timeout=60)
    assert figures(snapshot_row(pg_dsn, user, row.taken_at)) == expected

    # An entry in flight: its margin + estimated fee (100 + 0.25) move from free to reserved; equity is unchanged.
    signal_id = int(fetchval(pg_dsn, "SELECT nextval(pg_get_serial_sequence('whale_signals', 'id'))")) + 1
    venue.inject("latency", client_order_id=client_order_id(signal_id, user), delay_ms=3000)
    assert signal(pg_dsn, whale, "SNR/USDT:USDT") == signal_id
    wait_for(lambda: proxy.describe().get(timeout=30)["orders_in_flight"])
    in_flight = figures(proxy.snapshot().get(timeout=30))
    assert in_flight == {
        **expected, "free_usdt": free - D("100.25"), "reserved_usdt": D("100.25"),
    }  # fmt: skip
    copied(engine, pg_dsn, signal_id)
    wait_for(lambda: status(pg_dsn, position_id_for(signal_id, user)) == "open")

    # The timer's job: a row per follower.
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert take_snapshots(engine.follower_refs()) >= 1
    settle(engine)
    rows = fetch(
        pg_dsn, "SELECT * FROM portfolio_snapshots WHERE user_id = $1 AND taken_at > $2 ORDER BY taken_at", user, before
    )
    assert rows
    assert figures(dict(rows[-1])) == {
        "free_usdt": free - D("100.25"),
        "reserved_usdt": D(0),
        "unrealized_pnl_usdt": D(26),
        "realized_pnl_usdt": D("-30.785"),
        "equity_usdt": free - D("100.25") + D(300) + D(26),
        "open_positions": 3,
        "trades_today": 5,
    }


def test_daily_loss_limit_blocks_entries_not_exits(engine: EngineSystem, pg_dsn: str, venue: PaperVenue) -> None:
    user, whale = 3002, 302
    follow(engine, pg_dsn, user, whale, stop_loss_pct=D(10), daily_loss_limit_usdt=D(20))
    a = signal(pg_dsn, whale, "DLA/USDT:USDT")
    b = signal(pg_dsn, whale, "DLB/USDT:USDT")
    assert copied(engine, pg_dsn, a)["copied"] == 1 and copied(engine, pg_dsn, b)["copied"] == 1
    venue.set_mark("DLA/USDT:USDT", D(89))  # SL at 90: -55 gross, fees 0.25 + 0.2225
    tick(engine)
    wait_for(lambda: status(pg_dsn, position_id_for(a, user)) == "closed")
    settle(engine)
    proxy = engine.follower_refs()[user].proxy()
    described = proxy.describe().get(timeout=30)
    # today: two entry fees (0.25 each) and DLA's close (-55.2225)
    assert described["realized_pnl_today_usdt"] == D("-55.7225")
    assert described["trades_today"] == 3
    assert proxy.snapshot().get(timeout=30).realized_pnl_usdt == D("-55.7225")

    blocked = copied(engine, pg_dsn, signal(pg_dsn, whale, "DLC/USDT:USDT"))
    assert (blocked["copied"], blocked["skip_reasons"]) == (0, {"daily_loss_limit": 1})

    # Exits still go: the whale closes DLB and the copy follows.
    closing = copied(engine, pg_dsn, signal(pg_dsn, whale, "DLB/USDT:USDT", side="sell", action="close"))
    assert closing["copied"] == 1
    wait_for(lambda: status(pg_dsn, position_id_for(b, user)) == "closed")
    row = fetch(pg_dsn, "SELECT close_reason, realized_pnl_usdt FROM positions WHERE position_id = $1",
                position_id_for(b, user))[0]  # fmt: skip
    assert (row["close_reason"], row["realized_pnl_usdt"]) == ("signal", D("-0.5"))  # closed at 100: fees only
    assert venue.order_count(close_order_id(position_id_for(a, user))) == 1
