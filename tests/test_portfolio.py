"""Portfolio: reservations never negative, daily roll, snapshot equity, performance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.messages import PositionRow, PositionSide, PositionStatus, SnapshotRow, TradeType
from engine.portfolio import BalanceError, Portfolio, max_drawdown, performance
from engine.positions import Position

NOW = datetime(2025, 1, 2, 23, 59, tzinfo=UTC)


def portfolio(free: D = D(1000)) -> Portfolio:
    p = Portfolio(7, now=NOW)
    p.set_free("paper", free)
    return p


def test_reserve_release_settle() -> None:
    p = portfolio()
    assert p.reserve("paper", D("100.5"))
    assert not p.reserve("paper", D(1000))
    bal = p.balance("paper")
    assert (bal.free, bal.reserved) == (D("899.5"), D("100.5"))
    p.settle("paper", D("100.5"), D("100.4"))
    assert (bal.free, bal.reserved) == (D("899.6"), D(0))
    assert p.reserve("paper", D(50))
    p.release("paper", D(50))
    assert (bal.free, bal.reserved) == (D("899.6"), D(0))
    with pytest.raises(BalanceError):
        p.release("paper", D(1))
    with pytest.raises(BalanceError):
        p.reserve("paper", D(-1))
    with pytest.raises(BalanceError):
        p.debit("paper", D(10_000))
    p.credit("paper", D("0.4"))
    assert bal.free == D(900)
    assert p.balance_rows()[0].free == D(900)


def test_settle_can_cost_more_than_reserved_if_free_covers() -> None:
    p = portfolio(D(10))
    p.reserve("paper", D(10))
    with pytest.raises(BalanceError):
        p.settle("paper", D(10), D(11))
    p.set_free("paper", D(5))
    p.settle("paper", D(10), D(11))
    assert p.balance("paper").free == D(4)


ops = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "release", "settle", "credit"]),
        st.decimals(min_value=0, max_value=500, places=2),
        st.decimals(min_value=0, max_value=500, places=2),
    ),
    max_size=40,
)


@given(ops)
def test_reservations_never_negative(sequence: list[tuple[str, D, D]]) -> None:
    p = portfolio()
    for op, a, b in sequence:
        bal = p.balance("paper")
        before = (bal.free, bal.reserved)
        try:
            if op == "reserve":
                p.reserve("paper", a)
            elif op == "release":
                p.release("paper", a)
            elif op == "settle":
                p.settle("paper", a, b)
            else:
                p.credit("paper", a)
        except BalanceError:
            assert (bal.free, bal.reserved) == before  # a refused operation changes nothing
        assert bal.free >= 0 and bal.reserved >= 0


def test_daily_counters_roll_at_utc_midnight() -> None:
    p = portfolio()
    p.record_trade(NOW)
    p.record_realized(D(-20), NOW)
    view = p.account_view(venue="paper", symbol="BTC/USDT:USDT", now=NOW)
    assert view.trades_today == 1 and view.realized_pnl_today_usdt == D(-20)
    tomorrow = NOW + timedelta(minutes=2)
    view = p.account_view(venue="paper", symbol="BTC/USDT:USDT", now=tomorrow)
    assert view.trades_today == 0 and view.realized_pnl_today_usdt == 0
    assert p.realized_total_usdt == D(-20)


def make_position(**kw: object) -> Position:
    base: dict[str, object] = dict(
        position_id="p1",
        user_id=7,
        venue="paper",
        symbol="BTC/USDT:USDT",
        trade_type=TradeType.FUTURES,
        side=PositionSide.LONG,
        qty=D("0.1"),
        price=D(50_000),
        leverage=10,
        fee_usdt=D(0),
        now=NOW,
        whale_id=3,
    )
    base.update(kw)
    return Position.open(**base)  # type: ignore[arg-type]


def test_account_view_and_snapshot() -> None:
    p = portfolio(D(1000))
    p.reserve("paper", D(100))
    pos = make_position()
    p.add_position(pos)
    view = p.account_view(venue="paper", symbol="BTC/USDT:USDT", now=NOW)
    assert view.held is not None and view.held.position_id == "p1" and view.held.whale_id == 3
    assert view.open_positions == 1 and view.free_usdt == D(900) and not view.held.busy
    pos.begin_closing("manual")
    assert p.account_view(venue="paper", symbol="BTC/USDT:USDT", now=NOW).held.busy  # type: ignore[union-attr]
    snap = p.snapshot(NOW, {"BTC/USDT:USDT": D(51_000)})
    # equity = free 900 + reserved 100 + margin 500 + unrealised 100
    assert snap.equity_usdt == D(1600) and snap.unrealized_pnl_usdt == D(100) and snap.open_positions == 1
    assert p.remove_position("p1") is pos
    assert p.account_view(venue="paper", symbol="BTC/USDT:USDT", now=NOW).held is None


def row(pnl: str, day: int) -> PositionRow:
    return PositionRow(
        position_id=f"p{day}{pnl}",
        user_id=7,
        venue="paper",
        symbol="X/USDT",
        trade_type=TradeType.SPOT,
        side=PositionSide.LONG,
        qty=D(0),
        entry_price=D(1),
        leverage=1,
        margin_usdt=D(0),
        status=PositionStatus.CLOSED,
        realized_pnl_usdt=D(pnl),
        closed_at=datetime(2025, 1, day, 5, tzinfo=UTC),
    )


def snap(equity: int, minute: int) -> SnapshotRow:
    return SnapshotRow(
        user_id=7,
        taken_at=NOW + timedelta(minutes=minute),
        equity_usdt=D(equity),
        free_usdt=D(0),
        reserved_usdt=D(0),
        unrealized_pnl_usdt=D(0),
        realized_pnl_usdt=D(0),
        open_positions=0,
        trades_today=0,
    )


def test_performance() -> None:
    perf = performance(
        [row("10", 1), row("-5", 1), row("20", 2), row("0", 3)],
        [snap(1000, 0), snap(1200, 1), snap(900, 2), snap(1300, 3), snap(1100, 4)],
    )
    assert (perf.closed, perf.wins, perf.losses) == (4, 2, 2)
    assert perf.win_rate == D("0.5") and perf.realized_pnl_usdt == D(25)
    assert perf.realized_by_day == {
        datetime(2025, 1, 1).date(): D(5),
        datetime(2025, 1, 2).date(): D(20),
        datetime(2025, 1, 3).date(): D(0),
    }
    assert perf.max_drawdown_usdt == D(300) and perf.max_drawdown_pct == D(25)


def test_max_drawdown_edge_cases() -> None:
    assert max_drawdown([]) == (D(0), D(0))
    assert max_drawdown([D(1), D(2), D(3)]) == (D(0), D(0))
    assert performance([], []).win_rate == 0
