"""How an order's outcome changes a follower's books: positions, balances, daily counters and events.

Pure and I/O-free: the follower actor calls these and persists/publishes what they return. Each function
takes the follower's ``Portfolio`` (mutated in place, owned by one actor) and returns the domain events of
what happened, in order.

Money flow (USDT, isolated margin):

* entry: ``reserved`` (margin + estimated fee) was taken from free when the intent was made. A fill settles
  it against the actual cost (margin of the filled qty + the actual fee); the rest goes back to free. A
  partial fill settles the same way: what did not fill is simply not spent.
* exit: nothing is reserved; a fill returns ``Realized.cash_returned_usdt`` (released margin ± PnL, fee
  included) to free.
* failed / rejected / cancelled entry: the reservation goes back to free.
* liquidation: the position's margin is lost; nothing returns to free.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from engine.events import (
    DomainEvent,
    PositionClosed,
    PositionIncreased,
    PositionLiquidated,
    PositionOpened,
    PositionReduced,
    TradeExecuted,
    TradeFailed,
)
from engine.ids import position_id_for
from engine.messages import FollowSettings, MarketInfo, PositionSide, Side, TradeRow, TradeStatus
from engine.portfolio import BalanceError, Portfolio
from engine.positions import Position, protection_prices
from engine.trades import Trade

_ZERO = Decimal(0)


@dataclass(slots=True)
class OrderContext:
    """What the follower remembers about an order between intent and outcome."""

    trade: Trade
    kind: str  # "open" | "increase" | "exit" | "close" (engine close: SL/TP/manual)
    reserved_usdt: Decimal = _ZERO
    close_reason: str | None = None
    received_at_ns: int = 0
    created_at: datetime | None = None
    # The PENDING row sent as the durable intent, kept until the order is sent: the SUBMITTED row is that row
    # with the new status and version (cheaper than building the trade's row again on the hot path).
    intent_row: TradeRow | None = None


def settle_entry(
    portfolio: Portfolio,
    order: OrderContext,
    *,
    market: MarketInfo | None,
    follow: FollowSettings | None,
    now: datetime,
) -> list[DomainEvent]:
    """Apply a FILLED / PARTIALLY_FILLED entry (open or increase) to the position and the balance."""
    trade = order.trade
    price, fee = _price(trade), trade.fee_usdt
    # A fee taken in the base asset never reaches the account: the position holds what the venue credited.
    qty = trade.executed_qty - (trade.fee_base if trade.side is Side.BUY else _ZERO)
    venue = trade.venue
    position = portfolio.positions.get(trade.position_id or "")
    if order.kind == "increase" and (position is None or not position.is_active) and trade.signal_id is not None:
        # The position this increase was for is gone (liquidated while the order was on its way): what filled is
        # a position of its own, as at the venue, under the id its signal would have opened. The old id keeps
        # its final row; reopening it would write an OPEN row the database refuses as older.
        trade.position_id = position_id_for(trade.signal_id, trade.user_id)
    events: list[DomainEvent] = [_executed(trade, now)]
    tick = market.price_tick if market is not None else Decimal("0.00000001")
    side = PositionSide.LONG if trade.side is Side.BUY else PositionSide.SHORT
    sl_pct = follow.stop_loss_pct if follow is not None else None
    tp_pct = follow.take_profit_pct if follow is not None else None
    if position is None or not position.is_active:
        position = Position.open(
            position_id=trade.position_id or "",
            user_id=trade.user_id,
            venue=venue,
            symbol=trade.symbol,
            trade_type=trade.trade_type,
            side=side,
            qty=qty,
            price=price,
            leverage=trade.leverage,
            fee_usdt=fee,
            now=now,
            whale_id=trade.whale_id,
            maintenance_margin_rate=market.maintenance_margin_rate if market else Decimal("0.005"),
            contract_size=market.contract_size if market else Decimal(1),
        )
        margin = position.margin_usdt
        portfolio.add_position(position)
        events.append(
            PositionOpened(
                occurred_at=now,
                user_id=trade.user_id,
                signal_id=trade.signal_id,
                position_id=position.position_id,
                symbol=position.symbol,
                side=position.side,
                qty=position.qty,
                entry_price=position.entry_price,
                leverage=position.leverage,
                margin_usdt=position.margin_usdt,
                whale_id=position.whale_id,
            )
        )
    else:
        margin = position.increase(qty, price, fee)
        events.append(
            PositionIncreased(
                occurred_at=now,
                user_id=trade.user_id,
                signal_id=trade.signal_id,
                position_id=position.position_id,
                client_order_id=trade.client_order_id,
                qty_added=qty,
                price=price,
                qty=position.qty,
                entry_price=position.entry_price,
            )
        )
    sl, tp = protection_prices(
        position.side, position.entry_price, stop_loss_pct=sl_pct, take_profit_pct=tp_pct, tick=tick
    )
    position.set_protection(stop_loss_price=sl, take_profit_price=tp)
    _settle(portfolio, venue, order.reserved_usdt, margin + fee)
    portfolio.record_trade(now)
    portfolio.record_realized(-fee, now)
    return events


def settle_exit(
    portfolio: Portfolio, order: OrderContext, *, now: datetime, market: MarketInfo | None = None
) -> list[DomainEvent]:
    """Apply a FILLED / PARTIALLY_FILLED exit (whale reduce/close, SL/TP, manual) to the position.

    A remainder smaller than one lot cannot be sold (a spot holding after a base-asset fee, e.g. 0.0665334 with a
    0.0001 lot): it is closed in the books at the fill price as dust, so the position does not stay open forever.
    """
    trade = order.trade
    position = portfolio.positions.get(trade.position_id or "")
    if order.kind == "increase" and (position is None or not position.is_active) and trade.signal_id is not None:
        # The position this increase was for is gone (liquidated while the order was on its way): what filled is
        # a position of its own, as at the venue, under the id its signal would have opened. The old id keeps
        # its final row; reopening it would write an OPEN row the database refuses as older.
        trade.position_id = position_id_for(trade.signal_id, trade.user_id)
    events: list[DomainEvent] = [_executed(trade, now)]
    if position is None or not position.is_active:
        # The venue filled an exit for a position we no longer hold (e.g. liquidated meanwhile): the fill is
        # recorded on the trade; there is nothing left on our books to reduce.
        return events
    qty = min(trade.executed_qty, position.qty)
    if order.kind == "close" and position.close_reason is None:
        position.close_reason = order.close_reason
    realized = position.reduce(qty, _price(trade), trade.fee_usdt, now=now)
    portfolio.credit(trade.venue, max(realized.cash_returned_usdt, _ZERO))
    portfolio.record_trade(now)
    portfolio.record_realized(realized.pnl_usdt, now)
    if position.is_active and market is not None and position.qty < market.qty_step:
        dust = position.reduce(position.qty, _price(trade), _ZERO, now=now)
        portfolio.credit(trade.venue, max(dust.cash_returned_usdt, _ZERO))
        portfolio.record_realized(dust.pnl_usdt, now)
    if position.is_active:
        if order.kind == "close":
            position.abort_closing()  # partly filled: the rest stays open and protected
        events.append(
            PositionReduced(
                occurred_at=now,
                user_id=trade.user_id,
                signal_id=trade.signal_id,
                position_id=position.position_id,
                client_order_id=trade.client_order_id,
                qty_removed=qty,
                price=_price(trade),
                qty=position.qty,
                realized_pnl_usdt=realized.pnl_usdt,
            )
        )
    else:
        portfolio.remove_position(position.position_id)
        events.append(
            PositionClosed(
                occurred_at=now,
                user_id=trade.user_id,
                signal_id=trade.signal_id,
                position_id=position.position_id,
                price=_price(trade),
                reason=position.close_reason or "signal",
                realized_pnl_usdt=position.realized_pnl_usdt,
            )
        )
    return events


def undo_order(portfolio: Portfolio, order: OrderContext, *, now: datetime) -> list[DomainEvent]:
    """The order did not happen (REJECTED / FAILED / CANCELLED): release what it held."""
    trade = order.trade
    if order.reserved_usdt > 0:
        portfolio.release(trade.venue, order.reserved_usdt)
    position = portfolio.positions.get(trade.position_id or "")
    if order.kind == "close" and position is not None and position.status.value == "closing":
        position.abort_closing()
    return [
        TradeFailed(
            occurred_at=now,
            user_id=trade.user_id,
            signal_id=trade.signal_id,
            client_order_id=trade.client_order_id,
            status=trade.status,
            error=trade.error,
        )
    ]


def liquidate(portfolio: Portfolio, position: Position, mark: Decimal, *, now: datetime) -> DomainEvent:
    """The mark crossed the liquidation price: the margin is lost."""
    liq_price = position.liquidation_price
    realized = position.liquidate(now=now)
    portfolio.record_realized(realized.pnl_usdt, now)
    portfolio.remove_position(position.position_id)
    return PositionLiquidated(
        occurred_at=now,
        user_id=position.user_id,
        position_id=position.position_id,
        mark_price=mark,
        liquidation_price=liq_price,
        realized_pnl_usdt=position.realized_pnl_usdt,
    )


def _settle(portfolio: Portfolio, venue: str, reserved: Decimal, actual_cost: Decimal) -> None:
    try:
        portfolio.settle(venue, reserved, actual_cost)
    except BalanceError:
        # The fill cost more than reserved + free (slippage beyond the estimate). The venue has already taken
        # it, so our books follow the venue: spend the reservation and what free there is.
        balance = portfolio.balance(venue)
        portfolio.settle(venue, reserved, min(actual_cost, balance.free + reserved))


def _price(trade: Trade) -> Decimal:
    return trade.executed_price if trade.executed_price is not None else trade.price


def _executed(trade: Trade, now: datetime) -> DomainEvent:
    return TradeExecuted(
        occurred_at=now,
        user_id=trade.user_id,
        signal_id=trade.signal_id,
        client_order_id=trade.client_order_id,
        symbol=trade.symbol,
        side=trade.side,
        status=trade.status if trade.status is not TradeStatus.UNKNOWN else TradeStatus.FILLED,
        qty=trade.executed_qty,
        price=_price(trade),
        fee_usdt=trade.fee_usdt,
        position_id=trade.position_id,
    )
