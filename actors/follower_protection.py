"""A follower's position protection: marks, stop-loss / take-profit, liquidation, engine closes.

One ``PriceProtection``, composed by ``FollowerActor`` (``actors/follower.py``), which gives it the follower's
books (``FollowerBooks``); its methods run inside the actor's handlers, on its pool worker. An engine close (SL, TP,
manual, liquidation by the venue's rules) is a reduce-only order with the position's deterministic close id
(``engine.ids.close_order_id``), so a retry, a restart or a gap through SL and TP in one tick can only ever
close a position once. Once an attempt has ended without closing the whole position (rejected or failed: the
venue certainly did not execute it; or filled in part, the rest expired) the next attempt gets the next attempt
id (``close_attempt_id``): the venue would answer a spent id with the old order.

No decision is taken on a stale price: symbols in ``PriceUpdate.stale_symbols`` are ignored.

Liquidation: on the paper venue our isolated-margin estimate is the rule (the mark crossing it liquidates). On a
real venue (``FollowerContext.liquidation_checks``) the venue decides: when the mark comes within the band of the
liquidation price, the follower asks the venue for its position (``CheckPositions`` through the exchange actor,
so within the venue's rate budget, at most once per position per interval). Flat at the venue: liquidated, the
margin is lost. Still open: the venue's liquidation price replaces our estimate, and SL/TP keep working.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from actors.follower_books import FollowerBooks
from engine import metrics
from engine.clock import Clock
from engine.follower_state import LiquidationCheck
from engine.ids import CLOSE_ATTEMPTS_MAX, close_attempt_id
from engine.ledger import OrderContext, liquidate
from engine.logs import get_logger
from engine.messages import (
    CheckPositions,
    PositionStatus,
    PriceUpdate,
    TradeType,
    VenuePositions,
)
from engine.positions import Position
from engine.trades import Trade

log = get_logger(__name__)


class PriceProtection:
    """Marks, SL/TP and liquidation triggers, the venue's answers about positions, and engine closes with their
    attempt ids (see the module docstring).

    ``marks``: symbol -> last mark seen; ``close_attempts``: position id -> engine close attempts that ended
    without closing it (restored from ``FollowerState``)."""

    __slots__ = (
        "_books",
        "_clock",
        "_exchanges",
        "_liquidation_asked",
        "_liquidation_checks",
        "_reply_to",
        "_user_id",
        "close_attempts",
        "marks",
    )

    def __init__(
        self,
        books: FollowerBooks,
        user_id: int,
        close_attempts: dict[str, int],
        *,
        clock: Clock,
        exchanges: Mapping[str, Any],
        liquidation_checks: Mapping[str, LiquidationCheck],
        reply_to: Any,
    ) -> None:
        """``reply_to`` is the follower's ref: the venue's ``VenuePositions`` and the ``IntentAck`` come back to it."""
        self._books = books
        self._user_id = user_id
        self.close_attempts = close_attempts
        self._clock = clock
        self._exchanges = exchanges
        self._liquidation_checks = liquidation_checks
        self._reply_to = reply_to
        self.marks: dict[str, Decimal] = {}
        self._liquidation_asked: dict[str, float] | None = None  # position id -> monotonic time of the last question

    def on_prices(self, update: PriceUpdate) -> None:
        """Mark positions to market and act on the first trigger each one hits."""
        check = self._liquidation_checks.get(update.venue)
        to_ask: list[Position] = []
        for position in list(self._books.portfolio.positions.values()):
            if position.venue != update.venue:
                continue
            mark = update.marks.get(position.symbol)
            if mark is None:
                continue
            self.marks[position.symbol] = mark
            if position.symbol in update.stale_symbols:
                metrics.incr("prices.stale_skipped")
                continue
            position.mark_to_market(mark)
            if check is not None and position.trade_type is TradeType.FUTURES:
                if position.near_liquidation(mark, check.band):
                    to_ask.append(position)
                trigger = position.check_triggers(mark, liquidation=False)
            else:
                trigger = position.check_triggers(mark)
            if trigger is None:
                continue
            if trigger == "liquidation":
                # With a close in flight the venue's answer decides: writing the margin off here and then
                # applying the close's fill would count the same money twice.
                if position.trade_type is TradeType.FUTURES and position.status is not PositionStatus.CLOSING:
                    self._book_liquidation(position, mark)
                continue
            self.start_close(position.position_id, trigger, mark=mark)
        if to_ask and check is not None:
            self.ask_venue(update.venue, to_ask, check.interval_s)

    def ask_venue(
        self, venue: str, positions: list[Position], interval_s: float, reason: str = "near_liquidation"
    ) -> None:
        """Ask the venue about positions near liquidation, at most once per position per interval; or, with
        ``reason="close_rejected"``, about a position whose reduce-only close the venue refused (it may hold
        nothing any more: liquidated between our last mark and the close). Flat there -> LIQUIDATED, booked
        once instead of a new close attempt on every tick."""
        asked = self._liquidation_asked
        if asked is None:
            asked = self._liquidation_asked = {}
        now = self._clock.monotonic()
        due = [p for p in positions if now - asked.get(p.position_id, -math.inf) >= interval_s]
        exchange = self._exchanges.get(venue)
        if not due or exchange is None:
            return
        for position in due:
            asked[position.position_id] = now
            log.info(
                "position.liquidation_check",
                user_id=self._user_id,
                position_id=position.position_id,
                symbol=position.symbol,
                mark=self.marks.get(position.symbol),
                liquidation_price=position.liquidation_price,
                reason=reason,
            )
        symbols = tuple(sorted({p.symbol for p in due}))
        exchange.tell(CheckPositions(user_id=self._user_id, symbols=symbols, reply_to=self._reply_to))
        metrics.incr("positions.liquidation_checks")

    def on_venue_positions(self, answer: VenuePositions) -> None:
        """The venue's word on positions we asked about (see the module docstring)."""
        asked = self._liquidation_asked or {}
        if answer.error is not None:
            return  # logged by the exchange actor; the next tick past the interval asks again
        held = {p.symbol: p for p in answer.positions}
        for position in list(self._books.portfolio.positions.values()):
            if (
                position.venue != answer.venue
                or position.symbol not in answer.symbols
                or position.position_id not in asked
                or position.trade_type is not TradeType.FUTURES
            ):
                continue
            at_venue = held.get(position.symbol)
            if at_venue is not None and at_venue.side is position.side:
                self._adopt_venue_position(position, at_venue.qty, at_venue.liquidation_price)
                continue
            if any(o.trade.position_id == position.position_id for o in self._books.orders.values()):
                continue  # an order on it is in flight (a close that filled?): its outcome decides first
            mark = self.marks.get(position.symbol) or position.liquidation_price or position.entry_price
            log.warning(
                "position.flat_at_venue",
                user_id=self._user_id,
                position_id=position.position_id,
                venue=position.venue,
                symbol=position.symbol,
                qty=position.qty,
                mark=mark,
            )
            asked.pop(position.position_id, None)
            self._book_liquidation(position, mark)

    def _book_liquidation(self, position: Position, mark: Decimal) -> None:
        """The position is gone with its margin: books, rows, ``PositionLiquidated``."""
        event = liquidate(self._books.portfolio, position, mark, now=self._clock.now())
        metrics.incr("positions.liquidated")
        self._books.persist(position.to_row(), *self._books.portfolio.balance_rows())
        self._books.publish(event)

    def _adopt_venue_position(self, position: Position, venue_qty: Decimal, venue_liq: Decimal | None) -> None:
        if venue_qty != position.qty:
            log.warning(
                "position.venue_mismatch",
                user_id=self._user_id,
                position_id=position.position_id,
                symbol=position.symbol,
                qty=position.qty,
                venue_qty=venue_qty,
            )
        ours = position.liquidation_price
        if position.adopt_venue_liquidation_price(venue_liq):
            log.info(
                "position.liquidation_price_adopted",
                user_id=self._user_id,
                position_id=position.position_id,
                estimate=ours,
                venue_liquidation_price=position.liquidation_price,
            )
            self._books.persist(position.to_row())

    def start_close(self, position_id: str, reason: str, *, mark: Decimal | None = None) -> dict[str, Any]:
        """Begin an engine close of the whole position. Idempotent: closing twice is a no-op with a reply."""
        position = self._books.portfolio.positions.get(position_id)
        if position is None or not position.is_active:
            return {"position_id": position_id, "closing": False, "detail": "no such open position"}
        if position.status is PositionStatus.CLOSING:
            return {"position_id": position_id, "closing": False, "detail": "already closing"}
        busy = [o for o in self._books.orders.values() if o.trade.position_id == position_id]
        if busy:
            return {"position_id": position_id, "closing": False, "detail": "an order on this position is in flight"}
        attempt = self.close_attempts.get(position_id, 0)
        if attempt > CLOSE_ATTEMPTS_MAX:
            log.error("position.close_attempts_exhausted", user_id=position.user_id, position_id=position_id)
            return {"position_id": position_id, "closing": False, "detail": "close attempts exhausted"}
        cid = close_attempt_id(position_id, attempt)
        position.begin_closing(reason)
        price = mark or self.marks.get(position.symbol) or position.entry_price
        trade = Trade(
            client_order_id=cid,
            user_id=position.user_id,
            venue=position.venue,
            symbol=position.symbol,
            trade_type=position.trade_type,
            side=position.exit_side,
            qty=position.qty,
            price=price,
            reduce_only=True,
            leverage=position.leverage,
            whale_id=position.whale_id,
            position_id=position_id,
        )
        order = OrderContext(trade=trade, kind="close", close_reason=reason, created_at=self._clock.now())
        self._books.track(order)
        self._books.persist(position.to_row())
        self._books.persist_intent(self._books.trade_row(order), self._reply_to)
        metrics.incr(f"closes.{reason}")
        log.info(
            "position.closing",
            user_id=position.user_id,
            position_id=position_id,
            reason=reason,
            client_order_id=cid,
            mark=price,
        )
        return {"position_id": position_id, "closing": True, "client_order_id": cid, "reason": reason}

    def close_id_taken(self, order: OrderContext) -> None:
        """A close whose id already has a trade row, and which no order of ours tracks: that attempt ended
        earlier (e.g. filled in part before a restart). Reopen the position; the next trigger tries a new id."""
        self.spend_close_id(order)
        position = self._books.portfolio.positions.get(order.trade.position_id or "")
        if position is None:
            return
        if position.status is PositionStatus.CLOSING:
            position.abort_closing()
            self._books.persist(position.to_row())

    def spend_close_id(self, order: OrderContext) -> None:
        """An engine close attempt ended (filled in part, refused, failed, or never durable): its id is spent.
        The next attempt needs a new one: the venue would answer a spent id with the old order, and a FAILED row
        still on its way to the database would overwrite a new intent under the same id."""
        position_id = order.trade.position_id
        if order.kind == "close" and position_id is not None:
            self.close_attempts[position_id] = self.close_attempts.get(position_id, 0) + 1
