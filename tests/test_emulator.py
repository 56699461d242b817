"""The exchange emulator itself: signatures, client-id de-duplication, faults, the weight ledger.

Raw HTTP (aiohttp) where the wire matters; ccxt where it is simpler. 127.0.0.1, port 0, no timing asserts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import orjson
import pytest

from adapters.emulator import EmulatorServer

KEY, SECRET = "emu-test-key", "emu-test-secret"


def run(
    body: Callable[[EmulatorServer, aiohttp.ClientSession], Awaitable[None]],
    venues: tuple[str, ...] = ("binance",),
    client_id_scope: str = "all",
) -> None:
    async def main() -> None:
        emu = EmulatorServer(venues, client_id_scope=client_id_scope)
        await emu.start()
        for venue in venues:
            emu.add_account(venue, KEY, SECRET, "pp")
            emu.deposit(venue, KEY, "USDT", 10_000)
        try:
            async with aiohttp.ClientSession() as session:
                await body(emu, session)
        finally:
            await emu.stop()

    asyncio.run(main())


def _binance_signed(params: dict[str, str], secret: str = SECRET) -> str:
    query = "&".join(f"{k}={v}" for k, v in (params | {"timestamp": str(int(time.time() * 1000))}).items())
    signature = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    return f"{query}&signature={signature}"


async def _binance_order(
    emu: EmulatorServer, session: aiohttp.ClientSession, cid: str, secret: str = SECRET
) -> tuple[int, Any]:
    body = _binance_signed(
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01", "newClientOrderId": cid},
        secret,
    )
    async with session.post(
        f"{emu.url_for('binance')}/api/v3/order",
        data=body,
        headers={"X-MBX-APIKEY": KEY, "Content-Type": "application/x-www-form-urlencoded"},
    ) as response:
        return response.status, await response.read()


def test_binance_signature_checked() -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        status, raw = await _binance_order(emu, session, "good1")
        assert status == 200
        assert orjson.loads(raw)["status"] == "FILLED"
        status, raw = await _binance_order(emu, session, "bad1", secret="not-the-secret")
        assert status == 400
        assert orjson.loads(raw)["code"] == -1022
        assert emu.order_count("bad1") == 0

    run(body)


def test_binance_dedupes_client_order_id() -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        assert (await _binance_order(emu, session, "dup1"))[0] == 200
        status, raw = await _binance_order(emu, session, "dup1")
        assert status == 400
        assert orjson.loads(raw)["code"] == -2010
        assert emu.order_count("dup1") == 1

    run(body)


async def _binance_get_order(emu: EmulatorServer, session: aiohttp.ClientSession, cid: str) -> tuple[int, Any]:
    query = _binance_signed({"symbol": "BTCUSDT", "origClientOrderId": cid})
    async with session.get(f"{emu.url_for('binance')}/api/v3/order?{query}", headers={"X-MBX-APIKEY": KEY}) as response:
        return response.status, orjson.loads(await response.read())


def test_open_scope_refuses_a_client_order_id_only_while_its_order_is_open() -> None:
    """Binance's rule: newClientOrderId is unique among open orders; a filled order's id makes a new order."""

    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        assert (await _binance_order(emu, session, "again1"))[0] == 200
        assert (await _binance_order(emu, session, "again1"))[0] == 200
        assert emu.order_count("again1") == 2
        emu.inject("binance", "delayed_fill", path_contains="/order")  # rests open
        assert (await _binance_order(emu, session, "open1"))[0] == 200
        status, raw = await _binance_order(emu, session, "open1")
        assert (status, orjson.loads(raw)["code"]) == (400, -2010)
        assert emu.order_count("open1") == 1

    run(body, client_id_scope="open")


def test_market_order_fills_at_mark_and_moves_balances() -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        emu.set_mark("BTC/USDT", 40000)
        _, raw = await _binance_order(emu, session, "mark1")
        fill = orjson.loads(raw)["fills"][0]
        assert Decimal(fill["price"]) == 40000
        assert emu.balance("binance", KEY, "USDT") == Decimal(10_000) - Decimal(400)
        assert emu.balance("binance", KEY, "BTC") == Decimal("0.01") - Decimal(fill["commission"])

    run(body)


def test_fault_count_and_path_filter() -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        emu.inject("binance", "5xx", count=2, path_contains="/api/v3/order")
        url = f"{emu.url_for('binance')}/api/v3/exchangeInfo"
        async with session.get(url) as response:
            assert response.status == 200  # other paths are untouched
        assert (await _binance_order(emu, session, "f1"))[0] == 503
        assert (await _binance_order(emu, session, "f1"))[0] == 503
        assert (await _binance_order(emu, session, "f1"))[0] == 200
        assert emu.order_count("f1") == 1

    run(body)


@pytest.mark.parametrize(("fault", "status"), [("429", 429), ("418", 418)])
def test_rate_limit_faults_carry_retry_after(fault: str, status: int) -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        emu.inject("binance", fault)
        async with session.get(f"{emu.url_for('binance')}/api/v3/exchangeInfo") as response:
            assert response.status == status
            assert response.headers["Retry-After"] == "2"
            if fault == "418":
                assert "banned until" in orjson.loads(await response.read())["msg"]

    run(body)


@pytest.mark.parametrize("fault", ["html", "truncated_json"])
def test_malformed_bodies_after_the_order_exists(fault: str) -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        emu.inject("binance", fault, path_contains="/order")
        _, raw = await _binance_order(emu, session, "mal1")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        assert emu.order_count("mal1") == 1

    run(body)


def test_accept_then_timeout_creates_the_order() -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        emu.inject("binance", "accept_then_timeout", path_contains="/order")
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.5):
                await _binance_order(emu, session, "hang1")
        assert emu.order_count("hang1") == 1

    run(body)


def test_accept_then_5xx_creates_the_order() -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        emu.inject("binance", "accept_then_5xx", path_contains="/order")
        assert (await _binance_order(emu, session, "five1"))[0] == 503
        assert emu.order_count("five1") == 1

    run(body)


def test_order_not_found_hides_the_order_from_reads_only() -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        emu.inject("binance", "order_not_found", path_contains="/api/v3/order")
        assert (await _binance_order(emu, session, "lag1"))[0] == 200  # a POST on that path: not taken
        status, answer = await _binance_get_order(emu, session, "lag1")
        assert (status, answer["code"]) == (400, -2013)
        status, answer = await _binance_get_order(emu, session, "lag1")
        assert (status, answer["status"]) == (200, "FILLED")  # the lag is over

    run(body)


def test_unknown_fault_is_refused() -> None:
    emu = EmulatorServer(("binance",))
    with pytest.raises(ValueError, match="unknown fault"):
        emu.inject("binance", "gremlins")


def test_weight_excess_is_recorded() -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        assert emu.weight_excess("binance") == []
        emu.venues["binance"].weight_limit = 45  # exchangeInfo weighs 20
        for _ in range(3):
            async with session.get(f"{emu.url_for('binance')}/api/v3/exchangeInfo") as response:
                assert response.status == 200
        excess = emu.weight_excess("binance")
        assert excess
        assert excess[-1][1] == 60

    run(body)


@pytest.mark.parametrize("venue", ["bybit", "bitget"])
def test_other_venues_check_signatures_through_ccxt(venue: str) -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        for secret, ok in ((SECRET, True), ("wrong", False)):
            client = getattr(ccxt, venue)({"apiKey": KEY, "secret": secret, "password": "pp", "enableRateLimit": False})
            client.urls["api"] = {k: emu.url_for(venue) for k in client.urls["api"]}
            client.has = dict(client.has, fetchCurrencies=False)
            client.options["uta"] = False
            client.options["enableUnifiedAccount"] = True
            client.options["enableUnifiedMargin"] = False
            try:
                if ok:
                    balance = await client.fetch_balance({"type": "spot"})
                    assert balance["free"]["USDT"] == 10_000
                else:
                    with pytest.raises(ccxt.AuthenticationError):
                        await client.fetch_balance({"type": "spot"})
            finally:
                await client.close()

    run(body, venues=(venue,))


async def _perp_order(
    emu: EmulatorServer, session: aiohttp.ClientSession, venue: str, cid: str, side: str, qty: str, reduce_only: bool
) -> tuple[int, dict[str, Any]]:
    """A signed BTCUSDT perpetual market order on ``venue``'s wire; its HTTP status and JSON body."""
    now = str(int(time.time() * 1000))
    if venue == "binance":
        params = {"symbol": "BTCUSDT", "side": side.upper(), "type": "MARKET", "quantity": qty, "newClientOrderId": cid}
        path, data = "/fapi/v1/order", _binance_signed(params | ({"reduceOnly": "true"} if reduce_only else {}))
        headers = {"X-MBX-APIKEY": KEY, "Content-Type": "application/x-www-form-urlencoded"}
    elif venue == "bybit":
        path = "/v5/order/create"
        order = {"category": "linear", "symbol": "BTCUSDT", "side": side.capitalize(), "orderType": "Market"}
        data = orjson.dumps(order | {"qty": qty, "orderLinkId": cid, "reduceOnly": reduce_only}).decode()
        sign = hmac.new(SECRET.encode(), (now + KEY + "5000" + data).encode(), hashlib.sha256).hexdigest()
        headers = {"X-BAPI-API-KEY": KEY, "X-BAPI-TIMESTAMP": now, "X-BAPI-RECV-WINDOW": "5000", "X-BAPI-SIGN": sign}
    else:
        path = "/api/v2/mix/order/place-order"
        order = {"symbol": "BTCUSDT", "productType": "USDT-FUTURES", "marginCoin": "USDT", "orderType": "market"}
        order |= {"side": side, "size": qty, "clientOid": cid, "reduceOnly": "YES" if reduce_only else "NO"}
        data = orjson.dumps(order).decode()
        digest = hmac.new(SECRET.encode(), (now + "POST" + path + data).encode(), hashlib.sha256).digest()
        sign = base64.b64encode(digest).decode()
        headers = {"ACCESS-KEY": KEY, "ACCESS-PASSPHRASE": "pp", "ACCESS-TIMESTAMP": now, "ACCESS-SIGN": sign}
    if venue != "binance":
        headers["Content-Type"] = "application/json"
    async with session.post(f"{emu.url_for(venue)}{path}", data=data, headers=headers) as response:
        return response.status, orjson.loads(await response.read())


