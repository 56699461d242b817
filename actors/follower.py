"""FollowerActor: one per user, on the pooled runtime. Owns the user's balances, positions and limits.

For a signal it sizes the copy and applies every limit (``engine.sizing.decide``): a skip with a named reason,
or an intent. It reserves funds, asks the persistence actor to make the intent durable (group-commit lane), and
only then sends the order to the exchange actor. Outcomes update positions and balances (``engine.ledger``).
Prices from the feed drive mark-to-market, stop-loss / take-profit and liquidation.

This module holds the copy flow (signal, intent, order, outcome) and routes the rest to what the actor composes:
``FollowerBooks`` (``actors/follower_books.py``: the portfolio, the orders in flight, their rows and events),
``PriceProtection`` (``actors/follower_protection.py``: marks, triggers, liquidation, engine closes) and
``StartupRecovery`` (``actors/follower_recovery.py``: the books rebuilt at start, orders of unknown outcome
reconciled). The helpers get what they use through their constructors and never read the actor.

Handlers never block: the persistence actor answers ``IntentAck``, the exchange actor ``OrderOutcome``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from actors import follower_answers as answers
from actors.follower_books import FollowerBooks
from actors.follower_protection import PriceProtection
from actors.follower_recovery import StartupRecovery
from engine import metrics
from engine.control import CopyHeld, ReconcileNow, SetPaused, TakeSnapshot, UpdateSettings
from engine.events import FollowerSkipped, TradeNeedsReconciliation
from engine.follower_state import FollowerContext, FollowerState
from engine.ledger import OrderContext, settle_entry, settle_exit, undo_order
from engine.logs import get_logger
from engine.messages import (
    CopySignal,
    FollowerDecision,
    IntentAck,
    OrderOutcome,
    PlaceOrder,
    PriceUpdate,
    Signal,
    SkipReason,
    TradeRow,
    TradeStatus,
    TradeType,
    VenuePositions,
)
from engine.portfolio import Portfolio
from engine.runtime import PooledActor
from engine.signals import EXIT_ACTIONS
from engine.sizing import EntryPlan, ExitPlan, Skip, decide
from engine.trades import Trade

log = get_logger(__name__)

__all__ = ["FollowerActor"]


class FollowerActor(PooledActor):
    """See the module docstring. Constructed from its persisted ``FollowerState``."""

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
        self._recovery().restore(state, ctx.markets, now)

    def _recovery(self) -> StartupRecovery:
        # Built when used (here, at start, on ReconcileNow), not kept: it holds nothing of its own, and a kept
        # one would cost every idle follower ~70 bytes (bench scenario 4).
        return StartupRecovery(self._books, self._user_id, exchanges=self._ctx.exchanges, reply_to=self.actor_ref)

    def _apply_state_settings(self, state: FollowerState) -> None:
        self._user = state.user
        self._follows = {f.whale_id: f for f in state.follows}

    def on_start(self) -> None:
        if self._books.orders:
            # Start-up recovery: ask the venue about every order left open by the last run.
            self._recovery().reconcile()

    def on_receive(self, message: Any) -> Any:
        self._current = message
        if isinstance(message, CopySignal):
            self._on_signal(message)
        elif isinstance(message, IntentAck):
            self._on_intent_ack(message)
        elif isinstance(message, OrderOutcome):
            self._on_outcome(message)
        elif isinstance(message, PriceUpdate):
            self._on_prices(message)
        elif isinstance(message, VenuePositions):
            self._protection.on_venue_positions(message)
        elif isinstance(message, ReconcileNow):
            self._recovery().reconcile()
        elif isinstance(message, UpdateSettings):
            self._apply_state_settings(message.state)
        elif isinstance(message, SetPaused):
            self._paused_override = message.paused
        elif isinstance(message, TakeSnapshot):
            self.snapshot()
        else:
            log.warning("follower.unknown_message", user_id=self._user_id, message_type=type(message).__name__)
        if self._books.held is not None:
            self._release_held()
        self._current = None

    def _on_prices(self, update: PriceUpdate) -> None:
        # One method per message, so a test can break this one handler on one instance (test_bad_signals).
        self._protection.on_prices(update)

    # ---- ask-able (admin, tests) -------------------------------------------------------------------------

    def dry_run(self, signal: Signal, mark: Decimal | None, *, draining: bool = False) -> dict[str, Any]:
        """What this follower would do with ``signal``; changes nothing. ``draining``: the router's answer (the
        admin asks it), so a dry run while draining says why nothing would be copied."""
        decision = self._decide(signal, mark, draining=draining)
        busy = isinstance(decision, Skip) and decision.reason is SkipReason.POSITION_BUSY
        key = (self._user.preferred_exchange, signal.symbol)
        if busy and signal.action in EXIT_ACTIONS and key in self._books.busy:  # held until that order is final
            return {"user_id": self._user_id, "action": "hold", "reason": "order in flight on the symbol"}
        if isinstance(decision, Skip):
            return {"user_id": self._user_id, "action": "skip", "reason": decision.reason, "detail": decision.detail}
        return {
            "user_id": self._user_id,
            "action": "exit" if isinstance(decision, ExitPlan) else "entry",
            "client_order_id": decision.client_order_id,
            "side": decision.side,
            "qty": decision.qty,
            "price": decision.price,
            "notional_usdt": decision.notional_usdt,
            "leverage": decision.leverage,
        }

    # ---- signals -----------------------------------------------------------------------------------------

    def _decide(
        self, signal: Signal, mark: Decimal | None, now: datetime | None = None, *, draining: bool = False
    ) -> Skip | EntryPlan | ExitPlan:
        venue = self._user.preferred_exchange
        if now is None:
            now = self._ctx.clock.now()
        follow = self._follows.get(signal.whale_id)
        held = self._books.portfolio.position_on(venue, signal.symbol)
        orders = self._books.orders
        account = self._books.portfolio.account_view(
            venue=venue,
            symbol=signal.symbol,
            now=now,
            busy=(venue, signal.symbol) in self._books.busy,
            opening=sum(1 for o in orders.values() if o.kind == "open") if orders else 0,
            in_flight=len(orders),
            draining=draining,
            venue_available=self._ctx.venue_available(venue),
        )
        user = self._user
        if self._paused_override is not None:
            user = msgspec.structs.replace(user, paused=self._paused_override)
        market = self._ctx.markets.get(venue, {}).get(signal.symbol)
        if mark is None and held is not None:
            mark = self._protection.marks.get(signal.symbol)
        return decide(signal, user=user, follow=follow, market=market, mark=mark, now=now, account=account)

    def _on_signal(self, message: CopySignal, *, released: bool = False) -> None:
        signal = message.signal
        now = self._ctx.clock.now()  # one reading per signal: the decision's and the order's creation time
        decision = self._decide(signal, message.mark_price, now)
        if signal.action in EXIT_ACTIONS and self._must_hold(message, decision, released):
            return
        if isinstance(decision, Skip):
            self._skip(signal, decision.reason, decision.detail, now)
            return
        venue = self._user.preferred_exchange
        trade = Trade.for_plan(decision, signal=signal, user_id=self._user_id, venue=venue)
        if trade.client_order_id in self._books.orders:
            # This copy's order is still being resolved (the signal was routed again after a restart): the
            # router counts it when it is final (``tell_outcome``).
            self._answer_router(self._books.orders[trade.client_order_id], "copied", "in_flight")
            return
        reserved = Decimal(0)
        if isinstance(decision, EntryPlan):
            reserved = decision.reserve_usdt
            if not self._books.portfolio.reserve(venue, reserved):
                self._skip(signal, SkipReason.INSUFFICIENT_BALANCE, f"cannot reserve {reserved}", now)
                return
            kind = "increase" if decision.is_increase else "open"
        else:
            kind = "exit"
        order = OrderContext(
            trade=trade,
            kind=kind,
            reserved_usdt=reserved,
            received_at_ns=message.received_at_ns,
            created_at=now,
        )
        self._books.track(order)
        # The row carries the reservation: after a crash it is what start-up recovery releases or settles.
        order.intent_row = self._books.trade_row(order)
        self._books.persist_intent(order.intent_row, self.actor_ref)

    def _must_hold(self, message: CopySignal, decision: Skip | EntryPlan | ExitPlan, released: bool) -> bool:
        """A whale exit while an order on its symbol is in flight (the entry it closes, most often) waits for that
        order's outcome, then is decided against what filled (``_release_held``); exits held on a symbol go in
        arrival order. Held only while the symbol is busy: a position CLOSING with nothing in flight is skipped."""
        signal = message.signal
        key = (self._user.preferred_exchange, signal.symbol)
        busy = isinstance(decision, Skip) and decision.reason is SkipReason.POSITION_BUSY and key in self._books.busy
        if not busy and (released or not self._books.holds(key)):
            return False
        # The mark of the fan-out is old by the time it is decided: the follower's own marks are newer.
        self._books.hold(key, msgspec.structs.replace(message, mark_price=None))
        log.info(
            "copy.held", signal_id=signal.signal_id, user_id=self._user_id, symbol=signal.symbol, action=signal.action
        )
        self._ctx.router.tell(CopyHeld(signal_id=signal.signal_id, user_id=self._user_id))
        return True

    def _release_held(self) -> None:
        """Decide the held exits whose symbol has no order in flight any more, oldest first; one that sends an
        order makes its symbol busy again, so the next exit there waits for that order in turn."""
        while (message := self._books.next_held()) is not None:
            self._on_signal(message, released=True)

    def _skip(self, signal: Signal, reason: SkipReason, detail: str, now: datetime | None = None) -> None:
        metrics.incr(f"skips.{reason.value}")
        log.info(
            "copy.skipped",
            signal_id=signal.signal_id,
            user_id=self._user_id,
            whale_id=signal.whale_id,
            reason=reason.value,
            detail=detail,
        )
        self._books.publish(
            FollowerSkipped(
                occurred_at=now if now is not None else self._ctx.clock.now(),
                user_id=self._user_id,
                signal_id=signal.signal_id,
                reason=reason.value,
                detail=detail,
            )
        )
        self._ctx.router.tell(
            FollowerDecision(signal_id=signal.signal_id, user_id=self._user_id, outcome="skipped", reason=reason.value)
        )

    # ---- intents and orders ------------------------------------------------------------------------------

    def _on_intent_ack(self, ack: IntentAck) -> None:
        order = self._books.orders.get(ack.client_order_id)
        if order is None or order.trade.status is not TradeStatus.PENDING:
            return
        trade = order.trade
        if ack.duplicate:
            # The same order (same client order id) was decided before, e.g. the signal was routed again after a
            # restart: its trade row is the truth. Drop this copy without writing over that row.
            self._books.untrack(order)
            if order.reserved_usdt > 0:
                self._books.portfolio.release(trade.venue, order.reserved_usdt)
            if order.kind == "close":
                self._protection.close_id_taken(order)
            metrics.incr("copies.duplicate")
            cid, status = trade.client_order_id, ack.existing_status
            log.info("copy.duplicate", user_id=self._user_id, client_order_id=cid, status=status)
            answers.answer_duplicate(self._ctx.router, self._user_id, order, status)
            return
        if not ack.durable:
            # No durable intent, no order: this is the rule that keeps the books and the venue in agreement.
            trade.transition(TradeStatus.FAILED, error=f"intent not durable: {ack.error}")
            self._protection.spend_close_id(order)
            metrics.incr("copies.failed")
            log.warning(
                "copy.not_durable", user_id=self._user_id, client_order_id=trade.client_order_id, error=ack.error
            )
            self._books.finish(order, undo_order(self._books.portfolio, order, now=self._ctx.clock.now()))
            self._answer_router(order, "failed", "not_durable")
            return
        self._send(order)
        failed = order.trade.is_final  # as it was sent (no exchange actor for its venue); else its outcome follows
        self._answer_router(order, "failed" if failed else "copied", order.trade.status.value if failed else None)

    def _send(self, order: OrderContext) -> None:
        trade = order.trade
        exchange = self._ctx.exchanges.get(trade.venue)
        if exchange is None:
            trade.transition(TradeStatus.FAILED, error=f"no exchange actor for venue {trade.venue}")
            self._books.finish(order, undo_order(self._books.portfolio, order, now=self._ctx.clock.now()))
            return
        trade.transition(TradeStatus.SUBMITTED)
        exchange.tell(PlaceOrder(request=trade.to_order_request(), reply_to=self.actor_ref))
        metrics.incr("orders.sent")
        if order.received_at_ns:
            metrics.observe("signal_to_order_ms", (self._ctx.clock.monotonic_ns() - order.received_at_ns) / 1e6)
        self._books.persist(self._submitted_row(order))

    def _submitted_row(self, order: OrderContext) -> TradeRow:
        # PENDING -> SUBMITTED changes only status and version: reuse the intent row when that is all that moved.
        intent, trade = order.intent_row, order.trade
        order.intent_row = None
        if intent is None or intent.version + 1 != trade.version:
            return self._books.trade_row(order)
        return msgspec.structs.replace(intent, status=trade.status, version=trade.version)

    def _answer_router(self, order: OrderContext, outcome: str, reason: str | None) -> None:
        answers.answer(self._ctx.router, self._user_id, order, outcome, reason)  # its outcome: ``tell_outcome``

    def _on_outcome(self, outcome: OrderOutcome) -> None:
        order = self._books.orders.get(outcome.client_order_id)
        if order is None:
            return  # an answer for an order already settled (duplicate resolution): nothing to do
        trade = order.trade
        now = self._ctx.clock.now()
        if outcome.status is TradeStatus.FAILED and outcome.error == "not_found" and not self._grace_over(order, now):
            # The venue may not have it *yet*; keep it unknown and ask again at the next reconciliation.
            self._ctx.needs_reconcile(self._user_id)
            return
        try:
            changed = trade.apply_outcome(outcome)
        except ValueError as exc:  # IllegalTransition is a ValueError subclass too
            log.error(
                "order.bad_outcome",
                user_id=self._user_id,
                client_order_id=trade.client_order_id,
                status=outcome.status,
                error=str(exc),
            )
            return
        if not changed and trade.status not in (TradeStatus.UNKNOWN, TradeStatus.SUBMITTED):
            return
        status = trade.status
        position = self._books.portfolio.positions.get(trade.position_id or "")
        if trade.is_final:
            self._protection.spend_close_id(order)
            answers.tell_outcome(self._ctx.router, self._user_id, order)
        if status in (TradeStatus.FILLED, TradeStatus.PARTIALLY_FILLED):
            metrics.incr("orders.filled")
            if order.kind in ("open", "increase"):
                market = self._ctx.markets.get(trade.venue, {}).get(trade.symbol)
                follow = self._follows.get(trade.whale_id or -1)
                events = settle_entry(self._books.portfolio, order, market=market, follow=follow, now=now)
            else:
                market = self._ctx.markets.get(trade.venue, {}).get(trade.symbol)
                events = settle_exit(self._books.portfolio, order, now=now, market=market)
            self._books.finish(order, events, position)
        elif status in (TradeStatus.REJECTED, TradeStatus.FAILED, TradeStatus.CANCELLED):
            metrics.incr("orders.rejected" if status is TradeStatus.REJECTED else "orders.failed")
            self._books.finish(order, undo_order(self._books.portfolio, order, now=now), position)
            if (
                status is TradeStatus.REJECTED
                and order.kind == "close"
                and position is not None
                and position.trade_type is TradeType.FUTURES
                and position.is_active
            ):
                # A refused reduce-only close often means the venue holds nothing to reduce: ask before the
                # next tick tries again with a new id (and again, and again).
                self._protection.ask_venue(trade.venue, [position], 0.0, reason="close_rejected")
        elif status is TradeStatus.UNKNOWN and changed:
            metrics.incr("orders.unknown")
            self._books.publish(
                TradeNeedsReconciliation(
                    occurred_at=now,
                    user_id=self._user_id,
                    signal_id=trade.signal_id,
                    client_order_id=trade.client_order_id,
                    error=outcome.error,
                )
            )
            self._books.persist(self._books.trade_row(order))
            self._ctx.needs_reconcile(self._user_id)
        elif status is TradeStatus.UNKNOWN:
            # Resolution answered "not yet" (not found within the grace, look-up failed, resting on the book):
            # still unknown, so it must be asked about again; reconcile() clears the set it was taken from.
            self._ctx.needs_reconcile(self._user_id)

    def _grace_over(self, order: OrderContext, now: datetime) -> bool:
        created = order.created_at or now
        return (now - created).total_seconds() >= self._ctx.unknown_grace_s

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
            "held_exits": [m.signal.signal_id for queue in (self._books.held or {}).values() for m in queue],
            "trades_today": self._books.portfolio.trades_today,
            "realized_pnl_today_usdt": self._books.portfolio.realized_today_usdt,
        }

    def snapshot(self) -> Any:
        """Persist and return a portfolio snapshot at the current marks."""
        row = self._books.portfolio.snapshot(self._ctx.clock.now(), self._protection.marks)
        self._books.persist(row)
        return row

    # ---- admin closes (same path as SL/TP: ``PriceProtection.start_close``) ---------------------------------

    def close_position(self, position_id: str, reason: str = "manual") -> dict[str, Any]:
        """Close ``position_id`` (admin ``close``); a position already closing is a no-op with a clear reply."""
        return self._protection.start_close(position_id, reason)

    def close_all(self) -> list[dict[str, Any]]:
        """Close every open position (admin ``close-all``)."""
        return [self._protection.start_close(pid, "manual") for pid in list(self._books.portfolio.positions)]


def _plain(row: Any) -> Any:
    """A row as builtins, Decimals kept (the admin encoder prints them in fixed point)."""
    return msgspec.to_builtins(row, builtin_types=(Decimal,))
