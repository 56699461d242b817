"""``fetch_positions``: the venue's own view of an account's futures positions.

Real ccxt against the local emulator for each futures venue (the endpoint ccxt calls, its weight, the wire
format, the classified errors), and the paper venue with the same checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from decimal import Decimal
from typing import Any

import pytest

from adapters.ccxt_errors import CredentialRejected
from adapters.emulator import binance as emulator_binance
from adapters.paper import PaperVenue
from engine.messages import OrderRequest, PositionSide, Side, TradeStatus, TradeType, VenuePosition
from engine.positions import Position
from engine.venue import OrderRejected, RetryableError, VenueBanned
from tests.kit import API_KEY, ccxt_harness
from tests.kit import CcxtHarness as Harness

BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"
FUTURES = ("binance", "bybit", "bitget")
ENDPOINT = {
    "binance": "/fapi/v3/positionRisk",
    "bybit": "/v5/position/list",
    "bitget": "/api/v2/mix/position/all-position",
}
WEIGHT = {"binance": 5, "bybit": 1, "bitget": 1}  # Binance: IP weight; Bybit, Bitget: requests

# The emulator's marks: BTC 50000, ETH 3000; maintenance-margin rate 0.005.
LONG_BTC = VenuePosition(
    symbol=BTC,
    side=PositionSide.LONG,
    qty=Decimal("0.01"),
    entry_price=Decimal(50000),
    liquidation_price=Decimal(45250),  # 50000 x (1 - 1/10 + 0.005)
    margin_usdt=Decimal(50),  # 0.01 x 50000 / 10
)
SHORT_ETH = VenuePosition(
    symbol=ETH,
    side=PositionSide.SHORT,
    qty=Decimal("0.1"),
    entry_price=Decimal(3000),
    liquidation_price=Decimal(3585),  # 3000 x (1 + 1/5 - 0.005)
    margin_usdt=Decimal(60),  # 0.1 x 3000 / 5
)


def order(
    venue: str,
    cid: str,
    symbol: str,
    side: Side,
    qty: str,
    leverage: int,
    *,
    user_id: int = 1,
    reduce_only: bool = False,
) -> OrderRequest:
    return OrderRequest(
        client_order_id=cid,
        user_id=user_id,
        venue=venue,
        symbol=symbol,
        trade_type=TradeType.FUTURES,
        side=side,
        qty=Decimal(qty),
        price_hint=Decimal(1),
        reduce_only=reduce_only,
        leverage=leverage,
    )


def run_venue(name: str, body: Callable[[Harness], Awaitable[None]], *, secret: str | None = None) -> None:
    async def main() -> None:
        case = (name, TradeType.FUTURES)
        async with ccxt_harness(case) if secret is None else ccxt_harness(case, secret=secret) as h:
            await body(h)

    asyncio.run(main())


async def open_long_and_short(h: Harness) -> None:
    await h.venue.create_order(order(h.name, "c1u1long", BTC, Side.BUY, "0.01", 10))
    await h.venue.create_order(order(h.name, "c1u1short", ETH, Side.SELL, "0.1", 5))


def by_symbol(positions: list[VenuePosition]) -> dict[str, VenuePosition]:
    assert len({p.symbol for p in positions}) == len(positions)
    return {p.symbol: p for p in positions}


def engine_estimate(p: VenuePosition, leverage: int) -> Decimal | None:
    """The engine's own isolated-margin liquidation price for the same position."""
    assert p.entry_price is not None
    return Position(
        position_id="p", user_id=1, venue="v", symbol=p.symbol, trade_type=TradeType.FUTURES, side=p.side,
        qty=p.qty, entry_price=p.entry_price, leverage=leverage, margin_usdt=Decimal(0),
    ).liquidation_price  # fmt: skip


# ---- ccxt venues on the emulator -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FUTURES)
def test_long_and_short_come_back_as_the_venue_holds_them(name: str) -> None:
    async def body(h: Harness) -> None:
        await open_long_and_short(h)
        before = len(h.emu.requests(name))
        positions = await h.venue.fetch_positions(user_id=1, symbols=[])
        # One request to the positions endpoint, nothing else (no leverage brackets, no account probes).
        assert [path for _, path in h.emu.requests(name)[before:]] == [f"/{name}{ENDPOINT[name]}"]
        assert by_symbol(positions) == {BTC: LONG_BTC, ETH: SHORT_ETH}
        assert engine_estimate(LONG_BTC, 10) == LONG_BTC.liquidation_price
        assert engine_estimate(SHORT_ETH, 5) == SHORT_ETH.liquidation_price
        assert await h.venue.fetch_positions(user_id=1, symbols=[BTC]) == [LONG_BTC]
        assert await h.venue.fetch_positions(user_id=1, symbols=[ETH]) == [SHORT_ETH]
        assert by_symbol(await h.venue.fetch_positions(user_id=1, symbols=[ETH, BTC])) == {
            BTC: LONG_BTC,
            ETH: SHORT_ETH,
        }

    run_venue(name, body)


