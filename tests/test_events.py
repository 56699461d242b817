"""Domain events: deterministic ids, rows, tagged decoding, the bus."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import msgspec

from engine.events import (
    DomainEvent,
    EventBus,
    FollowerSkipped,
    PositionClosed,
    PositionIncreased,
    SignalFailed,
    SignalProcessed,
    TradeExecuted,
)
from engine.messages import Side, TradeStatus
from tests.kit import LogEntries

NOW = datetime(2025, 1, 2, tzinfo=UTC)


def executed() -> TradeExecuted:
    return TradeExecuted(
        occurred_at=NOW,
        user_id=7,
        signal_id=1,
        client_order_id="c1",
        symbol="BTC/USDT:USDT",
        side=Side.BUY,
        status=TradeStatus.FILLED,
        qty=D("0.02"),
        price=D(50_000),
    )


def test_event_ids_are_natural_keys() -> None:
    assert executed().event_id == "trade_executed:c1"
    assert executed().event_id == executed().event_id
    inc = PositionIncreased(
        occurred_at=NOW,
        position_id="p1",
        client_order_id="c2",
        qty_added=D(1),
        price=D(1),
        qty=D(2),
        entry_price=D(1),
    )
    assert inc.event_id == "position_increased:p1:c2"
    closed = PositionClosed(occurred_at=NOW, position_id="p1", price=D(1), reason="stop_loss", realized_pnl_usdt=D(-3))
    assert closed.event_id == "position_closed:p1"
    skipped = FollowerSkipped(occurred_at=NOW, signal_id=1, user_id=7, reason="paused")
    assert skipped.event_id == "follower_skipped:1:7"
    assert SignalFailed(occurred_at=NOW, signal_ref="ext-9", reason="stale").event_id == "signal_failed:ext-9"
    assert SignalProcessed(occurred_at=NOW, signal_id=1).event_type == "signal_processed"


def test_row_and_roundtrip() -> None:
    event = executed()
    row = event.to_row()
    assert row.event_id == "trade_executed:c1" and row.event_type == "trade_executed"
    assert row.user_id == 7 and row.signal_id == 1 and row.occurred_at == NOW
    payload = msgspec.json.decode(msgspec.json.encode(row.payload))  # what the writer stores
    assert payload["price"] == "50000" and payload["event_type"] == "trade_executed"
    assert msgspec.convert(payload, DomainEvent) == event
    assert msgspec.json.decode(msgspec.json.encode(event), type=DomainEvent) == event


def test_bus_isolates_failures_and_filters(captured_logs: LogEntries) -> None:
    bus = EventBus()
    seen: list[str] = []

    def failing(_: DomainEvent) -> None:
        raise RuntimeError("boom")

    bus.subscribe(failing)
    unsubscribe = bus.subscribe(lambda e: seen.append(e.event_id))
    bus.subscribe(lambda e: seen.append("only-skips"), event_types=(FollowerSkipped,))
    bus.publish(executed())
    assert seen == ["trade_executed:c1"]
    (failed,) = [e for e in captured_logs if e["event"] == "events.subscriber_failed"]
    assert failed["event_type"] == "trade_executed" and "boom" in failed["error"]
    unsubscribe()
    unsubscribe()  # idempotent
    bus.publish(FollowerSkipped(occurred_at=NOW, signal_id=1, user_id=7, reason="paused"))
    assert seen == ["trade_executed:c1", "only-skips"]


def test_bus_writes_each_row_unless_the_publisher_already_did() -> None:
    """The row goes to the writer before any subscriber hears of the event; ``persisted=True``: the publisher
    sent it with its own rows, so it is not written twice."""
    order: list[str] = []
    bus = EventBus(write=lambda row: order.append(f"row {row.event_id}"))
    bus.subscribe(lambda e: order.append(f"told {e.event_id}"))
    bus.publish(executed())
    bus.publish(executed(), persisted=True)
    assert order == ["row trade_executed:c1", "told trade_executed:c1", "told trade_executed:c1"]
