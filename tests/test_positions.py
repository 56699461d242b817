"""Positions: PnL both sides with leverage, fees, liquidation price, triggers, rows, fill sums."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.messages import PositionSide, PositionStatus, TradeType
from engine.positions import Position, PositionError, protection_prices

NOW = datetime(2025, 1, 2, tzinfo=UTC)


def open_pos(side: PositionSide = PositionSide.LONG, **kw: Any) -> Position:
    base: dict[str, Any] = dict(
        position_id="p1",
        user_id=7,
        venue="paper",
        symbol="BTC/USDT:USDT",
        trade_type=TradeType.FUTURES,
        side=side,
        qty=D("0.1"),
        price=D(50_000),
        leverage=10,
        fee_usdt=D(0),
        now=NOW,
        whale_id=3,
        maintenance_margin_rate=D("0.005"),
    )
    base.update(kw)
    return Position.open(**base)


def test_open_margin_and_liquidation_worked_examples() -> None:
    long = open_pos()
    assert long.margin_usdt == D(500)  # 0.1 × 50,000 / 10
    assert long.liquidation_price == D(45_250)  # 50,000 × (1 - 0.1 + 0.005)
    short = open_pos(PositionSide.SHORT)
    assert short.liquidation_price == D(54_750)  # 50,000 × (1 + 0.1 - 0.005)
    assert long.version == 1 and long.status is PositionStatus.OPEN


def test_long_pnl_with_leverage_and_fees() -> None:
    pos = open_pos(fee_usdt=D("2.5"))
    assert pos.realized_pnl_usdt == D("-2.5")
    assert pos.unrealized_pnl(D(52_000)) == D(200)  # (52,000 - 50,000) × 0.1: +40 % on 500 margin
    r = pos.close(D(52_000), D("2.6"), now=NOW)
    assert r.pnl_usdt == D("197.4") and r.margin_released_usdt == D(500)
    assert r.cash_returned_usdt == D("697.4")
    assert pos.realized_pnl_usdt == D("194.9")
    assert pos.status is PositionStatus.CLOSED and pos.qty == 0 and pos.close_reason == "signal"


def test_short_pnl_with_leverage() -> None:
    pos = open_pos(PositionSide.SHORT)
    assert pos.unrealized_pnl(D(48_000)) == D(200)
    r = pos.reduce(D("0.05"), D(51_000), D(0), now=NOW)
    assert r.pnl_usdt == D(-50) and r.margin_released_usdt == D(250)
    assert pos.qty == D("0.05") and pos.status is PositionStatus.OPEN
    r = pos.close(D(49_000), D(0), now=NOW, reason="take_profit")
    assert r.pnl_usdt == D(50) and pos.realized_pnl_usdt == 0 and pos.close_reason == "take_profit"


def test_increase_averages_entry() -> None:
    pos = open_pos(qty=D(1), price=D(100), leverage=5)
    added = pos.increase(D(3), D(200), D(1))
    assert added == D(120)
    assert pos.entry_price == D(175) and pos.qty == D(4) and pos.margin_usdt == D(140)
    assert pos.realized_pnl_usdt == D(-1) and pos.version == 2
    assert pos.liquidation_price == D(175) * (1 - D("0.2") + D("0.005"))


def test_loss_is_capped_at_released_margin() -> None:
    pos = open_pos()
    r = pos.close(D(40_000), D(1), now=NOW)  # gross -1,000 on 500 margin
    assert r.pnl_usdt == D(-500) and r.cash_returned_usdt == 0


def test_liquidate_realises_whole_margin() -> None:
    pos = open_pos(fee_usdt=D(1))
    r = pos.liquidate(now=NOW)
    assert r.pnl_usdt == D(-500) and r.cash_returned_usdt == 0
    assert pos.status is PositionStatus.LIQUIDATED and pos.realized_pnl_usdt == D(-501)
    with pytest.raises(PositionError):
        pos.reduce(D(1), D(1), D(0), now=NOW)


@pytest.mark.parametrize(
    ("side", "mark", "expected"),
    [
        (PositionSide.LONG, D(45_000), "liquidation"),  # below liq 45,250 and SL 49,000
        (PositionSide.LONG, D(48_000), "stop_loss"),
        (PositionSide.LONG, D(53_000), "take_profit"),
        (PositionSide.LONG, D(50_500), None),
        (PositionSide.SHORT, D(55_000), "liquidation"),
        (PositionSide.SHORT, D(52_000), "stop_loss"),
        (PositionSide.SHORT, D(47_000), "take_profit"),
        (PositionSide.SHORT, D(49_900), None),
    ],
)
def test_triggers(side: PositionSide, mark: D, expected: str | None) -> None:
    sl, tp = protection_prices(side, D(50_000), stop_loss_pct=D(2), take_profit_pct=D(5), tick=D("0.1"))
    pos = open_pos(side, stop_loss_price=sl, take_profit_price=tp)
    assert pos.check_triggers(mark) == expected


def test_closing_suppresses_sl_tp_but_not_liquidation() -> None:
    pos = open_pos(stop_loss_price=D(49_000))
    pos.begin_closing("stop_loss")
    assert pos.check_triggers(D(48_000)) is None
    assert pos.check_triggers(D(45_000)) == "liquidation"
    pos.abort_closing()
    assert pos.check_triggers(D(48_000)) == "stop_loss"
    pos.begin_closing("stop_loss")
    pos.close(D(48_000), D(0), now=NOW)
    assert pos.close_reason == "stop_loss"


def test_spot_has_no_liquidation_and_no_short() -> None:
    pos = open_pos(trade_type=TradeType.SPOT, leverage=5)
    assert pos.leverage == 1 and pos.liquidation_price is None and pos.margin_usdt == D(5000)
    with pytest.raises(PositionError):
        open_pos(PositionSide.SHORT, trade_type=TradeType.SPOT)


def test_row_roundtrip_and_versions() -> None:
    pos = open_pos(stop_loss_price=D(49_000))
    pos.mark_to_market(D(51_000))
    assert pos.version == 2
    pos.mark_to_market(D(51_000))  # no change, no bump
    assert pos.version == 2
    row = pos.to_row()
    assert row.liquidation_price == D(45_250) and row.unrealized_pnl_usdt == D(100)
    again = Position.from_row(row)
    assert again.to_row() == row


def test_reduce_more_than_held_fails() -> None:
    with pytest.raises(PositionError):
        open_pos().reduce(D(1), D(50_000), D(0), now=NOW)


fills = st.lists(
    st.tuples(
        st.booleans(),
        st.integers(min_value=1, max_value=1000),
        st.decimals(min_value=1, max_value=100_000, places=2),
    ),
    max_size=30,
)


@given(side=st.sampled_from(list(PositionSide)), fills=fills)
def test_qty_equals_sum_of_fills(side: PositionSide, fills: list[tuple[bool, int, D]]) -> None:
    step = D("0.001")
    pos = open_pos(side, qty=D(1), price=D(100))
    expected = D(1)
    realized = pos.realized_pnl_usdt
    for is_entry, units, price in fills:
        if not pos.is_active:
            break
        qty = units * step
        if is_entry:
            pos.increase(qty, price, D(0))
            expected += qty
        else:
            qty = min(qty, pos.qty)
            r = pos.reduce(qty, price, D(0), now=NOW)
            realized += r.pnl_usdt
            assert r.cash_returned_usdt >= 0
            expected -= qty
        assert pos.qty == expected
        assert pos.margin_usdt >= 0
    assert pos.realized_pnl_usdt == realized
    assert (pos.status is PositionStatus.CLOSED) == (expected == 0)


# -- the venue's liquidation price (real venues) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "mark", "near"),
    [
        (PositionSide.LONG, D(45_702), True),  # liq 45,250 × 1.01 = 45,702.5: within 1 %
        (PositionSide.LONG, D(45_703), False),
        (PositionSide.LONG, D(40_000), True),  # past it
        (PositionSide.SHORT, D(54_203), True),  # liq 54,750 × 0.99 = 54,202.5
        (PositionSide.SHORT, D(54_202), False),
        (PositionSide.SHORT, D(60_000), True),
    ],
)
def test_near_liquidation_band(side: PositionSide, mark: D, near: bool) -> None:
    assert open_pos(side).near_liquidation(mark, D("0.01")) is near


def test_spot_is_never_near_liquidation() -> None:
    spot = open_pos(trade_type=TradeType.SPOT, leverage=1)
    assert spot.near_liquidation(D(1), D("0.5")) is False


def test_venue_liquidation_price_replaces_the_estimate_until_the_entry_changes() -> None:
    pos = open_pos()
    v = pos.version
    assert pos.adopt_venue_liquidation_price(D(44_000)) is True
    assert pos.liquidation_price == D(44_000) and pos.version == v + 1
    assert pos.to_row().liquidation_price == D(44_000)
    assert pos.check_triggers(D(45_000)) is None  # past our estimate, not past the venue's
    assert pos.check_triggers(D(44_000)) == "liquidation"
    assert pos.adopt_venue_liquidation_price(D(44_000)) is False  # unchanged: no new version
    assert pos.version == v + 1
    pos.increase(D("0.1"), D(52_000), D(0))
    assert pos.liquidation_price == D(51_000) * (1 - D("0.1") + D("0.005"))  # estimate again, new entry
    assert pos.adopt_venue_liquidation_price(None) is False


def test_triggers_without_liquidation_still_see_the_stop_loss() -> None:
    pos = open_pos(stop_loss_price=D(46_000))
    assert pos.check_triggers(D(45_000)) == "liquidation"
    assert pos.check_triggers(D(45_000), liquidation=False) == "stop_loss"