@pytest.mark.parametrize("name", FUTURES)
def test_flat_symbols_and_other_accounts_hold_nothing(name: str) -> None:
    async def body(h: Harness) -> None:
        assert await h.venue.fetch_positions(user_id=1, symbols=[BTC]) == []  # bybit lists it with size 0
        await h.venue.create_order(order(h.name, "c1u1long", BTC, Side.BUY, "0.01", 10))
        assert await h.venue.fetch_positions(user_id=1, symbols=[ETH]) == []
        assert await h.venue.fetch_positions(user_id=2, symbols=[]) == []
        assert await h.venue.fetch_positions(user_id=2, symbols=[BTC]) == []

    run_venue(name, body)


@pytest.mark.parametrize("name", FUTURES)
def test_adding_averages_the_entry_and_closing_removes_the_position(name: str) -> None:
    async def body(h: Harness) -> None:
        await h.venue.create_order(order(h.name, "c1u1a", BTC, Side.BUY, "0.01", 10))
        h.emu.set_mark(BTC, 52000)
        await h.venue.create_order(order(h.name, "c1u1b", BTC, Side.BUY, "0.01", 10))
        (position,) = await h.venue.fetch_positions(user_id=1, symbols=[BTC])
        assert position == VenuePosition(
            symbol=BTC,
            side=PositionSide.LONG,
            qty=Decimal("0.02"),
            entry_price=Decimal(51000),
            liquidation_price=Decimal(46155),  # 51000 x (1 - 1/10 + 0.005)
            margin_usdt=Decimal(102),  # (500 + 520) / 10
        )
        await h.venue.create_order(order(h.name, "x1u1close", BTC, Side.SELL, "0.02", 10, reduce_only=True))
        assert await h.venue.fetch_positions(user_id=1, symbols=[]) == []

    run_venue(name, body)


@pytest.mark.parametrize("name", FUTURES)
def test_venue_side_liquidation_and_liquidation_price_override(name: str) -> None:
    async def body(h: Harness) -> None:
        await open_long_and_short(h)
        h.emu.set_liquidation_price(name, API_KEY, BTC, "47000.5")
        positions = by_symbol(await h.venue.fetch_positions(user_id=1, symbols=[]))
        assert positions[BTC].liquidation_price == Decimal("47000.5")
        assert positions[ETH] == SHORT_ETH
        h.emu.set_liquidation_price(name, API_KEY, BTC, None)
        assert await h.venue.fetch_positions(user_id=1, symbols=[BTC]) == [LONG_BTC]

        usdt = h.emu.balance(name, API_KEY, "USDT")
        assert h.emu.liquidate(name, API_KEY, BTC) == Decimal(50)
        assert h.emu.balance(name, API_KEY, "USDT") == usdt - 50  # the margin is lost
        assert h.emu.position(name, API_KEY, BTC) is None
        assert await h.venue.fetch_positions(user_id=1, symbols=[BTC]) == []
        assert await h.venue.fetch_positions(user_id=1, symbols=[]) == [SHORT_ETH]
        with pytest.raises(KeyError):
            h.emu.liquidate(name, API_KEY, BTC)

    run_venue(name, body)


@pytest.mark.parametrize("name", FUTURES)
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("429", RetryableError),
        ("5xx", RetryableError),
        ("418", VenueBanned),
        ("html", RetryableError),
        ("truncated_json", RetryableError),
    ],
)
def test_venue_errors_are_classified(name: str, fault: str, error: type[Exception]) -> None:
    async def body(h: Harness) -> None:
        await h.venue.load_markets()
        h.emu.inject(name, fault, path_contains=ENDPOINT[name])
        with pytest.raises(error) as caught:
            await h.venue.fetch_positions(user_id=1, symbols=[])
        assert not isinstance(caught.value, OrderRejected)
        assert await h.venue.fetch_positions(user_id=1, symbols=[]) == []  # the fault was one request

    run_venue(name, body)


@pytest.mark.parametrize("name", FUTURES)
def test_a_refused_credential_is_a_rejection(name: str) -> None:
    async def body(h: Harness) -> None:
        with pytest.raises(CredentialRejected):
            await h.venue.fetch_positions(user_id=1, symbols=[])

    run_venue(name, body, secret="not-the-secret")


