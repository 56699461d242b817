"""Lot and tick rounding, minimums."""

from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.messages import MarketInfo, SkipReason, TradeType
from engine.precision import check_minimums, money_up, round_price, round_qty_down

STEPS = [D("0.001"), D(1), D("0.5"), D(10), D("0.00001"), D("0.25")]


def market(**kw: object) -> MarketInfo:
    base: dict[str, object] = dict(
        symbol="BTC/USDT:USDT",
        trade_type=TradeType.FUTURES,
        base="BTC",
        quote="USDT",
        qty_step=D("0.001"),
        price_tick=D("0.1"),
        min_qty=D("0.001"),
        min_notional=D(5),
        max_leverage=125,
    )
    base.update(kw)
    return MarketInfo(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("qty", "step", "expected"),
    [
        (D("1.23456"), D("0.001"), D("1.234")),
        (D("1.9999"), D(1), D(1)),
        (D("2.74"), D("0.5"), D("2.5")),
        (D(99), D(10), D(90)),
        (D("0.0009"), D("0.001"), D(0)),
        (D(5), D("0.5"), D(5)),
    ],
)
def test_round_qty_down_examples(qty: D, step: D, expected: D) -> None:
    assert round_qty_down(qty, step) == expected


@given(
    st.decimals(min_value=0, max_value=10**9, places=8, allow_nan=False, allow_infinity=False),
    st.sampled_from(STEPS),
)
def test_round_qty_down_never_exceeds_and_is_multiple(qty: D, step: D) -> None:
    rounded = round_qty_down(qty, step)
    assert rounded <= qty
    assert rounded % step == 0
    assert qty - rounded < step  # the largest such multiple


@pytest.mark.parametrize(
    ("price", "tick", "expected"),
    [
        (D("100.05"), D("0.1"), D("100.1")),
        (D("100.04"), D("0.1"), D("100.0")),
        (D(1234), D(5), D(1235)),
        (D("0.123456"), D("0.0001"), D("0.1235")),
    ],
)
def test_round_price_half_up(price: D, tick: D, expected: D) -> None:
    assert round_price(price, tick) == expected


@given(st.decimals(min_value=0, max_value=10**7, places=6), st.sampled_from([D("0.01"), D("0.5"), D(10)]))
def test_round_price_nearest_tick(price: D, tick: D) -> None:
    rounded = round_price(price, tick)
    assert rounded % tick == 0
    assert abs(rounded - price) <= tick / 2


def test_bad_steps() -> None:
    with pytest.raises(ValueError):
        round_qty_down(D(1), D(0))
    with pytest.raises(ValueError):
        round_qty_down(D(-1), D(1))
    with pytest.raises(ValueError):
        round_price(D(1), D(-1))


def test_money_up() -> None:
    assert money_up(D("1.000000001")) == D("1.00000001")
    assert money_up(D(2)) == D(2)


def test_check_minimums() -> None:
    m = market()
    assert check_minimums(D("0.001"), D(50000), m) is None
    assert check_minimums(D(0), D(50000), m)[0] is SkipReason.BELOW_MIN_QTY  # type: ignore[index]
    assert check_minimums(D("0.001"), D(1000), m)[0] is SkipReason.BELOW_MIN_NOTIONAL  # type: ignore[index]
    # The follower's own floor is used when larger than the market's.
    res = check_minimums(D("0.001"), D(50000), m, min_notional=D(100))
    assert res is not None and res[0] is SkipReason.BELOW_MIN_NOTIONAL
    # Contract size scales the notional.
    assert check_minimums(D(1), D(10), market(contract_size=D("0.1"), min_qty=D(1))) is not None
