"""A follower's recovery: its books rebuilt from the rows of the last run, and the venue asked about every order
whose outcome it does not know. One ``StartupRecovery``, composed by ``FollowerActor`` (``actors/follower.py``):
``restore`` runs while the actor is built, ``reconcile`` at its start (orders left open by the last run) and on
each ``ReconcileNow`` (outcomes that came back UNKNOWN).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from actors.follower_books import FollowerBooks
from engine.follower_state import FollowerState
from engine.ledger import OrderContext
from engine.logs import get_logger
from engine.messages import MarketInfo, PositionRow, PositionStatus, ResolveOrder, TradeRow, TradeStatus
from engine.positions import Position
from engine.trades import Trade

log = get_logger(__name__)

Markets = Mapping[str, Mapping[str, MarketInfo]]


class StartupRecovery:
    """Restores a follower's books from its ``FollowerState`` and reconciles orders of unknown outcome."""

    __slots__ = ("_books", "_exchanges", "_reply_to", "_user_id")

    def __init__(self, books: FollowerBooks, user_id: int, *, exchanges: Mapping[str, Any], reply_to: Any) -> None:
        """``reply_to`` is the follower's ref: the exchange actors answer its ``ResolveOrder``s there."""
        self._books = books
        self._user_id = user_id
        self._exchanges = exchanges
        self._reply_to = reply_to

    def restore(self, state: FollowerState, markets: Markets, now: datetime) -> None:
        """Balances, open and closing positions and open trades as persisted; then the repairs a crash can need
        (closes abandoned before their intent was durable, reservations out of step with the open trades)."""
        for bal in state.balances:
            self._books.portfolio.restore_balance(
                bal.venue, bal.asset, free=bal.free, reserved=bal.reserved, version=bal.version
            )
        for position_row in state.positions:
            if position_row.status in (PositionStatus.OPEN, PositionStatus.CLOSING):
                self._books.portfolio.add_position(self._restore_position(position_row, markets))
        for trade_row in state.open_trades:
            self._recover_trade(trade_row, state.trade_created_at.get(trade_row.client_order_id, now))
        self._reopen_abandoned_closes()
        self._restore_reservations()

    def _reopen_abandoned_closes(self) -> None:
        """A position loaded CLOSING with no close order of its own on the way: the batched lane wrote the
        CLOSING row, and the engine stopped before the close's intent was durable (so no order was sent), or
        the attempt ended in a write the crash lost. Left CLOSING, no trigger and no close would ever touch it
        again: it is OPEN, and the next trigger closes it."""
        closing = {o.trade.position_id for o in self._books.orders.values() if o.kind == "close"}
        for position in self._books.portfolio.positions.values():
            if position.status is PositionStatus.CLOSING and position.position_id not in closing:
                position.abort_closing()
                self._books.persist(position.to_row())
                log.warning("position.close_abandoned", user_id=self._user_id, position_id=position.position_id)

    def _restore_reservations(self) -> None:
        """Re-derive each USDT balance's reserved part from the open trades' ``reserved_usdt``, keeping its total.

        The balance row and the trade rows are written by different lanes at different times, so a crash can
        leave a reservation in one and not the other; the open trades are what will be released or settled."""
        held: dict[str, Decimal] = {}
        for order in self._books.orders.values():
            held[order.trade.venue] = held.get(order.trade.venue, Decimal(0)) + order.reserved_usdt
        for venue in {*held, *self._books.portfolio.venues_holding("USDT")}:
            balance = self._books.portfolio.balance(venue)
            reserved = held.get(venue)
            if reserved is None and not balance.reserved:
                continue  # nothing held and nothing reserved: already right (most followers at start)
            total = balance.free + balance.reserved
            reserved = min(reserved or Decimal(0), total)
            if (balance.free, balance.reserved) != (total - reserved, reserved):
                balance.free, balance.reserved = total - reserved, reserved
                balance.version += 1

    def _restore_position(self, row: PositionRow, markets: Markets) -> Position:
        market = markets.get(row.venue, {}).get(row.symbol)
        position = Position.from_row(row)
        if market is not None:
            position.maintenance_margin_rate = market.maintenance_margin_rate
            position.contract_size = market.contract_size
        return position

    def _recover_trade(self, row: TradeRow, created_at: datetime) -> None:
        trade = Trade.from_row(row)
        if row.reduce_only:
            kind = "close" if row.client_order_id[0] in "xr" else "exit"
        else:
            kind = "increase" if row.position_id in self._books.portfolio.positions else "open"
        position = self._books.portfolio.positions.get(row.position_id or "")
        close_reason = position.close_reason if position is not None and kind == "close" else None
        order = OrderContext(
            trade=trade, kind=kind, reserved_usdt=row.reserved_usdt, close_reason=close_reason, created_at=created_at
        )
        if trade.status is TradeStatus.PENDING:
            self._books.recovered.add(trade.client_order_id)
        self._books.track(order)

    def reconcile(self) -> None:
        """Ask the venue by client order id about every order whose outcome we do not know."""
        for order in list(self._books.orders.values()):
            trade = order.trade
            if trade.status not in (TradeStatus.UNKNOWN, TradeStatus.SUBMITTED, TradeStatus.PENDING):
                continue
            exchange = self._exchanges.get(trade.venue)
            if exchange is None:
                continue
            if trade.status is TradeStatus.PENDING and not self._recovered_pending(order):
                continue  # a live intent waiting for its IntentAck, not a leftover
            exchange.tell(
                ResolveOrder(
                    user_id=self._user_id,
                    symbol=trade.symbol,
                    trade_type=trade.trade_type,
                    client_order_id=trade.client_order_id,
                    reply_to=self._reply_to,
                )
            )

    def _recovered_pending(self, order: OrderContext) -> bool:
        # A PENDING trade loaded at start-up may or may not have reached the venue before the crash; treat it
        # as UNKNOWN so the resolution rules apply (found -> apply; not found after the grace -> FAILED).
        if order.trade.client_order_id in self._books.recovered:
            order.trade.transition(TradeStatus.UNKNOWN, error="recovered at start-up")
            return True
        return False