@pytest.mark.parametrize("name", FUTURES)
def test_request_weight_is_the_documented_one(name: str) -> None:
    async def body(h: Harness) -> None:
        assert h.venue.request_weight("fetch_positions") == WEIGHT[name]
        if name == "binance":  # the emulator charges what Binance documents for the endpoint ccxt calls
            assert emulator_binance.request_weight("GET", "/binance" + ENDPOINT[name]) == 5

    run_venue(name, body)


@pytest.mark.parametrize("name", FUTURES)
def test_a_spot_venue_holds_no_positions(name: str) -> None:
    async def body(h: Harness) -> None:
        before = len(h.emu.requests(name))
        assert await h.venue.fetch_positions(user_id=1, symbols=[]) == []
        assert h.emu.requests(name)[before:] == []  # not even a request
        assert h.venue.request_weight("fetch_positions") == 0

    async def main() -> None:
        async with ccxt_harness((name, TradeType.SPOT)) as h:
            await body(h)

    asyncio.run(main())


# A reduce-only order that would not only reduce, as each venue refuses it: (ccxt's exception class, the venue's
# code in the body) for "flat" (no position), "same_side" (the position's own side) and "oversized" (more than
# the position; Bybit fixes the quantity to the position instead, so it has no refusal for it).
REDUCE_ONLY_REFUSALS = {
    "binance": dict.fromkeys(("flat", "same_side", "oversized"), ("InvalidOrder", '"code":-2022')),
    "bybit": dict.fromkeys(("flat", "same_side"), ("InvalidOrder", '"retCode":110017')),
    "bitget": {
        "flat": ("ExchangeError", '"code":"22002"'),
        "same_side": ("ExchangeError", '"code":"22002"'),
        "oversized": ("ExchangeError", '"code":"40757"'),
    },
}


async def refused(h: Harness, case: str, request: OrderRequest) -> None:
    """``request`` is refused as the venue refuses ``case``: a definitive rejection (REJECTED in the exchange
    actor), never an unknown outcome; nothing was placed."""
    with pytest.raises(OrderRejected) as caught:
        await h.venue.create_order(request)
    ccxt_class, code = REDUCE_ONLY_REFUSALS[h.name][case]
    message = str(caught.value)
    assert type(caught.value) is OrderRejected, message
    assert message.startswith(f"{ccxt_class}: {h.name} "), message
    assert code in message, message
    assert h.emu.order_count(request.client_order_id) == 0


@pytest.mark.parametrize("name", FUTURES)
def test_a_reduce_only_order_never_exceeds_the_position(name: str) -> None:
    async def body(h: Harness) -> None:
        await refused(h, "flat", order(name, "x1u1flat", BTC, Side.SELL, "0.01", 10, reduce_only=True))
        await h.venue.create_order(order(name, "c1u1long", BTC, Side.BUY, "0.01", 10))
        await refused(h, "same_side", order(name, "x1u1same", BTC, Side.BUY, "0.01", 10, reduce_only=True))
        assert await h.venue.fetch_positions(user_id=1, symbols=[BTC]) == [LONG_BTC]
        oversized = order(name, "x1u1over", BTC, Side.SELL, "0.02", 10, reduce_only=True)
        if name == "bybit":  # the quantity fixed to the position: it closes the long, and opens nothing
            closed = await h.venue.create_order(oversized)
            assert (closed.status, closed.filled_qty) == (TradeStatus.FILLED, Decimal("0.01"))
            assert await h.venue.fetch_positions(user_id=1, symbols=[BTC]) == []
            await h.venue.create_order(order(name, "c1u1again", BTC, Side.BUY, "0.01", 10))
        else:
            await refused(h, "oversized", oversized)
        assert await h.venue.fetch_positions(user_id=1, symbols=[BTC]) == [LONG_BTC]
        within = await h.venue.create_order(order(name, "x1u1part", BTC, Side.SELL, "0.004", 10, reduce_only=True))
        assert (within.status, within.filled_qty) == (TradeStatus.FILLED, Decimal("0.004"))
        (left,) = await h.venue.fetch_positions(user_id=1, symbols=[BTC])
        assert (left.side, left.qty) == (PositionSide.LONG, Decimal("0.006"))
        rest = await h.venue.create_order(order(name, "x1u1rest", BTC, Side.SELL, "0.006", 10, reduce_only=True))
        assert (rest.status, rest.filled_qty) == (TradeStatus.FILLED, Decimal("0.006"))
        assert await h.venue.fetch_positions(user_id=1, symbols=[BTC]) == []
        await refused(h, "flat", order(name, "x1u1gone", BTC, Side.SELL, "0.006", 10, reduce_only=True))

    run_venue(name, body)


