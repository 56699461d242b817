"""CcxtVenue against the local emulator: real ccxt classes, real HTTP on 127.0.0.1, no mocks.

Every test runs for each implemented venue and trade type (the ``case`` fixture).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt
import orjson
import pytest

from adapters.ccxt_errors import CredentialRejected, classify
from adapters.credentials import Credential
from engine.messages import OrderOutcome, Side, TradeStatus, TradeType
from engine.trades import Trade
from engine.venue import OrderRejected, OutcomeUnknown, RetryableError, VenueBanned
from tests.kit import API_KEY, PASSPHRASE, SECRET, capture_logs, ccxt_harness
from tests.kit import CcxtHarness as Harness

CASES = [
    ("binance", TradeType.SPOT),
    ("binance", TradeType.FUTURES),
    ("bybit", TradeType.SPOT),
    ("bybit", TradeType.FUTURES),
    ("bitget", TradeType.SPOT),
    ("bitget", TradeType.FUTURES),
]


@pytest.fixture(params=CASES, ids=[f"{v}-{t.value}" for v, t in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, TradeType]:
    return request.param  # type: ignore[no-any-return]


def run(case: tuple[str, TradeType], body: Callable[[Harness], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        async with ccxt_harness(case, **kwargs) as h:
            await body(h)

    asyncio.run(main())


def test_load_markets(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        markets = await h.venue.load_markets()
        info = markets[h.symbol]
        assert info.trade_type is h.trade_type
        assert (info.base, info.quote) == ("BTC", "USDT")
        assert info.qty_step == Decimal("0.001")
        assert info.price_tick == Decimal("0.1")
        assert info.min_qty == Decimal("0.001")
        assert info.min_notional == Decimal(5)
        assert info.taker_fee_rate > 0
        assert info.max_leverage == (1 if h.trade_type is TradeType.SPOT else info.max_leverage) >= 1

    run(case, body)


def test_markets_loaded_once_and_shared(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        await h.venue.create_order(h.order("c1u1a", user_id=1))
        first_load = len(_market_calls(h))
        assert first_load >= 1  # bybit linear: listed and pre-launch instruments, one load
        await h.venue.create_order(h.order("c1u2a", user_id=2))
        await h.venue.load_markets()
        assert len(_market_calls(h)) == first_load

    run(case, body)


def _market_calls(h: Harness) -> list[str]:
    return [p for m, p in h.emu.requests(h.name) if m == "GET" and _is_markets_path(p)]


def _is_markets_path(path: str) -> bool:
    return path.endswith(("exchangeInfo", "instruments-info", "/symbols", "/contracts"))


def test_market_order_fills_at_mark(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        h.emu.set_mark(h.symbol, 51000)
        order = await h.venue.create_order(h.order("c1u1fill", price_hint=51000))
        assert order.status is TradeStatus.FILLED
        assert order.filled_qty == Decimal("0.01")
        assert order.avg_price == Decimal(51000)
        assert order.fee_usdt > 0
        assert order.exchange_order_id

    run(case, body)


def test_repeated_client_order_id_is_deduplicated(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        first = await h.venue.create_order(h.order("c1u1dup"))
        again = await h.venue.create_order(h.order("c1u1dup"))
        assert h.emu.order_count("c1u1dup") == 1
        assert again.exchange_order_id == first.exchange_order_id
        assert again.status is TradeStatus.FILLED

    run(case, body)


def test_fetch_by_client_id(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        await h.venue.create_order(h.order("c1u1fetch"))
        found = await h.venue.fetch_order_by_client_id(
            user_id=1, symbol=h.symbol, trade_type=h.trade_type, client_order_id="c1u1fetch"
        )
        assert found is not None
        assert found.status is TradeStatus.FILLED
        assert found.filled_qty == Decimal("0.01")
        missing = await h.venue.fetch_order_by_client_id(
            user_id=1, symbol=h.symbol, trade_type=h.trade_type, client_order_id="c1u1nothere"
        )
        assert missing is None

    run(case, body)


def test_delayed_fill_then_cancel(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        h.emu.inject(h.name, "delayed_fill", path_contains=_create_path(h.name, h.trade_type))
        order = await h.venue.create_order(h.order("c1u1rest"))
        assert order.status is TradeStatus.SUBMITTED
        assert order.filled_qty == 0
        cancelled = await h.venue.cancel_order(
            user_id=1, symbol=h.symbol, trade_type=h.trade_type, client_order_id="c1u1rest"
        )
        assert cancelled is not None
        assert cancelled.status is TradeStatus.CANCELLED
        assert h.emu.order_count("c1u1rest") == 1

    run(case, body)


def test_delayed_fill_is_seen_by_a_later_fetch(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        h.emu.inject(h.name, "delayed_fill", path_contains=_create_path(h.name, h.trade_type))
        order = await h.venue.create_order(h.order("c1u1late"))
        assert order.status is TradeStatus.SUBMITTED
        statuses = []
        for _ in range(3):
            found = await h.venue.fetch_order_by_client_id(
                user_id=1, symbol=h.symbol, trade_type=h.trade_type, client_order_id="c1u1late"
            )
            assert found is not None
            statuses.append(found.status)
        assert statuses[-1] is TradeStatus.FILLED
        assert set(statuses) <= {TradeStatus.SUBMITTED, TradeStatus.FILLED}

    run(case, body)


def test_cancel_filled_order_reports_fill(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        await h.venue.create_order(h.order("c1u1done"))
        result = await h.venue.cancel_order(
            user_id=1, symbol=h.symbol, trade_type=h.trade_type, client_order_id="c1u1done"
        )
        assert result is not None
        assert result.status is TradeStatus.FILLED

    run(case, body)


def test_balance(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        balance = await h.venue.fetch_balance(user_id=1, trade_type=h.trade_type)
        assert balance["USDT"] == Decimal(100_000)

    run(case, body)


def test_marks(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        h.emu.set_mark(h.symbol, "49000.5")
        marks = await h.venue.fetch_marks([h.symbol])
        assert marks == {h.symbol: Decimal("49000.5")}

    run(case, body)


def test_leverage_set_once_per_symbol(case: tuple[str, TradeType]) -> None:
    if case[1] is TradeType.SPOT:
        pytest.skip("leverage is a futures concept")

    async def body(h: Harness) -> None:
        await h.venue.create_order(h.order("c1u1lev1", leverage=7))
        await h.venue.create_order(h.order("c1u1lev2", leverage=7))
        before = len(h.emu.requests(h.name))
        await h.venue.create_order(h.order("c1u1lev3", side=Side.SELL, reduce_only=True, leverage=7))
        assert h.emu.leverage(h.name, API_KEY)
        assert set(h.emu.leverage(h.name, API_KEY).values()) == {7}
        leverage_calls = [p for _, p in h.emu.requests(h.name) if "everage" in p]
        assert len(leverage_calls) == 1
        assert all("everage" not in p for _, p in h.emu.requests(h.name)[before:])

    run(case, body)


def test_insufficient_funds_is_rejected(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        with pytest.raises(OrderRejected):
            await h.venue.create_order(h.order("c1u1poor", qty="500"))
        assert h.emu.order_count("c1u1poor") == 0

    run(case, body)


def test_429_is_retryable_with_retry_after(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        await h.venue.load_markets()
        h.emu.inject(h.name, "429")
        with pytest.raises(RetryableError) as info:
            await h.venue.fetch_balance(user_id=1, trade_type=h.trade_type)
        assert info.value.retry_after_s is not None
        assert 0 < info.value.retry_after_s <= 2

    run(case, body)


def test_418_is_a_ban(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        await h.venue.load_markets()
        h.emu.inject(h.name, "418")
        with pytest.raises(VenueBanned) as info:
            await h.venue.fetch_balance(user_id=1, trade_type=h.trade_type)
        assert 0 < info.value.ban_s <= 2

    run(case, body)


def test_5xx_on_create_is_unknown_and_resolved_by_client_id(case: tuple[str, TradeType]) -> None:
    """Binance: a 5xx means the execution status is unknown, and it only refuses a client order id held by an
    open order, so re-sending a market order that filled fills it twice. A read is safe to repeat."""

    async def body(h: Harness) -> None:
        await h.venue.fetch_balance(user_id=1, trade_type=h.trade_type)  # markets out of the way
        h.emu.inject(h.name, "5xx", path_contains=_create_path(h.name, h.trade_type))
        with pytest.raises(OutcomeUnknown):
            await h.venue.create_order(h.order("c1u1five", leverage=1))
        assert h.emu.order_count("c1u1five") == 0
        missing = await h.venue.fetch_order_by_client_id(
            user_id=1, symbol=h.symbol, trade_type=h.trade_type, client_order_id="c1u1five"
        )
        assert missing is None  # resolution: not found (after the grace period: FAILED)
        h.emu.inject(h.name, "5xx")
        with pytest.raises(RetryableError):
            await h.venue.fetch_balance(user_id=1, trade_type=h.trade_type)

    run(case, body)


@pytest.mark.parametrize("fault", ["429", "refused"])
def test_create_that_never_reached_the_venue_is_retryable(case: tuple[str, TradeType], fault: str) -> None:
    async def body(h: Harness) -> None:
        await h.venue.create_order(h.order("c1u2warm", user_id=2))  # markets and user 2's leverage set
        if fault == "refused":
            h.venue.register_account(2, "mem:2-fresh")  # a new client: no pooled connection to reuse
            h.store.register("mem:2-fresh", Credential(API_KEY + "2", SECRET + "2", PASSPHRASE))
            await h.emu.stop()  # nothing listens: connection refused
        else:
            h.emu.inject(h.name, fault, path_contains=_create_path(h.name, h.trade_type))
        with pytest.raises(RetryableError):
            await h.venue.create_order(h.order("c2u2never", user_id=2))
        assert h.emu.order_count("c2u2never") == 0

    run(case, body)


def test_duplicate_whose_read_back_misses_is_unknown_not_rejected(case: tuple[str, TradeType]) -> None:
    """The venue says the client order id is taken: the order exists, even when the read-back cannot see it
    yet (Bybit's order history lags). Booking it REJECTED would release funds the venue holds."""

    async def body(h: Harness) -> None:
        await h.venue.create_order(h.order("c1u1seen"))
        path, reads = _read_path(h.name, h.trade_type)
        h.emu.inject(h.name, "order_not_found", count=reads, path_contains=path)
        with pytest.raises(OutcomeUnknown, match="duplicate"):
            await h.venue.create_order(h.order("c1u1seen"))
        assert h.emu.order_count("c1u1seen") == 1
        found = await h.venue.fetch_order_by_client_id(
            user_id=1, symbol=h.symbol, trade_type=h.trade_type, client_order_id="c1u1seen"
        )
        assert found is not None
        assert found.status is TradeStatus.FILLED

    run(case, body)


@pytest.mark.parametrize(
    "fault", ["accept_then_timeout", "accept_then_disconnect", "accept_then_5xx", "html", "truncated_json"]
)
def test_lost_answer_after_create_is_unknown(case: tuple[str, TradeType], fault: str) -> None:
    async def body(h: Harness) -> None:
        await h.venue.load_markets()
        if h.trade_type is TradeType.FUTURES:
            await h.venue.create_order(h.order("c1u1warm"))  # leverage set, so the fault hits the order
        h.emu.inject(h.name, fault, path_contains=_create_path(h.name, h.trade_type))
        with pytest.raises(OutcomeUnknown):
            await h.venue.create_order(h.order("c1u1lost"))
        found = await h.venue.fetch_order_by_client_id(
            user_id=1, symbol=h.symbol, trade_type=h.trade_type, client_order_id="c1u1lost"
        )
        assert found is not None
        assert found.status is TradeStatus.FILLED
        assert h.emu.order_count("c1u1lost") == 1

    # accept_then_timeout: the ccxt timeout is what the test waits out (the answer never comes).
    run(case, body, **({"timeout_ms": 3000} if fault == "accept_then_timeout" else {}))


def _create_path(name: str, trade_type: TradeType) -> str:
    if name == "binance":
        return "/api/v3/order" if trade_type is TradeType.SPOT else "/fapi/v1/order"
    if name == "bybit":
        return "/v5/order/create"
    return "/place-order"


def _read_path(name: str, trade_type: TradeType) -> tuple[str, int]:
    """The path reading one order back by client order id, and how many requests that read takes."""
    if name == "binance":
        return _create_path(name, trade_type), 1  # a GET on the create path
    if name == "bybit":
        return "/v5/order/", 2  # the open orders, then the history
    return ("orderInfo" if trade_type is TradeType.SPOT else "/order/detail"), 1


def test_partial_fill(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        h.emu.inject(h.name, "partial_fill", path_contains=_create_path(h.name, h.trade_type))
        order = await h.venue.create_order(h.order("c1u1part", qty="0.01", leverage=1))
        assert order.status is TradeStatus.PARTIALLY_FILLED
        assert order.filled_qty == Decimal("0.005")

    run(case, body)


def test_bad_signature_is_an_auth_error_without_the_secret(case: tuple[str, TradeType]) -> None:
    wrong_secret = "wrong-secret-SHOULD-NOT-LEAK-123"

    async def body(h: Harness) -> None:
        with capture_logs() as logs:
            with pytest.raises(CredentialRejected) as info:
                await h.venue.create_order(h.order("c1u1auth", leverage=1))
            with pytest.raises(CredentialRejected):
                await h.venue.fetch_balance(user_id=1, trade_type=h.trade_type)
        text = str(info.value) + repr(info.value) + repr(logs)
        for secret in (wrong_secret, API_KEY, PASSPHRASE):
            assert secret not in text
        assert h.emu.order_count("c1u1auth") == 0

    run(case, body, secret=wrong_secret)


def test_bad_client_order_id_refused_before_sending(case: tuple[str, TradeType]) -> None:
    async def body(h: Harness) -> None:
        with pytest.raises(OrderRejected):
            await h.venue.create_order(h.order("x" * 41))
        assert h.calls("order") == 0

    run(case, body)


def test_close_ends_every_account_session_at_once() -> None:
    """ccxt's ``close()`` sleeps ``timeout_on_exit`` (250 ms) after closing a session. One account after the
    other, 20 accounts cannot close in under 5 s; all at once they take about one such sleep."""
    accounts = range(3, 23)

    async def body(h: Harness) -> None:
        for uid in accounts:
            key = f"{API_KEY}-{uid}"
            h.emu.add_account(h.name, key, SECRET, PASSPHRASE)
            h.store.register(f"mem:{uid}", Credential(key, SECRET, PASSPHRASE))
            h.venue.register_account(uid, f"mem:{uid}")
        await asyncio.gather(*(h.venue.fetch_balance(user_id=uid, trade_type=h.trade_type) for uid in accounts))
        started = time.monotonic()
        await h.venue.close()
        elapsed_s = time.monotonic() - started
        sequential_floor_s = len(accounts) * 0.25
        assert elapsed_s < sequential_floor_s / 2, elapsed_s

    run(("binance", TradeType.FUTURES), body)


def test_bitget_spot_buy_below_the_hint_fills_more_base_and_the_trade_books_it() -> None:
    """Bitget sizes a spot market buy in USDT (qty x hint): at a mark below the hint it fills more base than
    ordered. The trade takes the venue's figure (it used to refuse it and leave the order open for good)."""

    async def body(h: Harness) -> None:
        h.emu.set_mark(h.symbol, 45_000)
        order = await h.venue.create_order(h.order("c1u1quote", qty="0.02", price_hint=50_000))
        assert order.status is TradeStatus.FILLED
        assert order.filled_qty == Decimal("0.022")  # 1,000 USDT at 45,000, in whole 0.001 lots
        trade = Trade(
            client_order_id="c1u1quote", user_id=1, venue="bitget", symbol=h.symbol, trade_type=TradeType.SPOT,
            side=Side.BUY, qty=Decimal("0.02"), price=Decimal(50_000),
        )  # fmt: skip
        trade.transition(TradeStatus.SUBMITTED)
        outcome = OrderOutcome(
            client_order_id=order.client_order_id, status=order.status, filled_qty=order.filled_qty,
            avg_price=order.avg_price, fee_usdt=order.fee_usdt, fee_base=order.fee_base,
        )  # fmt: skip
        assert trade.apply_outcome(outcome)
        assert trade.executed_qty == Decimal("0.022")

    run(("bitget", TradeType.SPOT), body)


_NO_POSITION = '{"code":"22002","msg":"No position to close","requestTime":1,"data":null}'
_BYBIT_110017 = '{"retCode":110017,"retMsg":"Reduce-only rule not satisfied","result":{},"retExtInfo":{},"time":1}'


@pytest.mark.parametrize(
    ("venue", "status", "body", "ccxt_class"),
    [
        # ccxt maps -2022 only in its USDⓈ-M table, which it picks by host: elsewhere a plain ExchangeError.
        ("binance", 400, '{"code":-2022,"msg":"ReduceOnly Order is rejected."}', ccxt.ExchangeError),
        ("bybit", 200, _BYBIT_110017, ccxt.InvalidOrder),
        ("bitget", 400, _NO_POSITION, ccxt.ExchangeError),  # ccxt 4.5 maps no Bitget reduce-only code
        ("bitget", 400, '{"code":"40757","msg":"Not enough position is available.","data":null}', ccxt.ExchangeError),
    ],
    ids=["binance-2022", "bybit-110017", "bitget-22002", "bitget-40757"],
)
def test_reduce_only_refusals_are_definitive_whatever_class_ccxt_raises(
    venue: str, status: int, body: str, ccxt_class: type[Exception]
) -> None:
    """ccxt's own error handling of the venue's answer, then the engine's classification: REJECTED, never the
    "maybe accepted" of a plain ExchangeError on create."""
    client = getattr(ccxt, venue)()
    try:
        with pytest.raises(ccxt.BaseError) as raised:
            url = "http://127.0.0.1:1/fapi/v1/order"
            client.handle_errors(status, "", url, "POST", {}, body, orjson.loads(body), {}, None)
        assert type(raised.value) is ccxt_class
        outcome = classify(raised.value, order_sent=True, now_s=time.time())
        assert type(outcome) is OrderRejected, outcome
    finally:
        asyncio.run(client.close())
