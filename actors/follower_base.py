"""The FollowerActor's state and plumbing: construction from persisted rows, introspection. Its books are a
``FollowerBooks`` (``actors/follower_books.py``).

Split from ``actors/follower.py`` so that file reads as the copy flow. ``FollowerContext`` is what the system
gives every follower: refs to the singletons and read-only views; nothing in it is mutable shared state.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from actors.follower_books import FollowerBooks
from actors.follower_protection import PriceProtection
from engine.follower_state import FollowerContext, FollowerState
from engine.ledger import OrderContext
from engine.logs import get_logger
from engine.messages import (
    PositionRow,
    PositionStatus,
    TradeRow,
    TradeStatus,
)
from engine.portfolio import Portfolio
from engine.positions import Position
from engine.runtime import PooledActor
from engine.trades import Trade

log = get_logger(__name__)


class FollowerBase(PooledActor):
    """State and helpers; the message handling is in ``FollowerActor``."""

    def __init__(self, state: FollowerState, ctx: FollowerContext) -> None:
        super().__init__()
        self._ctx = ctx
        self._user_id = state.user.user_id
        now = ctx.clock.now()
        portfolio = Portfolio(self._user_id, now=now, realized_total_usdt=state.realized_total_usdt)
        portfolio.trades_today = state.trades_today
        portfolio.realized_today_usdt = state.realized_today_usdt
        self._books = FollowerBooks(portfolio, persistence=ctx.persistence, publish=ctx.publish)
        self._paused_override: bool | None = None
        self._current: Any = None
        self._protection = PriceProtection(
            self._books,
            self._user_id,
            dict(state.close_attempts),
            clock=ctx.clock,
            exchanges=ctx.exchanges,
            liquidation_checks=ctx.liquidation_checks,
            reply_to=self.actor_ref,
        )
        self._apply_state_settings(state)
        for bal in state.balances:
            self._books.portfolio.restore_balance(
                bal.venue, bal.asset, free=bal.free, reserved=bal.reserved, version=bal.version
            )
        for position_row in state.positions:
            if position_row.status in (PositionStatus.OPEN, PositionStatus.CLOSING):
                self._books.portfolio.add_position(self._restore_position(position_row))
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

    def _apply_state_settings(self, state: FollowerState) -> None:
        self._user = state.user
        self._follows = {f.whale_id: f for f in state.follows}

    def _restore_position(self, row: PositionRow) -> Position:
        market = self._ctx.markets.get(row.venue, {}).get(row.symbol)
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

    # ---- failures and introspection -------------------------------------------------------------------

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """Runs on a pool worker when a handler raised: tell the supervisor which message caused it."""
        message = type(self._current).__name__ if self._current is not None else "?"
        self._ctx.on_failure(self._user_id, message, f"{getattr(exception_type, '__name__', '?')}: {exception_value}")

    def describe(self) -> dict[str, Any]:
        """The follower's live state for admin ``user ID``."""
        return {
            "user_id": self._user_id,
            "paused": self._paused_override if self._paused_override is not None else self._user.paused,
            "preferred_exchange": self._user.preferred_exchange,
            "follows": sorted(self._follows),
            "balances": [_plain(b) for b in self._books.portfolio.balance_rows()],
            "open_positions": [_plain(p.to_row()) for p in self._books.portfolio.positions.values()],
            "orders_in_flight": [
                {"client_order_id": cid, "status": o.trade.status.value, "kind": o.kind}
                for cid, o in self._books.orders.items()
            ],
            "trades_today": self._books.portfolio.trades_today,
            "realized_pnl_today_usdt": self._books.portfolio.realized_today_usdt,
        }

    def snapshot(self) -> Any:
        """Persist and return a portfolio snapshot at the current marks."""
        row = self._books.portfolio.snapshot(self._ctx.clock.now(), self._protection.marks)
        self._books.persist(row)
        return row


def _plain(row: Any) -> Any:
    """A row as builtins, Decimals kept (the admin encoder prints them in fixed point)."""
    return msgspec.to_builtins(row, builtin_types=(Decimal,))
