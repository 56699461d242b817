"""``EmulatorServer``: one aiohttp server on 127.0.0.1 (port 0) that speaks each venue's REST subset.

Each venue lives under its own prefix (``/binance``, ``/bybit``, ``/bitget``); point a ccxt client at it with
``url_for(venue)``. Runs on the caller's event loop (tests: the test's loop).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any, Protocol, cast

from aiohttp import web

from adapters.emulator.positions import FuturesPosition
from adapters.emulator.state import (
    DEFAULT_MARKETS,
    FAULT_KEY,
    FAULTS,
    STATE_KEY,
    Account,
    Fault,
    MarketSpec,
    Refused,
    VenueState,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HANG_KEY = web.AppKey("hang", asyncio.Event)

_HTML_ERROR = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


class VenueModule(Protocol):
    """What each venue module (``binance``, ``bybit``, ``bitget``) provides."""

    WEIGHT_LIMIT: int
    WEIGHT_WINDOW_S: float
    TAKER_FEE: Decimal
    REDUCE_ONLY_EXCESS: str  # "reject" | "cap": a reduce-only order larger than the position

    def add_routes(self, app: web.Application) -> None: ...

    def request_weight(self, method: str, path: str) -> int: ...

    def error_response(self, kind: str, retry_after_s: int) -> web.Response: ...


def _venue_module(name: str) -> VenueModule:
    if name not in ("binance", "bybit", "bitget"):
        raise ValueError(f"unknown venue {name!r}")
    return cast("VenueModule", importlib.import_module(f"adapters.emulator.{name}"))


def _fault_middleware(module: VenueModule, state: VenueState, hang: asyncio.Event, retry_after_s: int) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        state.requests.append((request.method, path))
        state.add_weight(module.request_weight(request.method, path))
        fault = state.take_fault(path, request.method)
        if fault in {"429", "418", "5xx", "order_not_found"}:
            return module.error_response(fault, retry_after_s)
        request[FAULT_KEY] = fault or ""
        try:
            response = await handler(request)
        except Refused as refused:
            return refused.response
        if fault == "html":
            return web.Response(status=200, text=_HTML_ERROR, content_type="text/html")
        if fault == "truncated_json" and isinstance(response, web.Response) and response.body is not None:
            body = bytes(response.body)  # type: ignore[arg-type]
            return web.Response(status=200, body=body[: len(body) // 2], content_type="application/json")
        if fault == "accept_then_5xx":
            return module.error_response("5xx", retry_after_s)  # the order exists; the answer says 503
        if fault == "accept_then_timeout":
            await hang.wait()  # the order exists; the answer never comes (until the server stops)
        if fault == "accept_then_disconnect" and request.transport is not None:
            request.transport.close()
        return response

    return middleware


def _venue_id(symbol: str) -> str:
    return symbol.split(":", maxsplit=1)[0].replace("/", "")


class EmulatorServer:
    """A local exchange for tests: ``start()`` → base URL; accounts keyed by API key, signatures checked."""

    def __init__(
        self,
        venues: tuple[str, ...] = ("binance", "bybit", "bitget"),
        *,
        markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS,
        retry_after_s: int = 2,
        client_id_scope: str = "all",
    ) -> None:
        """``client_id_scope``: ``"all"`` refuses any client order id used before; ``"open"`` only one held by an
        open order, Binance's documented rule (the weakest), under which a blind re-send makes a second order."""
        self._marks: dict[str, Decimal] = {"BTCUSDT": Decimal(50000), "ETHUSDT": Decimal(3000)}
        self._modules = {name: _venue_module(name) for name in venues}
        self.venues = {
            name: VenueState(
                name,
                markets,
                self._marks,
                weight_limit=module.WEIGHT_LIMIT,
                weight_window_s=module.WEIGHT_WINDOW_S,
                taker_fee=module.TAKER_FEE,
                client_id_scope=client_id_scope,
                reduce_only_excess=module.REDUCE_ONLY_EXCESS,
            )
            for name, module in self._modules.items()
        }
        self._retry_after_s = retry_after_s
        self._hang = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        self._hang = asyncio.Event()
        root = web.Application()
        for name, module in self._modules.items():
            state = self.venues[name]
            sub = web.Application(middlewares=[_fault_middleware(module, state, self._hang, self._retry_after_s)])
            sub[STATE_KEY] = state
            sub[HANG_KEY] = self._hang
            module.add_routes(sub)
            root.add_subapp(f"/{name}", sub)
        self._runner = web.AppRunner(root, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        self._hang.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url_for(self, venue: str) -> str:
        """The API base URL of one venue (what ``CcxtVenue(api_base_url=...)`` takes)."""
        return f"{self.base_url}/{venue}"

    # -- test controls ---------------------------------------------------------------------------------

    def add_account(self, venue: str, api_key: str, secret: str, passphrase: str | None = None) -> None:
        self.venues[venue].accounts[api_key] = Account(api_key, secret, passphrase)

    def deposit(self, venue: str, api_key: str, asset: str, amount: Decimal | int | str) -> None:
        balances = self.venues[venue].accounts[api_key].balances
        balances[asset] = balances.get(asset, Decimal(0)) + Decimal(amount)

    def balance(self, venue: str, api_key: str, asset: str) -> Decimal:
        return self.venues[venue].accounts[api_key].balances.get(asset, Decimal(0))

    def set_mark(self, symbol: str, price: Decimal | int | str) -> None:
        """``symbol`` unified ("BTC/USDT", "BTC/USDT:USDT") or a venue id ("BTCUSDT")."""
        self._marks[_venue_id(symbol)] = Decimal(price)

    def position(self, venue: str, api_key: str, symbol: str) -> FuturesPosition | None:
        """A copy of the account's futures position on ``symbol`` (unified or venue id), ``None`` when flat."""
        position = self.venues[venue].accounts[api_key].futures.get(("linear", _venue_id(symbol)))
        return None if position is None else replace(position)

    def liquidate(self, venue: str, api_key: str, symbol: str) -> Decimal:
        """The venue liquidates the account's futures position on ``symbol``: the position is gone and its
        isolated margin is lost (taken from the wallet). Returns the margin lost; ``KeyError`` when flat."""
        state = self.venues[venue]
        account, venue_id = state.accounts[api_key], _venue_id(symbol)
        position = account.futures.pop(("linear", venue_id), None)
        if position is None:
            raise KeyError(f"{venue}: {api_key} holds no {venue_id} position")
        quote = state.markets[venue_id].quote
        account.balances[quote] = account.balances.get(quote, Decimal(0)) - position.margin
        state.liquidations.append((api_key, venue_id, position))
        return position.margin

    def set_liquidation_price(self, venue: str, api_key: str, symbol: str, price: Decimal | int | str | None) -> None:
        """Make the venue report ``price`` as the position's liquidation price (``None``: back to the formula).
        The override holds until the position grows. ``KeyError`` when flat."""
        position = self.venues[venue].accounts[api_key].futures.get(("linear", _venue_id(symbol)))
        if position is None:
            raise KeyError(f"{venue}: {api_key} holds no {_venue_id(symbol)} position")
        position.liquidation_override = None if price is None else Decimal(price)

    def inject(self, venue: str, fault: str, *, count: int = 1, path_contains: str | None = None) -> None:
        """The next ``count`` requests to ``venue`` whose path contains ``path_contains`` get ``fault``."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(FAULTS)}")
        self.venues[venue].faults.append(Fault(fault, count, path_contains))

    def order_count(self, client_order_id: str, venue: str | None = None) -> int:
        states = [self.venues[venue]] if venue else list(self.venues.values())
        return sum(state.order_count(client_order_id) for state in states)

    def leverage(self, venue: str, api_key: str) -> dict[tuple[str, str], int]:
        return dict(self.venues[venue].accounts[api_key].leverage)

    def weight_excess(self, venue: str) -> list[tuple[float, int]]:
        """Windows in which the client used more weight than the venue allows (empty when it behaved)."""
        return list(self.venues[venue].weight_excess)

    def requests(self, venue: str) -> list[tuple[str, str]]:
        return list(self.venues[venue].requests)
