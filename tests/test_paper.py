"""The paper venue on its own: fills, wallets, futures margin, client order id de-duplication, faults."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from adapters.paper import PaperVenue
from adapters.paper_markets import default_markets
from engine.clock import FakeClock
from engine.messages import OrderRequest, PositionSide, Side, TradeStatus, TradeType, VenueOrder
from engine.protection import isolated_liquidation_price
from engine.venue import OrderRejected, OutcomeUnknown, RetryableError, VenueBanned
from tests.kit import wait_for_async

T = TypeVar("T")
SPOT, FUT = "BTC/USDT", "BTC/USDT:USDT"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def order(
    cid: str,
    *,
    side: Side = Side.BUY,
    qty: str = "0.01",
    symbol: str = SPOT,
    user_id: int = 1,
    reduce_only: bool = False,
    leverage: int = 1,
) -> OrderRequest:
    return OrderRequest(
        client_order_id=cid,
        user_id=user_id,
        venue="paper",
        symbol=symbol,
        trade_type=TradeType.FUTURES if symbol.endswith(":USDT") else TradeType.SPOT,
        side=side,
        qty=Decimal(qty),
        price_hint=Decimal(60000),
        reduce_only=reduce_only,
        leverage=leverage,
    )


@pytest.fixture
def venue() -> PaperVenue:
    paper = PaperVenue(slippage_bps=Decimal(10))
    paper.deposit(1, "USDT", Decimal(10_000))
    return paper


def test_default_markets_have_spot_and_futures_for_each_base() -> None:
    markets = {m.symbol: m for m in default_markets()}
    for base in ("BTC", "ETH", "SOL", "XRP", "DOGE", "BNB"):
        spot, fut = markets[f"{base}/USDT"], markets[f"{base}/USDT:USDT"]
        assert spot.trade_type is TradeType.SPOT and fut.trade_type is TradeType.FUTURES
        assert fut.max_leverage > 1 and spot.max_leverage == 1
        assert fut.taker_fee_rate < spot.taker_fee_rate
    assert run(PaperVenue().load_markets()).keys() == markets.keys()


def test_set_mark_for_a_base_sets_spot_and_futures() -> None:
    paper = PaperVenue(initial_marks={})
    paper.set_mark("eth", Decimal(2500))
    paper.set_mark("BTC/USDT", Decimal(50000))
    assert paper.marks() == {"ETH/USDT": 2500, "ETH/USDT:USDT": 2500, "BTC/USDT": 50000}
    assert run(paper.fetch_marks(["ETH/USDT", "BTC/USDT:USDT"])) == {"ETH/USDT": 2500}
    with pytest.raises(ValueError, match="unknown"):
        paper.set_mark("NOPE", Decimal(1))


def test_spot_buy_fills_above_mark_with_fee_and_sell_below(venue: PaperVenue) -> None:
    buy = run(venue.create_order(order("b1")))
    assert buy.status is TradeStatus.FILLED
    assert buy.avg_price == Decimal("60060.00")  # 10 bps above the mark
    assert buy.fee_usdt == Decimal("0.01") * Decimal("60060") * Decimal("0.001")
    assert venue.balance(1, "BTC") == Decimal("0.01")
    assert venue.balance(1, "USDT") == Decimal(10_000) - Decimal("600.60") - buy.fee_usdt
    sell = run(venue.create_order(order("s1", side=Side.SELL)))
    assert sell.avg_price == Decimal("59940.00")
    assert venue.balance(1, "BTC") == 0
    assert run(venue.fetch_balance(user_id=1, trade_type=TradeType.FUTURES)).keys() == {"USDT"}


def test_repeated_client_order_id_returns_the_existing_order(venue: PaperVenue) -> None:
    first = run(venue.create_order(order("dup")))
    usdt = venue.balance(1, "USDT")
    again = run(venue.create_order(order("dup")))
    assert again == first
    assert venue.order_count("dup") == 1
    assert venue.create_calls("dup") == 2
    assert venue.balance(1, "USDT") == usdt  # charged once
    where: dict[str, Any] = {"user_id": 1, "symbol": SPOT, "trade_type": TradeType.SPOT, "client_order_id": "dup"}
    assert run(venue.fetch_order_by_client_id(**where)) == first
    assert run(venue.cancel_order(**where)) == first


@pytest.mark.parametrize(
    ("req", "match"),
    [
        (order("x1", qty="1"), "insufficient USDT"),
        (order("x2", side=Side.SELL), "insufficient BTC"),
        (order("x3", qty="0.000015"), "lot size"),
        (order("x4", qty="0.00001"), "notional"),
        (order("x5", symbol="NOPE/USDT"), "unknown"),
        (order("x6", symbol=FUT, qty="0.01", leverage=200), "leverage"),
        (order("x7", symbol=FUT, side=Side.SELL, reduce_only=True), "reduce-only"),
    ],
)
def test_invalid_or_unaffordable_orders_are_rejected(venue: PaperVenue, req: OrderRequest, match: str) -> None:
    with pytest.raises(OrderRejected, match=match):
        run(venue.create_order(req))
    assert venue.order_count(req.client_order_id) == 0


def close(cid: str, qty: str) -> OrderRequest:
    return order(cid, symbol=FUT, side=Side.SELL, qty=qty, reduce_only=True, leverage=10)


def test_futures_margin_reduce_only_and_pnl() -> None:
    paper = PaperVenue(initial_marks={"BTC": Decimal(60000)})
    paper.deposit(1, "USDT", Decimal(1000))
    with pytest.raises(OrderRejected, match="margin"):
        run(paper.create_order(order("big", symbol=FUT, qty="0.1", leverage=5)))  # 1200 margin
    run(paper.create_order(order("o1", symbol=FUT, qty="0.1", leverage=10)))  # 600 margin + 3 fee
    assert paper.position_qty(1, FUT) == Decimal("0.1")
    assert paper.balance(1, "USDT") == Decimal(1000) - 600 - 3
    paper.set_mark("BTC", Decimal(61000))
    with pytest.raises(OrderRejected, match="reduce-only"):  # would flip the position
        run(paper.create_order(close("r0", "0.2")))
    run(paper.create_order(close("r1", "0.05")))
    assert paper.position_qty(1, FUT) == Decimal("0.05")
    # released 300 margin + 50 pnl - 1.525 fee
    assert paper.balance(1, "USDT") == Decimal(397) + 300 + 50 - Decimal("1.525")
    run(paper.create_order(close("r2", "0.05")))
    assert paper.position_qty(1, FUT) == 0


@pytest.mark.parametrize(
    ("side", "liq", "short_of"),
    [
        (Side.BUY, "54240", "54240.1"),  # long x10 @ 60,000, mmr 0.4 %: 60,000 × (1 - 0.1 + 0.004)
        (Side.SELL, "65760", "65759.9"),  # short: 60,000 × (1 + 0.1 - 0.004)
    ],
)
def test_a_polled_mark_at_the_liquidation_price_liquidates_the_position(side: Side, liq: str, short_of: str) -> None:
    paper = PaperVenue(initial_marks={"BTC": Decimal(60000)})
    paper.deposit(1, "USDT", Decimal(1000))
    run(paper.create_order(order("o1", symbol=FUT, side=side, qty="0.1", leverage=10)))  # 600 margin + 3 fee
    assert paper.balance(1, "USDT") == Decimal(397)
    (held,) = run(paper.fetch_positions(user_id=1, symbols=[FUT]))
    # The engine's own estimate, by which the engine books a liquidation on the paper venue.
    engine_side = PositionSide.LONG if side is Side.BUY else PositionSide.SHORT
    estimate = isolated_liquidation_price(engine_side, Decimal(60000), 10, Decimal("0.004"))
    assert held.liquidation_price == estimate == Decimal(liq)

    paper.set_mark("BTC", Decimal(short_of))
    assert run(paper.fetch_marks([FUT])) == {FUT: Decimal(short_of)}
    assert paper.position_qty(1, FUT) != 0  # one tick short of it: still held
    paper.set_mark("BTC", Decimal(liq))
    assert paper.position_qty(1, FUT) != 0  # the venue acts on the marks the price feed polls, not before
    assert run(paper.fetch_marks([FUT])) == {FUT: Decimal(liq)}  # touching it is enough, as for the engine
    assert paper.position_qty(1, FUT) == 0
    assert run(paper.fetch_positions(user_id=1, symbols=[])) == []
    assert paper.balance(1, "USDT") == Decimal(397)  # the margin left at entry and never comes back
    with pytest.raises(OrderRejected, match="reduce-only"):
        close_side = Side.SELL if side is Side.BUY else Side.BUY
        run(paper.create_order(order("x1", symbol=FUT, side=close_side, qty="0.1", reduce_only=True, leverage=10)))


def test_opposite_order_without_reduce_only_flips_the_position() -> None:
    paper = PaperVenue(initial_marks={"BTC": Decimal(60000)})
    paper.deposit(1, "USDT", Decimal(10_000))
    run(paper.create_order(order("o1", symbol=FUT, qty="0.1", leverage=10)))
    run(paper.create_order(order("o2", symbol=FUT, side=Side.SELL, qty="0.3", leverage=10)))
    assert paper.position_qty(1, FUT) == Decimal("-0.2")


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("reject", OrderRejected),
        ("rate_limit", RetryableError),
        ("server_error", RetryableError),
        ("ban", VenueBanned),
    ],
)
def test_faults_before_acceptance_create_no_order(venue: PaperVenue, kind: str, error: type[Exception]) -> None:
    venue.inject(kind, client_order_id="f1", retry_after_s=0.5)
    with pytest.raises(error):
        run(venue.create_order(order("f1")))
    assert venue.order_count("f1") == 0


def test_rate_limit_carries_retry_after(venue: PaperVenue) -> None:
    venue.inject("rate_limit", retry_after_s=2.5)
    with pytest.raises(RetryableError) as info:
        run(venue.create_order(order("r1")))
    assert info.value.retry_after_s == 2.5
    assert run(venue.create_order(order("r1"))).status is TradeStatus.FILLED  # count=1: next call is fine


def test_timeout_after_accept_creates_the_order(venue: PaperVenue) -> None:
    venue.inject("timeout_after_accept")
    with pytest.raises(OutcomeUnknown):
        run(venue.create_order(order("t1")))
    assert venue.orders_for("t1")[0].status is TradeStatus.FILLED
    assert run(venue.create_order(order("t1"))) == venue.orders_for("t1")[0]


def test_partial_fill(venue: PaperVenue) -> None:
    venue.inject("partial_fill", fill_fraction=Decimal("0.25"))
    result = run(venue.create_order(order("p1", qty="0.01")))
    assert result.status is TradeStatus.PARTIALLY_FILLED
    assert result.filled_qty == Decimal("0.0025")


def test_fault_targets_one_client_order_id(venue: PaperVenue) -> None:
    venue.inject("reject", client_order_id="target", count=2)
    assert run(venue.create_order(order("other"))).status is TradeStatus.FILLED
    for _ in range(2):
        with pytest.raises(OrderRejected):
            run(venue.create_order(order("target")))
    assert run(venue.create_order(order("target"))).status is TradeStatus.FILLED


def test_ban_refuses_every_call_for_its_length() -> None:
    clock = FakeClock()
    paper = PaperVenue(clock=clock)
    paper.deposit(1, "USDT", Decimal(10_000))
    paper.inject("ban", ban_s=30)
    with pytest.raises(VenueBanned):
        run(paper.create_order(order("b1")))
    clock.advance(29)
    with pytest.raises(VenueBanned) as info:
        run(paper.fetch_marks([SPOT]))
    assert info.value.ban_s == pytest.approx(1)
    assert paper.calls_while_banned == 1
    clock.advance(1)
    assert run(paper.create_order(order("b1"))).status is TradeStatus.FILLED


def test_weight_limit_answers_429_and_counts_windows() -> None:
    clock = FakeClock()
    paper = PaperVenue(weight_limit=3, weight_window_s=10, clock=clock)
    for _ in range(3):
        run(paper.fetch_marks([SPOT]))
    with pytest.raises(RetryableError) as info:
        run(paper.fetch_marks([SPOT]))
    assert info.value.retry_after_s == pytest.approx(10)
    assert paper.rate_limited_calls == 1
    clock.advance(10)
    run(paper.fetch_marks([SPOT]))
    assert paper.max_weight_in_window(10) == 4  # the refused call counts too, as on a real venue


def test_latency_lets_calls_overlap() -> None:
    paper = PaperVenue(latency_ms=20)
    for user_id in range(10):
        paper.deposit(user_id, "USDT", Decimal(10_000))

    async def burst() -> list[VenueOrder]:
        return await asyncio.gather(*(paper.create_order(order(f"c{u}", user_id=u)) for u in range(10)))

    assert all(o.status is TradeStatus.FILLED for o in run(burst()))
    assert paper.max_in_flight_seen == 10


def test_random_walk_moves_marks_on_the_tick() -> None:
    paper = PaperVenue()
    before = paper.marks()

    async def walk() -> None:
        task = asyncio.create_task(
            paper.random_walk(["BTC", "ETH/USDT"], interval_ms=1, volatility_bps=50, rng=random.Random(1))
        )
        await wait_for_async(lambda: paper.marks()["ETH/USDT"] != before["ETH/USDT"], interval_s=0.001)
        task.cancel()

    run(asyncio.wait_for(walk(), 30))
    after = paper.marks()
    assert after["BTC/USDT"] != before["BTC/USDT"]
    assert after["BTC/USDT"] == after["BTC/USDT:USDT"]
    assert after["ETH/USDT:USDT"] == before["ETH/USDT:USDT"]  # a symbol key moves only that symbol
    assert after["BTC/USDT"] % Decimal("0.01") == 0  # on the tick
