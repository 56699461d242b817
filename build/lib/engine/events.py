"""Domain events: immutable facts, stored in ``domain_events`` and published in-process.

Every event is a frozen msgspec Struct tagged by its ``event_type`` (so a list of them decodes as a tagged
union), with a DETERMINISTIC ``event_id`` built from its natural key: replaying the same fact (a restart, a
duplicate outcome) yields the same id and the idempotent insert drops it.

Natural keys (what makes a fact happen at most once):

* trades: the client order id (a trade executes, fails or goes unknown once);
* position opened / closed / liquidated: the position id; increased / reduced: position id + the client
  order id of the fill that caused it;
* signals: the signal id; ``SignalFailed`` uses ``signal_ref`` because a signal that failed to parse may
  have no id (pass the id, else the external id, else a digest of the raw message);
* ``FollowerSkipped``: signal id + user id (one decision per follower per signal). Aggregates per signal
  live in ``SignalProcessed.skip_reasons``.

``EventBus`` is an in-process, I/O-free pub/sub: ``publish`` returns the subscribers' exceptions instead of
logging them, so the caller (an actor) logs them with its own context.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import ClassVar

import msgspec

from engine.messages import DomainEventRow, PositionSide, Side, TradeStatus

__all__ = [
    "DomainEvent",
    "EventBus",
    "FollowerSkipped",
    "PositionClosed",
    "PositionIncreased",
    "PositionLiquidated",
    "PositionOpened",
    "PositionReduced",
    "SignalExpired",
    "SignalFailed",
    "SignalProcessed",
    "TradeExecuted",
    "TradeFailed",
    "TradeNeedsReconciliation",
]


_TAGS: dict[type, str] = {}  # event class -> its tag (see ``_Event.event_type``)


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="event_type", gc=False):
    """Common shape. Subclasses set ``_key_fields``: the natural key that ``event_id`` is built from."""

    _key_fields: ClassVar[tuple[str, ...]] = ()
    occurred_at: datetime
    user_id: int | None = None
    signal_id: int | None = None

    @property
    def event_type(self) -> str:
        """The tag, e.g. ``trade_executed``."""
        # Cached per class: ``__struct_config__`` builds a new config object on every access (measured 2-3 µs,
        # paid several times per skipped follower in a fan-out).
        cls = type(self)
        tag = _TAGS.get(cls)
        if tag is None:
            tag = _TAGS[cls] = str(self.__struct_config__.tag)
        return tag

    @property
    def event_id(self) -> str:
        """``{event_type}:{key1}:{key2}...``: the same fact always gives the same id."""
        return ":".join([self.event_type, *[str(getattr(self, f)) for f in self._key_fields]])

    def to_row(self) -> DomainEventRow:
        """The row for the batched lane; the payload is the event itself (frozen), which the writer encodes
        to the same JSON object ``msgspec.to_builtins`` would give, without building that dict per event."""
        event_type = self.event_type
        return DomainEventRow(
            event_id=":".join([event_type, *[str(getattr(self, f)) for f in self._key_fields]]),
            event_type=event_type,
            payload=self,
            user_id=self.user_id,
            signal_id=self.signal_id,
            occurred_at=self.occurred_at,
        )


class TradeExecuted(_Event, frozen=True, kw_only=True, tag="trade_executed"):
    """An order filled, fully or partially (``status``)."""

    _key_fields: ClassVar[tuple[str, ...]] = ("client_order_id",)
    client_order_id: str
    symbol: str
    side: Side
    status: TradeStatus
    qty: Decimal
    price: Decimal
    fee_usdt: Decimal = Decimal(0)
    position_id: str | None = None


class TradeFailed(_Event, frozen=True, kw_only=True, tag="trade_failed"):
    """An order was rejected by the venue, failed before it, or was cancelled with nothing filled."""

    _key_fields: ClassVar[tuple[str, ...]] = ("client_order_id",)
    client_order_id: str
    status: TradeStatus
    error: str | None = None


class TradeNeedsReconciliation(_Event, frozen=True, kw_only=True, tag="trade_needs_reconciliation"):
    """An order's outcome is UNKNOWN: it will be resolved by its client order id."""

    _key_fields: ClassVar[tuple[str, ...]] = ("client_order_id",)
    client_order_id: str
    error: str | None = None