# Each venue's documented refusal of a reduce-only order that would not only reduce (sources at the emulator's
# code): HTTP status and body fields, for "flat" (no position), "same_side" (the position's own side) and
# "oversized" (more than the position; Bybit fixes the quantity to the position instead of refusing).
_BINANCE_2022 = (400, {"code": -2022, "msg": "ReduceOnly Order is rejected."})
_BITGET_22002 = (400, {"code": "22002", "msg": "No position to close"})
REDUCE_ONLY_REFUSALS: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {
    "binance": {"flat": _BINANCE_2022, "same_side": _BINANCE_2022, "oversized": _BINANCE_2022},
    "bybit": {
        "flat": (200, {"retCode": 110017, "retMsg": "current position is zero, cannot fix reduce-only order qty"}),
        "same_side": (200, {"retCode": 110017, "retMsg": "Reduce-only rule not satisfied"}),
    },
    "bitget": {
        "flat": _BITGET_22002,
        "same_side": _BITGET_22002,
        "oversized": (400, {"code": "40757", "msg": "Not enough position is available."}),
    },
}


@pytest.mark.parametrize("venue", ["binance", "bybit", "bitget"])
def test_reduce_only_orders_are_refused_as_each_venue_refuses_them(venue: str) -> None:
    async def body(emu: EmulatorServer, session: aiohttp.ClientSession) -> None:
        async def refused(case: str, cid: str, side: str, qty: str) -> None:
            status, answer = await _perp_order(emu, session, venue, cid, side, qty, reduce_only=True)
            expected_status, fields = REDUCE_ONLY_REFUSALS[venue][case]
            assert (status, {k: answer.get(k) for k in fields}) == (expected_status, fields)
            assert emu.order_count(cid, venue) == 0

        def held() -> Decimal | None:
            position = emu.position(venue, KEY, "BTCUSDT")
            return None if position is None else position.qty

        await refused("flat", "r1", "sell", "0.01")
        assert (await _perp_order(emu, session, venue, "o1", "buy", "0.01", reduce_only=False))[0] == 200
        await refused("same_side", "r2", "buy", "0.01")
        if venue == "bybit":
            assert (await _perp_order(emu, session, venue, "r3", "sell", "0.02", reduce_only=True))[0] == 200
            order = emu.venues[venue].orders[-1]
            fixed = (order.client_order_id, order.qty, order.filled, order.status)
            assert fixed == ("r3", Decimal("0.01"), Decimal("0.01"), "filled")
            assert held() is None  # closed, and no short opened
        else:
            await refused("oversized", "r3", "sell", "0.02")
            assert held() == Decimal("0.01")
            assert (await _perp_order(emu, session, venue, "r4", "sell", "0.01", reduce_only=True))[0] == 200
            assert held() is None

    run(body, venues=(venue,))
