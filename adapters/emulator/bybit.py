"""Bybit v5 (unified trading account), as ccxt calls it: ``/v5/market/*``, ``/v5/order/*``,
``/v5/account/*``, ``/v5/position/set-leverage``, ``/v5/position/list``.

Signed requests carry ``X-BAPI-API-KEY``, ``X-BAPI-TIMESTAMP``, ``X-BAPI-RECV-WINDOW`` and ``X-BAPI-SIGN`` =
HMAC-SHA256(secret, timestamp + key + recv_window + (JSON body | query string)). Every answer is HTTP 200 with
``{"retCode", "retMsg", "result", "retExtInfo", "time"}``; errors are a non-zero ``retCode``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from adapters.emulator.positions import bybit_position
from adapters.emulator.state import STATE_KEY, Account, FillError, Order, Refused, VenueState, fault_of

WEIGHT_LIMIT = 600  # Bybit: 600 requests per 5 s per IP
WEIGHT_WINDOW_S = 5.0
TAKER_FEE = Decimal("0.001")
# Bybit fixes a reduce-only order's quantity to the position when it is larger: its refusal with nothing to reduce
# reads "current position is zero, cannot fix reduce-only order qty" (retCode 110017), and Place Order's
# reduceOnly/closeOnTrigger with qty "0" closes the whole position
# (https://bybit-exchange.github.io/docs/v5/order/create-order). So an oversized reduce-only order fills the
# position and no more; one with nothing to reduce is refused.
REDUCE_ONLY_EXCESS = "cap"

_STATUS = {
    "new": "New",
    "filled": "Filled",
    "partial_expired": "PartiallyFilledCanceled",
    "cancelled": "Cancelled",
}


def request_weight(method: str, path: str) -> int:
    return 1


def _envelope(ret_code: int, ret_msg: str, result: Any = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "retCode": ret_code,
        "retMsg": ret_msg,
        "result": result if result is not None else {},
        "retExtInfo": {},
        "time": int(time.time() * 1000),
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


def _ok(result: Any) -> web.Response:
    return _envelope(0, "OK", result)


def error_response(kind: str, retry_after_s: int) -> web.Response:
    if kind == "429":  # the per-UID limit: HTTP 200, retCode 10006, reset time in a header
        reset_ms = int((time.time() + retry_after_s) * 1000)
        return _envelope(
            10006,
            "Too many visits!",
            headers={
                "X-Bapi-Limit-Status": "0",
                "X-Bapi-Limit": "10",
                "X-Bapi-Limit-Reset-Timestamp": str(reset_ms),
            },
        )
    if kind == "418":  # the IP ban: HTTP 403, plain text
        return web.Response(status=403, text="access too frequent", headers={"Retry-After": str(retry_after_s)})
    if kind == "order_not_found":  # the order lists (realtime, history) without it
        return _ok({"list": [], "nextPageCursor": ""})
    return web.Response(status=503, text="<html><body>503 Service Unavailable</body></html>", content_type="text/html")


async def _signed(request: web.Request, state: VenueState) -> tuple[Account, dict[str, Any]]:
    if request.method == "POST":
        payload = await request.text()
        params: dict[str, Any] = orjson.loads(payload) if payload else {}
    else:
        payload = request.query_string
        params = dict(parse_qsl(payload, keep_blank_values=True))
    headers = request.headers
    account = state.accounts.get(headers.get("X-BAPI-API-KEY", ""))
    if account is None:
        raise Refused(_envelope(10003, "API key is invalid."))
    timestamp, recv_window = headers.get("X-BAPI-TIMESTAMP", ""), headers.get("X-BAPI-RECV-WINDOW", "5000")
    origin = timestamp + account.api_key + recv_window + payload
    expected = hmac.new(account.secret.encode(), origin.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(headers.get("X-BAPI-SIGN", ""), expected):
        raise Refused(_envelope(10004, "error sign! origin_string[...]"))
    if not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > int(recv_window):
        raise Refused(_envelope(10002, "invalid request, please check your server timestamp or recv_window param"))
    return account, params


def _state(request: web.Request) -> VenueState:
    return request.app[STATE_KEY]


def _order_json(order: Order) -> dict[str, Any]:
    value = order.filled * order.avg_price
    return {
        "orderId": order.order_id,
        "orderLinkId": order.client_order_id,
        "symbol": order.symbol_id,
        "category": order.category,
        "price": "0",
        "qty": str(order.qty),
        "side": order.side.capitalize(),
        "positionIdx": 0,
        "orderStatus": _STATUS[order.status],
        "orderType": "Market",
        "timeInForce": "IOC",
        "avgPrice": str(order.avg_price) if order.filled else "",
        "leavesQty": str(order.qty - order.filled),
        "cumExecQty": str(order.filled),
        "cumExecValue": str(value),
        "cumExecFee": str(order.fee),
        "cumFeeDetail": {order.fee_asset: str(order.fee)} if order.filled else {},
        "reduceOnly": order.reduce_only,
        "rejectReason": "EC_NoError",
        "triggerPrice": "0",
        "takeProfit": "0",
        "stopLoss": "0",
        "createdTime": str(order.created_ms),
        "updatedTime": str(order.updated_ms),
    }


async def instruments_info(request: web.Request) -> web.Response:
    state, category = _state(request), request.query.get("category", "spot")
    items: list[dict[str, Any]] = []
    if request.query.get("status") != "PreLaunch" and category in ("spot", "linear"):
        for m in state.markets.values():
            item: dict[str, Any] = {
                "symbol": m.venue_id,
                "baseCoin": m.base,
                "quoteCoin": m.quote,
                "status": "Trading",
                "priceFilter": {"tickSize": str(m.price_tick)},
            }
            if category == "spot":
                item |= {
                    "innovation": "0",
                    "marginTrading": "none",
                    "lotSizeFilter": {
                        "basePrecision": str(m.qty_step),
                        "quotePrecision": "0.0000001",
                        "minOrderQty": str(m.min_qty),
                        "maxOrderQty": "9000",
                        "minOrderAmt": str(m.min_notional),
                        "maxOrderAmt": "9000000",
                    },
                }
            else:
                item |= {
                    "contractType": "LinearPerpetual",
                    "settleCoin": m.quote,
                    "launchTime": "1585526400000",
                    "deliveryTime": "0",
                    "priceScale": "2",
                    "fundingInterval": 480,
                    "leverageFilter": {
                        "minLeverage": "1",
                        "maxLeverage": f"{m.max_leverage}.00",
                        "leverageStep": "0.01",
                    },
                    "priceFilter": {
                        "minPrice": str(m.price_tick),
                        "maxPrice": "1999999",
                        "tickSize": str(m.price_tick),
                    },
                    "lotSizeFilter": {
                        "maxOrderQty": "1190",
                        "minOrderQty": str(m.min_qty),
                        "qtyStep": str(m.qty_step),
                        "maxMktOrderQty": "500",
                        "minNotionalValue": str(m.min_notional),
                    },
                }
            items.append(item)
    return _ok({"category": category, "list": items})


async def tickers(request: web.Request) -> web.Response:
    state, category = _state(request), request.query.get("category", "spot")
    wanted = request.query.get("symbol")
    rows = []
    for symbol_id, mark in state.marks.items():
        if symbol_id in state.markets and wanted in (None, symbol_id):
            row = {
                "symbol": symbol_id,
                "lastPrice": str(mark),
                "bid1Price": str(mark),
                "ask1Price": str(mark),
                "prevPrice24h": str(mark),
                "highPrice24h": str(mark),
                "lowPrice24h": str(mark),
                "volume24h": "0",
                "turnover24h": "0",
            }
            if category == "linear":
                row |= {"markPrice": str(mark), "indexPrice": str(mark)}
            rows.append(row)
    return _ok({"category": category, "list": rows})


async def create_order(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    category = params.get("category", "spot")
    client_order_id = params.get("orderLinkId") or f"emu{state.next_order_id()}"
    if len(client_order_id) > 36:
        return _envelope(10001, "orderLinkId is too long")
    if state.client_order_id_taken(account.api_key, client_order_id):
        return _envelope(110072, "OrderLinkedID is duplicate")
    if params.get("orderType") != "Market":
        return _envelope(10001, "params error: orderType")
    if category == "spot" and params.get("marketUnit", "baseCoin") != "baseCoin" and params.get("side") == "Buy":
        return _envelope(10001, "emulator: spot market buys must be in baseCoin")
    order = Order(
        state.next_order_id(),
        client_order_id,
        account.api_key,
        category,
        params.get("symbol", ""),
        str(params.get("side", "")).lower(),
        Decimal(str(params.get("qty", "0"))),
        reduce_only=bool(params.get("reduceOnly")),
    )
    try:
        state.place(account, order, fault_of(request))
    except FillError as exc:
        return _reject(exc.reason)
    return _ok({"orderId": order.order_id, "orderLinkId": order.client_order_id})


def _reject(reason: str) -> web.Response:
    # 110017 "Reduce-only rule not satisfied" (https://bybit-exchange.github.io/docs/v5/error; ccxt/ccxt
    # ts/src/bybit.ts exceptions.exact '110017': InvalidOrder), HTTP 200 like every Bybit answer. Flat, the text
    # Bybit answers is "current position is zero, cannot fix reduce-only order qty".
    if reason == "reduce_only_no_position":
        return _envelope(110017, "current position is zero, cannot fix reduce-only order qty")
    if reason.startswith("reduce_only_"):
        return _envelope(110017, "Reduce-only rule not satisfied")
    if reason == "insufficient":
        return _envelope(110007, "ab not enough for new order")
    if reason == "min_notional":
        return _envelope(110094, "Order does not meet minimum order value")
    if reason == "bad_symbol":
        return _envelope(10001, "params error: symbol invalid")
    return _envelope(10001, "params error: qty invalid")


def _matching(state: VenueState, account: Account, params: dict[str, Any], *, open_only: bool) -> list[Order]:
    link_id, order_id, symbol = params.get("orderLinkId"), params.get("orderId"), params.get("symbol")
    found = []
    for order in reversed(state.orders):
        if order.api_key != account.api_key or order.category != params.get("category", "spot"):
            continue
        if (link_id and order.client_order_id != link_id) or (order_id and order.order_id != order_id):
            continue
        if symbol and order.symbol_id != symbol:
            continue
        state.read_order(order)
        if (order.status == "new") == open_only:
            found.append(order)
    return found


async def order_realtime(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    orders = _matching(state, account, params, open_only=True)
    return _ok({"category": params.get("category"), "list": [_order_json(o) for o in orders], "nextPageCursor": ""})


async def order_history(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    orders = _matching(state, account, params, open_only=False)
    return _ok({"category": params.get("category"), "list": [_order_json(o) for o in orders], "nextPageCursor": ""})


async def cancel_order(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    order = state.find_order(
        account.api_key,
        client_order_id=params.get("orderLinkId"),
        order_id=params.get("orderId"),
        category=params.get("category", "spot"),
    )
    if order is None or not state.cancel(order):
        if params.get("category") == "spot":
            return _envelope(170213, "Order does not exist.")
        return _envelope(110001, "Order does not exist.")
    return _ok({"orderId": order.order_id, "orderLinkId": order.client_order_id})


async def wallet_balance(request: web.Request) -> web.Response:
    state = _state(request)
    account, _ = await _signed(request, state)
    coins = [
        {
            "coin": a,
            "walletBalance": str(v),
            "equity": str(v),
            "availableToWithdraw": str(v),
            "locked": "0",
            "totalPositionIM": "0",
            "totalOrderIM": "0",
            "borrowAmount": "0",
            "accruedInterest": "0",
        }
        for a, v in account.balances.items()
    ]
    return _ok({"list": [{"accountType": "UNIFIED", "totalEquity": "0", "coin": coins}]})


async def set_margin_mode(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    account.margin_mode[("account", "*")] = str(params.get("setMarginMode"))  # account-wide on a UTA
    return _ok({"reasons": []})


async def set_leverage(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    symbol = params.get("symbol", "")
    market = state.markets.get(symbol)
    if market is None:
        return _envelope(10001, "params error: symbol invalid")
    leverage = int(Decimal(str(params.get("buyLeverage", "0"))))
    if not 1 <= leverage <= market.max_leverage:
        return _envelope(10001, "leverage invalid")
    key = ("linear", symbol)
    if account.leverage.get(key) == leverage:
        return _envelope(110043, "Set leverage not modified")
    account.leverage[key] = leverage
    return _ok({})


async def position_list(request: web.Request) -> web.Response:
    """Linear positions: ``symbol`` (listed even when flat, size "0") or every one of ``settleCoin``."""
    state = _state(request)
    account, params = await _signed(request, state)
    symbol, settle = params.get("symbol"), params.get("settleCoin")
    if params.get("category") != "linear":
        return _envelope(10001, "params error: category only support linear or inverse or option")
    if not symbol and not settle:
        return _envelope(10001, "Missing some parameters that must be filled in, symbol or settleCoin")
    if symbol and symbol not in state.markets:
        return _envelope(10001, "params error: symbol invalid")
    held = {sid: p for (category, sid), p in account.futures.items() if category == "linear"}
    wanted = [symbol] if symbol else [sid for sid in held if state.markets[sid].quote == settle]
    rows = [
        bybit_position(held.get(sid), sid, state.marks[sid], seq)
        for seq, sid in enumerate(wanted, start=1)
        if sid in held or symbol
    ]
    return _ok({"category": "linear", "list": rows, "nextPageCursor": ""})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v5/market/instruments-info", instruments_info)
    app.router.add_get("/v5/market/tickers", tickers)
    app.router.add_post("/v5/order/create", create_order)
    app.router.add_get("/v5/order/realtime", order_realtime)
    app.router.add_get("/v5/order/history", order_history)
    app.router.add_post("/v5/order/cancel", cancel_order)
    app.router.add_get("/v5/account/wallet-balance", wallet_balance)
    app.router.add_post("/v5/account/set-margin-mode", set_margin_mode)
    app.router.add_post("/v5/position/set-leverage", set_leverage)
    app.router.add_get("/v5/position/list", position_list)