class PositionOpened(_Event, frozen=True, kw_only=True, tag="position_opened"):
    _key_fields: ClassVar[tuple[str, ...]] = ("position_id",)
    position_id: str
    symbol: str
    side: PositionSide
    qty: Decimal
    entry_price: Decimal
    leverage: int
    margin_usdt: Decimal
    whale_id: int | None = None


class PositionIncreased(_Event, frozen=True, kw_only=True, tag="position_increased"):
    _key_fields: ClassVar[tuple[str, ...]] = ("position_id", "client_order_id")
    position_id: str
    client_order_id: str
    qty_added: Decimal
    price: Decimal
    qty: Decimal
    entry_price: Decimal


class PositionReduced(_Event, frozen=True, kw_only=True, tag="position_reduced"):
    _key_fields: ClassVar[tuple[str, ...]] = ("position_id", "client_order_id")
    position_id: str
    client_order_id: str
    qty_removed: Decimal
    price: Decimal
    qty: Decimal
    realized_pnl_usdt: Decimal


class PositionClosed(_Event, frozen=True, kw_only=True, tag="position_closed"):
    _key_fields: ClassVar[tuple[str, ...]] = ("position_id",)
    position_id: str
    price: Decimal
    reason: str  # signal, stop_loss, take_profit, manual
    realized_pnl_usdt: Decimal  # the position's total, all fees included


class PositionLiquidated(_Event, frozen=True, kw_only=True, tag="position_liquidated"):
    _key_fields: ClassVar[tuple[str, ...]] = ("position_id",)
    position_id: str
    mark_price: Decimal
    liquidation_price: Decimal | None
    realized_pnl_usdt: Decimal


class SignalProcessed(_Event, frozen=True, kw_only=True, tag="signal_processed"):
    """Every follower decided on the signal; counts and skip reasons aggregated."""

    _key_fields: ClassVar[tuple[str, ...]] = ("signal_id",)
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    skip_reasons: dict[str, int] = {}


class SignalExpired(_Event, frozen=True, kw_only=True, tag="signal_expired"):
    _key_fields: ClassVar[tuple[str, ...]] = ("signal_id",)
    detail: str = ""


class SignalFailed(_Event, frozen=True, kw_only=True, tag="signal_failed"):
    """A signal was rejected (parse/validation or router checks); ``reason`` from ``engine.signals``."""

    _key_fields: ClassVar[tuple[str, ...]] = ("signal_ref",)
    signal_ref: str
    reason: str
    detail: str = ""


class FollowerSkipped(_Event, frozen=True, kw_only=True, tag="follower_skipped"):
    """One follower did not copy one signal (``reason`` is a ``SkipReason`` value)."""

    _key_fields: ClassVar[tuple[str, ...]] = ("signal_id", "user_id")
    reason: str
    detail: str = ""


DomainEvent = (
    TradeExecuted
    | TradeFailed
    | TradeNeedsReconciliation
    | PositionOpened
    | PositionIncreased
    | PositionReduced
    | PositionClosed
    | PositionLiquidated
    | SignalProcessed
    | SignalExpired
    | SignalFailed
    | FollowerSkipped
)
"""Every domain event; ``msgspec.convert(payload, DomainEvent)`` decodes one by its tag."""

Subscriber = Callable[[DomainEvent], None]


class EventBus:
    """In-process pub/sub for domain events. I/O-free and not thread-safe: owned by one actor."""

    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        """An empty bus."""
        self._subscribers: list[tuple[Subscriber, tuple[type, ...] | None]] = []

    def subscribe(self, subscriber: Subscriber, *, event_types: tuple[type, ...] | None = None) -> Callable[[], None]:
        """Call ``subscriber`` for every event (or only those of ``event_types``); returns an unsubscribe."""
        entry = (subscriber, event_types)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

        return unsubscribe

    def publish(self, event: DomainEvent) -> list[Exception]:
        """Deliver ``event`` to every subscriber in subscription order; one failing does not stop the others.

        Returns the exceptions raised by subscribers (empty when all succeeded) for the caller to log.
        """
        errors: list[Exception] = []
        for subscriber, types in tuple(self._subscribers):
            if types is not None and not isinstance(event, types):
                continue
            try:
                subscriber(event)
            except Exception as exc:  # noqa: BLE001 - isolation is the point: the caller logs what we return
                errors.append(exc)
        return errors