# ---- the paper venue -----------------------------------------------------------------------------------------

# Paper marks: BTC 60000 (mmr 0.004), ETH 3000 (mmr 0.005).
PAPER_LONG_BTC = VenuePosition(
    symbol=BTC,
    side=PositionSide.LONG,
    qty=Decimal("0.01"),
    entry_price=Decimal(60000),
    liquidation_price=Decimal(54240),  # 60000 x (1 - 1/10 + 0.004)
    margin_usdt=Decimal(60),
)
PAPER_SHORT_ETH = VenuePosition(
    symbol=ETH,
    side=PositionSide.SHORT,
    qty=Decimal("0.1"),
    entry_price=Decimal(3000),
    liquidation_price=Decimal(3585),  # 3000 x (1 + 1/5 - 0.005)
    margin_usdt=Decimal(60),
)


def paper_run(
    body: Callable[[PaperVenue], Coroutine[Any, Any, None]],
    *,
    weight_limit: int | None = None,
    weight_window_s: float = 60.0,
) -> None:
    venue = PaperVenue(weight_limit=weight_limit, weight_window_s=weight_window_s)
    venue.deposit(1, "USDT", Decimal(100_000))
    asyncio.run(body(venue))


async def paper_long_and_short(venue: PaperVenue) -> None:
    await venue.create_order(order("paper", "c1u1long", BTC, Side.BUY, "0.01", 10))
    await venue.create_order(order("paper", "c1u1short", ETH, Side.SELL, "0.1", 5))


def test_paper_long_and_short() -> None:
    async def body(venue: PaperVenue) -> None:
        await paper_long_and_short(venue)
        assert by_symbol(await venue.fetch_positions(user_id=1, symbols=[])) == {
            BTC: PAPER_LONG_BTC,
            ETH: PAPER_SHORT_ETH,
        }
        assert await venue.fetch_positions(user_id=1, symbols=[BTC]) == [PAPER_LONG_BTC]
        assert await venue.fetch_positions(user_id=1, symbols=[ETH, "SOL/USDT:USDT"]) == [PAPER_SHORT_ETH]
        assert await venue.fetch_positions(user_id=1, symbols=["SOL/USDT:USDT"]) == []
        assert await venue.fetch_positions(user_id=2, symbols=[]) == []
        assert venue.request_weight("fetch_positions") == 1
        assert [c[1] for c in venue.calls()].count("fetch_positions") == 5

    paper_run(body)


def test_paper_close_liquidation_and_override() -> None:
    async def body(venue: PaperVenue) -> None:
        await paper_long_and_short(venue)
        venue.set_liquidation_price(1, BTC, Decimal(55000))
        assert (await venue.fetch_positions(user_id=1, symbols=[BTC]))[0].liquidation_price == Decimal(55000)
        venue.set_liquidation_price(1, BTC, None)
        assert await venue.fetch_positions(user_id=1, symbols=[BTC]) == [PAPER_LONG_BTC]
        usdt = venue.balance(1, "USDT")
        assert venue.liquidate(1, BTC) == Decimal(60)
        assert venue.balance(1, "USDT") == usdt  # the margin went at entry: it simply never comes back
        assert await venue.fetch_positions(user_id=1, symbols=[]) == [PAPER_SHORT_ETH]
        await venue.create_order(order("paper", "x1u1close", ETH, Side.BUY, "0.1", 5, reduce_only=True))
        assert await venue.fetch_positions(user_id=1, symbols=[]) == []
        with pytest.raises(KeyError):
            venue.liquidate(1, BTC)

    paper_run(body)


def test_paper_restored_position_reports_the_engine_estimate() -> None:
    async def body(venue: PaperVenue) -> None:
        venue.restore_position(7, ETH, qty=Decimal("-0.1"), entry_price=Decimal(3000), margin=Decimal(60))
        assert await venue.fetch_positions(user_id=7, symbols=[]) == [PAPER_SHORT_ETH]

    paper_run(body)


def test_paper_errors_are_classified() -> None:
    async def body(venue: PaperVenue) -> None:
        await venue.fetch_positions(user_id=1, symbols=[])
        with pytest.raises(RetryableError):  # over the venue's weight limit: 429
            await venue.fetch_positions(user_id=1, symbols=[])

    paper_run(body, weight_limit=1, weight_window_s=60.0)

    async def banned(venue: PaperVenue) -> None:
        venue.inject("ban", ban_s=60.0)
        with pytest.raises(VenueBanned):
            await venue.create_order(order("paper", "c1u1long", BTC, Side.BUY, "0.01", 10))
        with pytest.raises(VenueBanned):
            await venue.fetch_positions(user_id=1, symbols=[])

    paper_run(banned)
