"""Binance spot (``/api/v3``) and USDⓈ-M futures (``/fapi/v1``, ``/fapi/v2|v3/account``,
``/fapi/v3/positionRisk``), as ccxt calls them.

Signed requests: ``X-MBX-APIKEY`` header, HMAC-SHA256 of the query string (GET/DELETE) or form body (POST)
up to ``&signature=``. Errors are ``{"code": -NNNN, "msg": ...}`` with Binance's codes and HTTP statuses.
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

from adapters.emulator.binance_wire import order_json, symbol_entry
from adapters.emulator.positions import binance_position
from adapters.emulator.state import STATE_KEY, Account, FillError, Order, Refused, VenueState, fault_of

# One ledger for both APIs, at the stricter futures limit (spot allows 6000/min).
WEIGHT_LIMIT = 2400
WEIGHT_WINDOW_S = 60.0
TAKER_FEE = Decimal("0.001")
# USDⓈ-M refuses a reduce-only order that would not only reduce: "rejected [...] the order is in the same
# direction as the open position, or the order is in the opposite direction and the position size exceeds the
# open position" (Binance FAQ "Summary of Failed Orders in Binance Futures",
# https://www.binance.com/en/support/faq/360039707291). So too with no position at all.
REDUCE_ONLY_EXCESS = "reject"

_WEIGHTS = {  # Binance's documented IP weights
    ("GET", "/api/v3/exchangeInfo"): 20,
    ("POST", "/api/v3/order"): 1,
    ("GET", "/api/v3/order"): 4,
    ("DELETE", "/api/v3/order"): 1,
    ("GET", "/api/v3/openOrders"): 6,
    ("GET", "/api/v3/account"): 20,
    ("GET", "/api/v3/ticker/24hr"): 40,
    ("GET", "/fapi/v1/exchangeInfo"): 1,
    ("POST", "/fapi/v1/order"): 1,
    ("GET", "/fapi/v1/order"): 1,
    ("DELETE", "/fapi/v1/order"): 1,
    ("GET", "/fapi/v1/openOrders"): 1,
    ("GET", "/fapi/v2/account"): 5,
    ("GET", "/fapi/v3/account"): 5,
    ("GET", "/fapi/v1/ticker/24hr"): 40,
    ("GET", "/fapi/v3/positionRisk"): 5,
}


def request_weight(method: str, path: str) -> int:
    return _WEIGHTS.get((method, path.removeprefix("/binance")), 1)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json", headers=headers)


def _error(code: int, msg: str, status: int = 400) -> web.Response:
    return _json({"code": code, "msg": msg}, status)


def error_response(kind: str, retry_after_s: int) -> web.Response:
    headers = {"Retry-After": str(retry_after_s)}
    if kind == "429":
        msg = "Too many requests; current limit of IP is 2400 requests per minute."
        return _json({"code": -1003, "msg": msg}, 429, headers)
    if kind == "418":
        until_ms = int((time.time() + retry_after_s) * 1000)
        msg = f"Way too much request weight used; IP banned until {until_ms}. Please use WebSocket Streams."
        return _json({"code": -1003, "msg": msg}, 418, headers)
    if kind == "order_not_found":
        return _error(-2013, "Order does not exist.")
    return web.Response(status=503, text="<html><body>503 Service Unavailable</body></html>", content_type="text/html")


async def _signed(request: web.Request, state: VenueState) -> tuple[Account, dict[str, str]]:
    payload = await request.text() if request.method == "POST" else request.query_string
    account = state.accounts.get(request.headers.get("X-MBX-APIKEY", ""))
    if account is None:
        raise Refused(_error(-2015, "Invalid API-key, IP, or permissions for action.", 401))
    unsigned, sep, signature = payload.rpartition("&signature=")
    expected = hmac.new(account.secret.encode(), unsigned.encode(), hashlib.sha256).hexdigest()
    if not sep or not hmac.compare_digest(signature, expected):
        raise Refused(_error(-1022, "Signature for this request is not valid."))
    params = dict(parse_qsl(unsigned, keep_blank_values=True))
    recv_window = int(params.get("recvWindow", "5000"))
    if abs(time.time() * 1000 - int(params.get("timestamp", "0"))) > recv_window:
        raise Refused(_error(-1021, "Timestamp for this request is outside of the recvWindow."))
    return account, params


def _state(request: web.Request) -> VenueState:
    return request.app[STATE_KEY]


def _category(request: web.Request) -> str:
    return "linear" if "/fapi/" in request.path else "spot"


async def exchange_info(request: web.Request) -> web.Response:
    linear = _category(request) == "linear"
    symbols = [symbol_entry(market, linear=linear) for market in _state(request).markets.values()]
    now = int(time.time() * 1000)
    return _json({"timezone": "UTC", "serverTime": now, "rateLimits": [], "exchangeFilters": [], "symbols": symbols})


async def create_order(request: web.Request) -> web.Response:
    state, category = _state(request), _category(request)
    account, params = await _signed(request, state)
    client_order_id = params.get("newClientOrderId") or f"emu{state.next_order_id()}"
    if len(client_order_id) > 36:
        return _error(-4015 if category == "linear" else -1100, "Client order id is not valid.")
    if state.client_order_id_taken(account.api_key, client_order_id, category):
        if category == "linear":
            return _error(-4116, "ClientOrderId is duplicated.")
        return _error(-2010, "Duplicate order sent.")
    if params.get("type") != "MARKET":
        return _error(-1116, "Invalid orderType.")
    order = Order(
        state.next_order_id(),
        client_order_id,
        account.api_key,
        category,
        params.get("symbol", ""),
        params.get("side", "").lower(),
        Decimal(params.get("quantity", "0")),
        reduce_only=params.get("reduceOnly") == "true",
    )
    try:
        state.place(account, order, fault_of(request))
    except FillError as exc:
        return _reject(exc.reason, category)
    full = category == "spot" and params.get("newOrderRespType", "FULL") == "FULL"  # FULL: MARKET default
    return _json(order_json(order, full=full))


def _reject(reason: str, category: str) -> web.Response:
    if reason.startswith("reduce_only_"):
        # HTTP 400 {"code":-2022,"msg":"ReduceOnly Order is rejected."}: no position, the position's own side, or
        # more than the position. Code, text and status as recorded in ccxt's USDⓈ-M table (ccxt/ccxt
        # ts/src/binance.ts, exceptions.linear.exact: '-2022': InvalidOrder, {"code":-2022,"msg":"ReduceOnly Order
        # is rejected."}); Binance's 4xx error bodies are {"code", "msg"}.
        return _error(-2022, "ReduceOnly Order is rejected.")
    if reason == "bad_symbol":
        return _error(-1121, "Invalid symbol.")
    if reason == "insufficient":
        if category == "linear":
            return _error(-2019, "Margin is insufficient.")
        return _error(-2010, "Account has insufficient balance for requested action.")
    if reason == "min_notional":
        if category == "linear":
            return _error(-4164, "Order's notional must be no smaller than 5 (unless you choose reduce only).")
        return _error(-1013, "Filter failure: NOTIONAL")
    if reason == "no_price":
        return _error(-1013, "Filter failure: PERCENT_PRICE")
    return _error(-1013, "Filter failure: LOT_SIZE")


async def get_order(request: web.Request) -> web.Response:
    state, category = _state(request), _category(request)
    account, params = await _signed(request, state)
    order = state.find_order(
        account.api_key,
        client_order_id=params.get("origClientOrderId"),
        order_id=params.get("orderId"),
        category=category,
    )
    if order is None or order.symbol_id != params.get("symbol"):
        return _error(-2013, "Order does not exist.")
    return _json(order_json(state.read_order(order)))


async def cancel_order(request: web.Request) -> web.Response:
    state, category = _state(request), _category(request)
    account, params = await _signed(request, state)
    order = state.find_order(
        account.api_key,
        client_order_id=params.get("origClientOrderId"),
        order_id=params.get("orderId"),
        category=category,
    )
    if order is None or not state.cancel(order):
        return _error(-2011, "Unknown order sent.")
    return _json(order_json(order))


async def open_orders(request: web.Request) -> web.Response:
    state, category = _state(request), _category(request)
    account, params = await _signed(request, state)
    symbol = params.get("symbol")
    return _json(
        [
            order_json(o)
            for o in state.orders
            if o.api_key == account.api_key
            and o.category == category
            and o.status == "new"
            and (symbol is None or o.symbol_id == symbol)
        ]
    )


async def account_info(request: web.Request) -> web.Response:
    state = _state(request)
    account, _ = await _signed(request, state)
    now = int(time.time() * 1000)
    if _category(request) == "spot":
        balances = [{"asset": a, "free": str(v), "locked": "0"} for a, v in account.balances.items()]
        return _json(
            {
                "makerCommission": 10,
                "takerCommission": 10,
                "canTrade": True,
                "canWithdraw": True,
                "canDeposit": True,
                "updateTime": now,
                "accountType": "SPOT",
                "balances": balances,
                "permissions": ["SPOT"],
            }
        )
    assets = [
        {
            "asset": a,
            "walletBalance": str(v),
            "unrealizedProfit": "0",
            "marginBalance": str(v),
            "maintMargin": "0",
            "initialMargin": "0",
            "positionInitialMargin": "0",
            "openOrderInitialMargin": "0",
            "crossWalletBalance": str(v),
            "crossUnPnl": "0",
            "availableBalance": str(v),
            "maxWithdrawAmount": str(v),
            "updateTime": now,
        }
        for a, v in account.balances.items()
    ]
    return _json({"totalWalletBalance": "0", "assets": assets, "positions": []})


async def position_risk(request: web.Request) -> web.Response:
    """Position Information V3: only symbols with a position (``symbol`` narrows it to one)."""
    state = _state(request)
    account, params = await _signed(request, state)
    symbol = params.get("symbol")
    if symbol is not None and symbol not in state.markets:
        return _error(-1121, "Invalid symbol.")
    return _json(
        [
            binance_position(position, state.marks[symbol_id])
            for (category, symbol_id), position in account.futures.items()
            if category == "linear" and symbol in (None, symbol_id)
        ]
    )


async def set_leverage(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    symbol, leverage = params.get("symbol", ""), int(params.get("leverage", "0"))
    market = state.markets.get(symbol)
    if market is None:
        return _error(-1121, "Invalid symbol.")
    if not 1 <= leverage <= market.max_leverage:
        return _error(-4028, f"Leverage {leverage} is not valid")
    account.leverage[("linear", symbol)] = leverage
    return _json({"leverage": leverage, "maxNotionalValue": "1000000", "symbol": symbol})


async def set_margin_type(request: web.Request) -> web.Response:
    state = _state(request)
    account, params = await _signed(request, state)
    key, mode = ("linear", params.get("symbol", "")), params.get("marginType", "")
    if account.margin_mode.get(key, "CROSSED") == mode:
        return _error(-4046, "No need to change margin type.")
    account.margin_mode[key] = mode
    return _json({"code": 200, "msg": "success"})


async def ticker_24hr(request: web.Request) -> web.Response:
    state = _state(request)
    wanted = orjson.loads(request.query["symbols"]) if "symbols" in request.query else None
    now = int(time.time() * 1000)
    rows = []
    for symbol_id, mark in state.marks.items():
        if symbol_id in state.markets and (wanted is None or symbol_id in wanted):
            rows.append(
                {
                    "symbol": symbol_id,
                    "lastPrice": str(mark),
                    "bidPrice": str(mark),
                    "askPrice": str(mark),
                    "openPrice": str(mark),
                    "highPrice": str(mark),
                    "lowPrice": str(mark),
                    "volume": "0",
                    "quoteVolume": "0",
                    "openTime": now - 86_400_000,
                    "closeTime": now,
                    "count": 0,
                }
            )
    return _json(rows)


def add_routes(app: web.Application) -> None:
    for prefix in ("/api/v3", "/fapi/v1"):
        app.router.add_get(f"{prefix}/exchangeInfo", exchange_info)
        app.router.add_post(f"{prefix}/order", create_order)
        app.router.add_get(f"{prefix}/order", get_order)
        app.router.add_delete(f"{prefix}/order", cancel_order)
        app.router.add_get(f"{prefix}/openOrders", open_orders)
        app.router.add_get(f"{prefix}/ticker/24hr", ticker_24hr)
    app.router.add_get("/api/v3/account", account_info)
    app.router.add_get("/fapi/v2/account", account_info)
    app.router.add_get("/fapi/v3/account", account_info)
    app.router.add_get("/fapi/v3/positionRisk", position_risk)
    app.router.add_post("/fapi/v1/leverage", set_leverage)
    app.router.add_post("/fapi/v1/marginType", set_margin_type)
