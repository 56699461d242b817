"""What a follower tells the router about a signal's copy (``actors/router_copies.py`` counts it): one answer
(``FollowerDecision``: skipped, failed, or ``copied`` = its order went out) and, for a copy whose order went out,
its final outcome when the order is final (``CopyOutcome``). Only signal-driven legs (open, increase, exit)
answer; engine closes have no signal. Functions, not an object: a follower keeps nothing for this."""

from __future__ import annotations

from typing import Any

from engine.control import CopyOutcome
from engine.ledger import OrderContext
from engine.messages import FollowerDecision, TradeStatus

__all__ = ["answer", "answer_duplicate", "tell_outcome"]

_FILLED = frozenset({TradeStatus.FILLED.value, TradeStatus.PARTIALLY_FILLED.value})  # a copy that copied
_FAILED = frozenset({TradeStatus.REJECTED.value, TradeStatus.FAILED.value, TradeStatus.CANCELLED.value})
_SIGNAL_LEGS = ("open", "increase", "exit")


def answer(router: Any, user_id: int, order: OrderContext, outcome: str, reason: str | None) -> None:
    signal_id = order.trade.signal_id
    if signal_id is not None and order.kind in _SIGNAL_LEGS:
        router.tell(FollowerDecision(signal_id=signal_id, user_id=user_id, outcome=outcome, reason=reason))


def tell_outcome(router: Any, user_id: int, order: OrderContext, status: TradeStatus | None = None) -> None:
    """The copy's final outcome: its order's final ``status`` (FILLED / PARTIALLY_FILLED: ``filled``; REJECTED /
    FAILED / CANCELLED: ``failed`` with the status as the reason)."""
    trade, status = order.trade, status or order.trade.status
    if trade.signal_id is not None and order.kind in _SIGNAL_LEGS:
        filled = status.value in _FILLED
        reason = None if filled else status.value
        outcome = "filled" if filled else "failed"
        router.tell(CopyOutcome(signal_id=trade.signal_id, user_id=user_id, outcome=outcome, reason=reason))


def answer_duplicate(router: Any, user_id: int, order: OrderContext, status: str | None) -> None:
    """A copy an earlier run decided (its intent existed) answers with that trade row's status as read: a final
    one is its outcome; one not final there is this run's recovery's to resolve (its outcome follows from there),
    else, a row written final after the read, it ends as ``outcome_unknown`` at the stale sweep."""
    answer(router, user_id, order, "failed" if status in _FAILED else "copied", status or "already_copied")
    if status in _FILLED:
        tell_outcome(router, user_id, order, TradeStatus(status))
