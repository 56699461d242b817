"""engine/ledger.py: a spot fee taken in the base asset, and the sub-lot dust it leaves on the way out."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

from engine.ids import position_id_for
from engine.ledger import OrderContext, liquidate, settle_entry, settle_exit
from engine.messages import MarketInfo, OrderOutcome, PositionStatus, Side, TradeStatus, TradeType
from engine.portfolio import Portfolio
from engine.trades import Trade

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ETH = MarketInfo(
    symbol="ETH/USDT", trade_type=TradeType.SPOT, base="ETH", quote="USDT", qty_step=D("0.001"), price_tick=D("0.01")
)


def _trade(cid: str, side: Side, qty: str, *, reduce_only: bool = False) -> Trade:
    return Trade(
        client_order_id=cid, user_id=1, venue="v", symbol="ETH/USDT", trade_type=TradeType.SPOT, side=side,
        qty=D(qty), price=D(3000), reduce_only=reduce_only, signal_id=1, whale_id=1, position_id="p1",
    )  # fmt: skip


def test_base_asset_fee_reduces_the_holding_and_dust_is_closed_on_exit() -> None:
    portfolio = Portfolio(1, now=NOW)
    portfolio.set_free("v", D(1000))
    buy = _trade("c1", Side.BUY, "0.033")
    assert portfolio.reserve("v", D(100))
    buy.transition(TradeStatus.SUBMITTED)
    # The venue filled 0.033 ETH at 3000 and kept 0.000033 ETH as the fee (0.099 USDT at the fill price).
    buy.apply_outcome(
        OrderOutcome(client_order_id="c1", status=TradeStatus.FILLED, filled_qty=D("0.033"), avg_price=D(3000),
                     fee_usdt=D("0.099"), fee_base=D("0.000033"))
    )  # fmt: skip
    settle_entry(
        portfolio, OrderContext(trade=buy, kind="open", reserved_usdt=D(100)), market=ETH, follow=None, now=NOW
    )
    position = portfolio.positions["p1"]
    assert position.qty == D("0.032967")  # what the account actually holds
    assert portfolio.balance("v").free == D(1000) - D("0.033") * 3000  # cost = filled x price, fee included

    sell = _trade("c2", Side.SELL, "0.032", reduce_only=True)  # whole lots only
    sell.transition(TradeStatus.SUBMITTED)
    sell.apply_outcome(
        OrderOutcome(client_order_id="c2", status=TradeStatus.FILLED, filled_qty=D("0.032"), avg_price=D(3100))
    )
    events = settle_exit(portfolio, OrderContext(trade=sell, kind="exit"), now=NOW, market=ETH)
    assert position.status is PositionStatus.CLOSED and position.qty == 0  # the 0.000967 dust closed with it
    assert "p1" not in portfolio.positions
    assert [e.event_type for e in events] == ["trade_executed", "position_closed"]
    # Everything the holding was worth at 3100 came back: 0.032967 x 3100.
    assert portfolio.balance("v").free == D(1000) - D("0.033") * 3000 + D("0.032967") * 3100


BTC_PERP = MarketInfo(
    symbol="BTC/USDT:USDT", trade_type=TradeType.FUTURES, base="BTC", quote="USDT", qty_step=D("0.001"),
    price_tick=D("0.1"), max_leverage=50, maintenance_margin_rate=D("0.005"), taker_fee_rate=D("0.0005"),
)  # fmt: skip


def _perp_fill(cid: str, signal_id: int, position_id: str, qty: str) -> Trade:
    trade = Trade(
        client_order_id=cid, user_id=1, venue="v", symbol=BTC_PERP.symbol, trade_type=TradeType.FUTURES,
        side=Side.BUY, qty=D(qty), price=D(50_000), leverage=10, signal_id=signal_id, whale_id=1,
        position_id=position_id,
    )  # fmt: skip
    trade.transition(TradeStatus.SUBMITTED)
    trade.apply_outcome(
        OrderOutcome(client_order_id=cid, status=TradeStatus.FILLED, filled_qty=D(qty), avg_price=D(50_000))
    )
    return trade


def test_increase_that_fills_after_its_position_was_liquidated_opens_a_position_of_its_own() -> None:
    """The increase was on its way when the mark crossed the liquidation price. The venue liquidated the old
    position and opened a new one with what the increase filled; so do the books, under the id the increase's
    signal would have opened. Reopening the liquidated id wrote an OPEN row at a lower version than the
    LIQUIDATED one, which the database then kept: the new position vanished at the next restart."""
    portfolio = Portfolio(1, now=NOW)
    portfolio.set_free("v", D(10_000))
    old_id, new_id = position_id_for(1, 1), position_id_for(2, 1)
    opening = _perp_fill("c1", 1, old_id, "0.1")
    settle_entry(portfolio, OrderContext(trade=opening, kind="open"), market=BTC_PERP, follow=None, now=NOW)
    increase = _perp_fill("c2", 2, old_id, "0.05")  # decided while the old position was open
    liquidated = portfolio.positions[old_id]
    liquidate(portfolio, liquidated, D(45_000), now=NOW)
    assert liquidated.status is PositionStatus.LIQUIDATED and old_id not in portfolio.positions

    context = OrderContext(trade=increase, kind="increase")
    events = settle_entry(portfolio, context, market=BTC_PERP, follow=None, now=NOW)
    assert increase.position_id == new_id and increase.to_row().position_id == new_id
    fresh = portfolio.positions[new_id]
    assert (fresh.status, fresh.qty, fresh.entry_price) == (PositionStatus.OPEN, D("0.05"), D(50_000))
    assert old_id not in portfolio.positions and liquidated.status is PositionStatus.LIQUIDATED
    assert [e.event_type for e in events] == ["trade_executed", "position_opened"]
