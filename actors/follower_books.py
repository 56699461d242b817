"""A follower's books: its portfolio, the orders it has in flight and the (venue, symbol) pairs they keep busy.
Tracking an order, finishing it (rows written with the events that describe them, events published), writing
rows. One ``FollowerBooks``, composed by ``FollowerActor`` (``actors/follower.py``), which hands it to its other
helpers; everything here runs inside the actor's handlers, on its pool worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from engine.events import DomainEvent
from engine.ledger import OrderContext
from engine.messages import PersistIntent, PersistRows, TradeRow
from engine.portfolio import Portfolio
from engine.positions import Position

_K = TypeVar("_K")


class KeySet(dict[_K, None]):
    """A set kept as a dict's keys: ``add``, ``discard``, ``in``, ``len``, iteration. An empty one is 64 bytes
    where an empty ``set`` is 216, and every follower holds two that are nearly always empty (bench scenario 4)."""

    __slots__ = ()

    def add(self, key: _K) -> None:
        self[key] = None

    def discard(self, key: _K) -> None:
        self.pop(key, None)


class FollowerBooks:
    """The portfolio and the orders in flight of one follower, and the writing and publishing of their changes.

    ``orders``: client order id -> the order; ``busy``: the (venue, symbol) pairs those orders are on;
    ``recovered``: client order ids of PENDING trades loaded at start-up (their intent may or may not have
    reached the venue: reconciliation treats them as UNKNOWN); ``held``: whale exits (``CopySignal``) waiting,
    in arrival order per (venue, symbol), for the orders in flight there to be final (None while there are none:
    most followers never hold one)."""

    __slots__ = ("_persistence", "_publish", "busy", "held", "orders", "portfolio", "recovered")

    def __init__(self, portfolio: Portfolio, *, persistence: Any, publish: Callable[..., None]) -> None:
        """``persistence`` is the persistence actor's ref; ``publish`` the node's ``(event, *, persisted=False)``."""
        self.portfolio = portfolio
        self.orders: dict[str, OrderContext] = {}
        self.busy: KeySet[tuple[str, str]] = KeySet()
        self.recovered: KeySet[str] = KeySet()
        self.held: dict[tuple[str, str], list[Any]] | None = None
        self._persistence = persistence
        self._publish = publish

    def track(self, order: OrderContext) -> None:
        self.orders[order.trade.client_order_id] = order
        self.busy.add((order.trade.venue, order.trade.symbol))

    def untrack(self, order: OrderContext) -> None:
        """Stop tracking an order without writing anything (a duplicate whose trade row is the truth)."""
        self.orders.pop(order.trade.client_order_id, None)
        self.busy.discard((order.trade.venue, order.trade.symbol))

    def hold(self, key: tuple[str, str], message: Any) -> None:
        """Hold a whale exit for ``key`` (venue, symbol) until no order is in flight there (``next_held``)."""
        if self.held is None:
            self.held = {}
        self.held.setdefault(key, []).append(message)

    def holds(self, key: tuple[str, str]) -> bool:
        return self.held is not None and key in self.held

    def next_held(self) -> Any:
        """The oldest held exit on a (venue, symbol) with no order in flight any more, taken off; None if none."""
        held = self.held
        if held is None:
            return None
        for key, queue in held.items():
            if key not in self.busy:
                message = queue.pop(0)
                if not queue:
                    del held[key]
                if not held:
                    self.held = None
                return message
        return None

    def finish(self, order: OrderContext, events: list[DomainEvent], position: Position | None = None) -> None:
        """The order reached a final state: stop tracking it, persist the books, publish the events.

        ``position`` is the one the order touched, looked up before the ledger ran (a closed position has
        left the portfolio by now, and its final row must still be written)."""
        trade = order.trade
        self.orders.pop(trade.client_order_id, None)
        self.busy.discard((trade.venue, trade.symbol))
        self.recovered.discard(trade.client_order_id)
        rows: list[Any] = [self.trade_row(order)]
        position = position or self.portfolio.positions.get(trade.position_id or "")
        if position is not None:
            rows.append(position.to_row())
        rows.extend(self.portfolio.balance_rows())
        rows.extend(event.to_row() for event in events)  # the events with the books they describe: one write
        self.persist(*rows)
        for event in events:
            self._publish(event, persisted=True)

    def publish(self, event: DomainEvent) -> None:
        """Domain events go to the system's subscribers: the persistence one writes ``domain_events``."""
        self._publish(event)

    def trade_row(self, order: OrderContext) -> TradeRow:
        return order.trade.to_row(reserved_usdt=order.reserved_usdt)

    def persist(self, *rows: Any) -> None:
        self._persistence.tell(PersistRows(rows=rows))

    def persist_intent(self, row: TradeRow, reply_to: Any) -> None:
        """Make an order's intent durable; the persistence actor answers ``reply_to`` with an ``IntentAck``."""
        self._persistence.tell(PersistIntent(row=row, reply_to=reply_to))
