"""Trade state machine: legal moves only, final states final, versions, rows."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.messages import OrderOutcome, Side, TradeStatus, TradeType
from engine.trades import FINAL_STATUSES, TRANSITIONS, IllegalTransition, Trade

S = TradeStatus


def trade() -> Trade:
    return Trade(
        client_order_id="c0000000000001u2e",
        user_id=2,
        venue="paper",
        symbol="BTC/USDT:USDT",
        trade_type=TradeType.FUTURES,
        side=Side.BUY,
        qty=D("0.02"),
        price=D(50_000),
        signal_id=1,
        whale_id=3,
    )


def fill_kwargs(target: TradeStatus) -> dict[str, Any]:
    if target in (S.FILLED, S.PARTIALLY_FILLED):
        return {"filled_qty": D("0.01"), "avg_price": D(50_010)}
    return {}


def test_happy_path() -> None:
    t = trade()
    assert t.status is S.PENDING and t.version == 1
    assert t.transition(S.SUBMITTED)
    assert t.apply_outcome(
        OrderOutcome(
            client_order_id=t.client_order_id,
            status=S.FILLED,
            exchange_order_id="9",
            filled_qty=D("0.02"),
            avg_price=D(50_001),
            fee_usdt=D("0.5"),
        )
    )
    row = t.to_row()
    assert row.status is S.FILLED and row.version == 3 and row.executed_qty == D("0.02")
    assert row.exchange_order_id == "9" and row.fee_usdt == D("0.5")
    assert Trade.from_row(row).to_row() == row
    assert t.is_final


def test_unknown_then_resolved() -> None:
    t = trade()
    t.transition(S.SUBMITTED)
    t.transition(S.UNKNOWN, error="timeout")
    # Resting on the book: still unresolved, stays UNKNOWN.
    assert not t.apply_outcome(OrderOutcome(client_order_id=t.client_order_id, status=S.SUBMITTED))
    assert t.transition(S.FAILED, error="not_found")
    assert t.status is S.FAILED and t.error == "not_found"


def test_pending_can_fail_but_not_fill() -> None:
    t = trade()
    with pytest.raises(IllegalTransition):
        t.transition(S.FILLED, filled_qty=D(1), avg_price=D(1))
    assert t.transition(S.FAILED)


def test_same_status_is_a_noop() -> None:
    t = trade()
    t.transition(S.SUBMITTED)
    assert not t.transition(S.SUBMITTED)
    assert t.version == 2


def test_fill_needs_numbers() -> None:
    t = trade()
    t.transition(S.SUBMITTED)
    with pytest.raises(ValueError):
        t.transition(S.FILLED)
    with pytest.raises(ValueError):
        t.transition(S.FILLED, filled_qty=D(1), avg_price=D(1))  # more than ordered
    assert t.status is S.SUBMITTED and t.version == 2


def test_spot_buy_may_fill_more_base_than_ordered() -> None:
    """A spot market buy sized in the quote coin (Bitget) spends qty x hint: at a lower price it fills more
    base. The trade books what the venue filled; any other order filled beyond its qty is refused."""
    spot_buy = msgspec.structs.replace(trade().to_row(), symbol="BTC/USDT", trade_type=TradeType.SPOT)
    t = Trade.from_row(spot_buy)
    t.transition(S.SUBMITTED)
    assert t.transition(S.FILLED, filled_qty=D("0.02004"), avg_price=D(49_900))  # 1,000 USDT at 49,900
    assert t.executed_qty == D("0.02004")
    for side in (Side.SELL, Side.BUY):
        kind = TradeType.SPOT if side is Side.SELL else TradeType.FUTURES
        other = Trade.from_row(msgspec.structs.replace(trade().to_row(), side=side, trade_type=kind))
        other.transition(S.SUBMITTED)
        with pytest.raises(ValueError, match=r"filled 0\.02004 > ordered 0\.02"):
            other.transition(S.FILLED, filled_qty=D("0.02004"), avg_price=D(49_900))


def test_final_states_have_no_exit() -> None:
    assert FINAL_STATUSES == {S.FILLED, S.PARTIALLY_FILLED, S.REJECTED, S.FAILED, S.CANCELLED}
    for final in FINAL_STATUSES:
        t = trade()
        t.transition(S.SUBMITTED)
        t.transition(final, **fill_kwargs(final))
        for target in S:
            if target is not final:
                with pytest.raises(IllegalTransition):
                    t.transition(target, **fill_kwargs(target))


def test_order_request() -> None:
    req = trade().to_order_request()
    assert req.client_order_id == "c0000000000001u2e" and req.price_hint == D(50_000) and not req.reduce_only


@given(st.lists(st.sampled_from(list(S)), max_size=20))
def test_random_sequences_never_make_an_illegal_move(targets: list[TradeStatus]) -> None:
    t = trade()
    for target in targets:
        before, version = t.status, t.version
        try:
            moved = t.transition(target, **fill_kwargs(target))
        except IllegalTransition:
            assert target not in TRANSITIONS[before]
            assert (t.status, t.version) == (before, version)
            continue
        if moved:
            assert target in TRANSITIONS[before] and t.version == version + 1
        else:
            assert target is before and t.version == version
