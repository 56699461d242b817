"""Bitget v2 (classic account), as ccxt calls it: spot ``/api/v2/spot/*``, USDT-M ``/api/v2/mix/*`` and
``/api/v2/margin/currencies`` (which ccxt's spot market load always asks for).

Signed requests carry ``ACCESS-KEY``, ``ACCESS-PASSPHRASE``, ``ACCESS-TIMESTAMP`` and ``ACCESS-SIGN`` =
base64(HMAC-SHA256(secret, timestamp + METHOD + path[?sorted query] + body)). Answers are
``{"code": "00000", "msg": "success", "requestTime", "data"}``; errors are HTTP 400 with a code string.
Spot market buys are sized in the quote coin (``size`` = USDT to spend), as on Bitget.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from decimal import ROUND_DOWN, Decimal
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from adapters.emulator.positions import bitget_position
from adapters.emulator.state import STATE_KEY, Account, FillError, Order, Refused, VenueState, fault_of

WEIGHT_LIMIT = 6000  # Bitget: 6000 requests per minute per IP
WEIGHT_WINDOW_S = 60.0
TAKER_FEE = Decimal("0.001")
# One-way mode with reduceOnly: Bitget refuses an order larger than the position with 40757 "Not enough position
# is available." and one with no position to close (Bitget API update log, Oct 30 2023,
# https://bitgetlimited.github.io/apidoc/en/mix/#update-log); v2's code for no position is 22002 "No position to
# close" (Bitget's error-code table, https://www.bitget.com/api-doc/uta/error-code/websocket).
REDUCE_ONLY_EXCESS = "reject"

_SPOT_STATUS = {"new": "live", "filled": "filled", "partial_expired": "cancelled", "cancelled": "cancelled"}
_MIX_STATUS = {"new": "live", "filled": "filled", "partial_expired": "canceled", "cancelled": "canceled"}


def request_weight(method: str, path: str) -> int:
    return 1


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json", headers=headers)


def _ok(data: Any) -> web.Response:
    return _json({"code": "00000", "msg": "success", "requestTime": int(time.time() * 1000), "data": data})


def _error(code: str, msg: str, status: int = 400) -> web.Response:
    return _json({"code": code, "msg": msg, "requestTime": int(time.time() * 1000), "data": None}, status)


def error_response(kind: str, retry_after_s: int) -> web.Response:
    headers = {"Retry-After": str(retry_after_s)}
    if kind == "429":
        return _json({"code": "429", "msg": "Too Many Requests", "requestTime": 0, "data": None}, 429, headers)
    if kind == "418":
        return web.Response(status=418, text="I'm a teapot", headers=headers)
    if kind == "order_not_found":
        return _error("40109", "The data of the order cannot be found, please confirm the order number")
    return web.Response(status=503, text="<html><body>503 Service Unavailable</body></html>", content_type="text/html")


async def _signed(request: web.Request, state: VenueState) -> tuple[Account, dict[str, Any]]:
    headers = request.headers
    account = state.accounts.get(headers.get("ACCESS-KEY", ""))
    if account is None:
        raise Refused(_error("40006", "Invalid ACCESS_KEY"))
    if headers.get("ACCESS-PASSPHRASE") != account.passphrase:
        raise Refused(_error("40012", "apikey/password is incorrect"))
    path = request.path.removeprefix("/bitget")
    timestamp = headers.get("ACCESS-TIMESTAMP", "")
    if request.method == "POST":
        body = await request.text()
        params: dict[str, Any] = orjson.loads(body) if body else {}
        origin = timestamp + "POST" + path + body
    else:
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        query = "&".join(f"{k}={params[k]}" for k in sorted(params))
        origin = timestamp + request.method + path + (f"?{query}" if query else "")
    digest = hmac.new(account.secret.encode(), origin.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(headers.get("ACCESS-SIGN", ""), base64.b64encode(digest).decode()):
        raise Refused(_error("40009", "sign signature error"))
    if not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > 30_000:
        raise Refused(_error("40008", "Request timestamp expired"))
    return account, params


def _state(request: web.Request) -> VenueState:
    return request.app[STATE_KEY]


def _decimals(step: Decimal) -> int:
    return max(0, -step.normalize().as_tuple().exponent)  # type: ignore[operator]


def _fee_detail(order: Order) -> str:
    return orjson.dumps(
        {
            order.fee_asset: {
                "deduction": "no",
                "feeCoinCode": order.fee_asset,
                "totalDeductionFee": "0",
                "totalFee": str(-order.fee),
            }
        }
    ).decode()


def _order_json(order: Order) -> dict[str, Any]:
    common = {
        "symbol": order.symbol_id,
        "orderId": order.order_id,
        "clientOid": order.client_order_id,
        "price": "0",
        "orderType": "market",
        "side": order.side,
        "priceAvg": str(order.avg_price),
        "baseVolume": str(order.filled),
        "quoteVolume": str(order.filled * order.avg_price),
        "cTime": str(order.created_ms),
        "uTime": str(order.updated_ms),
    }
    if order.category == "spot":
        return common | {
            "size": str(order.qty),
            "status": _SPOT_STATUS[order.status],
            "force": "gtc",
            "feeDetail": _fee_detail(order) if order.filled else None,
            "orderSource": "market",
        }
    return common | {
        "size": str(order.qty),
        "state": _MIX_STATUS[order.status],
        "force": "gtc",
        "fee": str(-order.fee),
        "posSide": "net",
        "marginCoin": "USDT",
        "posMode": "one_way_mode",
        "reduceOnly": "YES" if order.reduce_only else "NO",
        "tradeSide": "open",
        "marginMode": "isolated",
    }


async def spot_symbols(request: web.Request) -> web.Response:
    rows = [
        {
            "symbol": m.venue_id,
            "baseCoin": m.base,
            "quoteCoin": m.quote,
            "minTradeAmount": str(m.min_qty),
            "maxTradeAmount": "900000",
            "takerFeeRate": "0.001",
            "makerFeeRate": "0.001",
            "pricePrecision": str(_decimals(m.price_tick)),
            "quantityPrecision": str(_decimals(m.qty_step)),
            "quotePrecision": "8",
            "status": "online",
            "minTradeUSDT": str(m.min_notional),
        }
        for m in _state(request).markets.values()
    ]
    return _ok(rows)


async def margin_currencies(request: web.Request) -> web.Response:
    return _ok([])


async def contracts(request: web.Request) -> web.Response:
    if request.query.get("productType") != "USDT-FUTURES":
        return _ok([])
    rows = [
        {
            "symbol": m.venue_id,
            "baseCoin": m.base,
            "quoteCoin": m.quote,
            "symbolType": "perpetual",
            "symbolStatus": "normal",
            "supportMarginCoins": [m.quote],
            "minTradeNum": str(m.min_qty),
            "priceEndStep": "1",
            "pricePlace": str(_decimals(m.price_tick)),
            "volumePlace": str(_decimals(m.qty_step)),
            "sizeMultiplier": str(m.qty_step),
            "makerFeeRate": "0.0002",
            "takerFeeRate": "0.0006",
            "minTradeUSDT": str(m.min_notional),
            "minLever": "1",
            "maxLever": str(m.max_leverage),
            "launchTime": "1585526400000",
        }
        for m in _state(request).markets.values()
    ]
    return _ok(rows)


async def tickers(request: web.Request) -> web.Response:
    state, wanted = _state(request), request.query.get("symbol")
    mix = "/mix/" in request.path
    rows = []
    for symbol_id, mark in state.marks.items():
        if symbol_id in state.markets and wanted in (None, symbol_id):
            row = {
                "symbol": symbol_id,
                "lastPr": str(mark),
                "bidPr": str(mark),
                "askPr": str(mark),
                "high24h": str(mark),
                "low24h": str(mark),
                "open": str(mark),
                "baseVolume": "0",
                "quoteVolume": "0",
                "ts": str(int(time.time() * 1000)),
            }
            if mix:
                row |= {"markPrice": str(mark), "indexPrice": str(mark)}
            rows.append(row)
    return _ok(rows)


async def place_order(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    category = "linear" if "/mix/" in request.path else "spot"
    client_order_id = params.get("clientOid") or f"emu{state.next_order_id()}"
    if len(client_order_id) > 40:
        return _error("40017", "clientOid is too long")
    if state.client_order_id_taken(account.api_key, client_order_id):
        return _error("40786", "Duplicate clientOid")
    if params.get("orderType") != "market":
        return _error("40017", "Parameter verification exception orderType")
    symbol_id, side = params.get("symbol", ""), params.get("side", "")
    size = Decimal(str(params.get("size", "0")))
    market, mark = state.markets.get(symbol_id), state.marks.get(symbol_id)
    if category == "spot" and side == "buy" and market is not None and mark:
        size = (size / mark).quantize(market.qty_step, rounding=ROUND_DOWN)  # quote coin → base quantity
    order = Order(
        state.next_order_id(),
        client_order_id,
        account.api_key,
        category,
        symbol_id,
        side,
        size,
        reduce_only=params.get("reduceOnly") == "YES",
    )
    try:
        state.place(account, order, fault_of(request))
    except FillError as exc:
        return _reject(exc.reason, category)
    return _ok({"orderId": order.order_id, "clientOid": order.client_order_id})


def _reject(reason: str, category: str) -> web.Response:
    # HTTP 400 with Bitget's code string. ccxt (4.5, ts/src/bitget.ts) maps neither code: it raises a plain
    # ExchangeError, which adapters/ccxt_errors.py reads as a refusal by this table's codes.
    if reason in ("reduce_only_no_position", "reduce_only_wrong_side"):  # one-way mode: nothing on that side
        return _error("22002", "No position to close")
    if reason == "reduce_only_exceeds":
        return _error("40757", "Not enough position is available.")
    if reason == "insufficient":
        return (
            _error("43012", "Insufficient balance")
            if category == "spot"
            else _error("40762", "The order amount exceeds the balance")
        )
    if reason == "min_notional":
        return _error("45110", "less than the minimum amount 5 USDT")
    if reason == "bad_symbol":
        return _error("40034", "Parameter symbol does not exist")
    return _error("40808", "Parameter verification exception size checkBDScale error")


def _lookup(state: VenueState, account: Account, params: dict[str, Any], category: str) -> Order | None:
    return state.find_order(
        account.api_key,
        client_order_id=params.get("clientOid"),
        order_id=params.get("orderId"),
        category=category,
    )


async def spot_order_info(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    order = _lookup(state, account, params, "spot")
    return _ok([] if order is None else [_order_json(state.read_order(order))])


async def mix_order_detail(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    order = _lookup(state, account, params, "linear")
    if order is None:
        return _error("40109", "The data of the order cannot be found, please confirm the order number")
    return _ok(_order_json(state.read_order(order)))


async def cancel_order(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    category = "linear" if "/mix/" in request.path else "spot"
    order = _lookup(state, account, params, category)
    if order is None or not state.cancel(order):
        return (
            _error("43001", "The order does not exist")
            if category == "spot"
            else _error("40768", "Order does not exist")
        )
    return _ok({"orderId": order.order_id, "clientOid": order.client_order_id})


async def spot_assets(request: web.Request) -> web.Response:
    state = _state(request)
    account, _ = await _signed(request, state)
    return _ok(
        [
            {
                "coin": a,
                "available": str(v),
                "frozen": "0",
                "locked": "0",
                "limitAvailable": "0",
                "uTime": str(int(time.time() * 1000)),
            }
            for a, v in account.balances.items()
        ]
    )


async def mix_accounts(request: web.Request) -> web.Response:
    state = _state(request)
    account, _ = await _signed(request, state)
    usdt = account.balances.get("USDT", Decimal(0))
    return _ok(
        [
            {
                "marginCoin": "USDT",
                "locked": "0",
                "available": str(usdt),
                "crossedMaxAvailable": str(usdt),
                "isolatedMaxAvailable": str(usdt),
                "maxTransferOut": str(usdt),
                "accountEquity": str(usdt),
                "usdtEquity": str(usdt),
                "unrealizedPL": "0",
            }
        ]
    )


async def set_leverage(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    symbol = params.get("symbol", "")
    market = state.markets.get(symbol)
    if market is None:
        return _error("40034", "Parameter symbol does not exist")
    leverage = int(Decimal(str(params.get("leverage", "0"))))
    if not 1 <= leverage <= market.max_leverage:
        return _error("40797", "Exceeded the maximum settable leverage")
    account.leverage[("linear", symbol)] = leverage
    return _ok(
        {
            "symbol": symbol,
            "marginCoin": "USDT",
            "longLeverage": str(leverage),
            "shortLeverage": str(leverage),
            "crossMarginLeverage": str(leverage),
            "marginMode": "isolated",
        }
    )


async def set_margin_mode(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    symbol = params.get("symbol", "")
    account.margin_mode[("linear", symbol)] = str(params.get("marginMode"))
    return _ok({"symbol": symbol, "marginCoin": "USDT", "marginMode": params.get("marginMode")})


async def all_positions(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    product_type = params.get("productType")
    if not product_type:
        return _error("40019", "Parameter productType cannot be empty")
    if product_type != "USDT-FUTURES" or params.get("marginCoin", "USDT").upper() != "USDT":
        return _ok([])
    return _ok(
        [
            bitget_position(position, state.marks[symbol_id])
            for (category, symbol_id), position in account.futures.items()
            if category == "linear"
        ]
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v2/spot/public/symbols", spot_symbols)
    app.router.add_get("/api/v2/margin/currencies", margin_currencies)
    app.router.add_get("/api/v2/mix/market/contracts", contracts)
    app.router.add_get("/api/v2/spot/market/tickers", tickers)
    app.router.add_get("/api/v2/mix/market/tickers", tickers)
    app.router.add_post("/api/v2/spot/trade/place-order", place_order)
    app.router.add_post("/api/v2/mix/order/place-order", place_order)
    app.router.add_get("/api/v2/spot/trade/orderInfo", spot_order_info)
    app.router.add_get("/api/v2/mix/order/detail", mix_order_detail)
    app.router.add_post("/api/v2/spot/trade/cancel-order", cancel_order)
    app.router.add_post("/api/v2/mix/order/cancel-order", cancel_order)
    app.router.add_get("/api/v2/spot/account/assets", spot_assets)
    app.router.add_get("/api/v2/mix/account/accounts", mix_accounts)
    app.router.add_post("/api/v2/mix/account/set-leverage", set_leverage)
    app.router.add_post("/api/v2/mix/account/set-margin-mode", set_margin_mode)
    app.router.add_get("/api/v2/mix/position/all-position", all_positions)
