"""``CcxtVenue``: a ``VenueAdapter`` over ``ccxt.async_support`` for binance, bybit and bitget.

Every coroutine runs on the engine's I/O loop. Markets are loaded once per venue by a credential-less
market-data client and injected into each follower's client (one per account, created lazily), so followers
never call ``load_markets``. ccxt's own rate limiter is off: the exchange actor owns the venue's weight budget
(``request_weight``). Errors are classified by ``adapters.ccxt_errors`` following the outcome policy of
``engine/venue.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt

from adapters.ccxt_errors import CredentialRejected, classify
from adapters.ccxt_orders import is_duplicate, market_info, to_venue_order, to_venue_position
from adapters.ccxt_profiles import PROFILES, VenueProfile, rewrite_api_urls
from adapters.credentials import Credential, CredentialError, CredentialStore
from engine.clock import Clock
from engine.logs import get_logger
from engine.messages import MarketInfo, OrderRequest, Side, TradeType, VenueOrder, VenuePosition
from engine.venue import LiquidationModel, OrderRejected, OutcomeUnknown, RetryableError, VenueError

__all__ = ["CcxtVenue"]

_log = get_logger("adapters.ccxt_venue")

_DEFAULT_TIMEOUT_MS = 10_000


class CcxtVenue:
    """One venue (``binance``/``bybit``/``bitget``) and one trade type, for every follower account on it."""

    funds_accounts = False
    settable_marks = False
    supports_mark_batch = True
    liquidation_model: LiquidationModel = "venue"

    def __init__(
        self,
        name: str,
        *,
        trade_type: TradeType,
        api_base_url: str | None,
        credentials: CredentialStore,
        clock: Clock,
        margin_mode: str = "isolated",
        ccxt_options: Mapping[str, Any] | None = None,
        credential_refs: Mapping[int, str] | None = None,
    ) -> None:
        if name not in PROFILES:
            raise ValueError(f"unsupported ccxt venue {name!r}; one of {sorted(PROFILES)}")
        self.name = name
        self.trade_type = trade_type
        self._profile: VenueProfile = PROFILES[name]
        self._api_base_url = api_base_url
        self._credentials = credentials
        self._clock = clock  # the engine's: a venue's "banned until" becomes a wait on it
        self._margin_mode = margin_mode
        self._ccxt_options = dict(ccxt_options or {})
        self._refs: dict[int, str] = dict(credential_refs or {})
        self._market_client: Any = None
        self._markets: dict[str, MarketInfo] | None = None
        self._markets_lock = asyncio.Lock()
        self._clients: dict[int, tuple[Any, Credential]] = {}
        self._retired: list[Any] = []
        self._leverage_set: dict[tuple[int, str], int] = {}  # (user, symbol) -> leverage already on the venue

    # -- accounts and clients --------------------------------------------------------------------------

    def register_account(self, user_id: int, credential_ref: str) -> None:
        """Tell the venue which credential a user trades with (the ``users`` row's reference)."""
        if self._refs.get(user_id) != credential_ref:
            self._refs[user_id] = credential_ref
            retired = self._clients.pop(user_id, None)  # rebuilt lazily with the new credential
            if retired is not None:
                self._retired.append(retired[0])  # its session may be in use: closed by ``close()``

    def _new_client(self, credential: Credential | None) -> Any:
        options = self._profile.options(self.trade_type)
        options.update(self._ccxt_options.get("options", {}))
        config: dict[str, Any] = {"enableRateLimit": False, "timeout": _DEFAULT_TIMEOUT_MS}
        config.update({k: v for k, v in self._ccxt_options.items() if k != "options"})
        config["options"] = options
        if credential is not None:
            config.update(credential.ccxt_config())
        client = getattr(ccxt, self.name)(config)
        client.enableLastJsonResponse = True  # fetch_positions tells "no positions" from "no JSON" by it
        # Currencies are not needed to trade and cost extra calls (bitget cannot turn them off by option).
        client.has = dict(client.has, fetchCurrencies=False)
        if self._api_base_url is not None:
            client.urls["api"] = rewrite_api_urls(client.urls["api"], self._api_base_url)
            if self.name == "binance":
                _route_binance_exceptions(client)
        return client

    async def _client(self, user_id: int) -> tuple[Any, Credential]:
        await self._ensure_markets()
        # No await from here to the insert: concurrent first calls for one user share one client.
        entry = self._clients.get(user_id)
        if entry is not None:
            return entry
        try:
            credential = self._credentials.resolve(self._refs.get(user_id))
        except CredentialError as exc:
            raise CredentialRejected(f"user {user_id}: {exc}") from None
        client = self._new_client(credential)
        client.set_markets_from_exchange(self._market_client)
        self._clients[user_id] = (client, credential)
        _log.info("venue.client_created", venue=self.name, user_id=user_id, trade_type=self.trade_type.value)
        return client, credential

    # -- markets ---------------------------------------------------------------------------------------

    async def _ensure_markets(self) -> dict[str, MarketInfo]:
        async with self._markets_lock:
            if self._markets is None:
                if self._market_client is None:
                    self._market_client = self._new_client(None)
                try:
                    await self._market_client.load_markets()
                except Exception as exc:  # noqa: BLE001 - a boundary: whatever failed is reported, never raised through
                    raise classify(exc, order_sent=False, now_s=self._clock.now().timestamp()) from None
                markets = {}
                for market in self._market_client.markets.values():
                    info = market_info(market, self.trade_type, self._profile.default_max_leverage)
                    if info is not None:
                        markets[info.symbol] = info
                self._markets = markets
                _log.info(
                    "venue.markets_loaded",
                    venue=self.name,
                    trade_type=self.trade_type.value,
                    markets=len(markets),
                )
            return self._markets

    async def load_markets(self) -> dict[str, MarketInfo]:
        return dict(await self._ensure_markets())

    # -- orders ----------------------------------------------------------------------------------------

    def _check_client_order_id(self, client_order_id: str) -> None:
        if len(client_order_id) > self._profile.client_order_id_max_len or not (
            self._profile.client_order_id_charset.match(client_order_id)
        ):
            raise OrderRejected(f"client order id {client_order_id!r} breaks {self.name}'s rules")

    async def _ensure_leverage(self, client: Any, credential: Credential, request: OrderRequest) -> None:
        key = (request.user_id, request.symbol)
        if self._leverage_set.get(key) == request.leverage:
            return
        try:
            # Already in that mode: the venue says so with an error.
            with contextlib.suppress(ccxt.MarginModeAlreadySet, ccxt.NoChange):
                await client.set_margin_mode(self._margin_mode, request.symbol)
            await client.set_leverage(request.leverage, request.symbol)
        except ccxt.BaseError as exc:
            if _already_set(exc):
                pass
            else:
                raise self._classify(exc, client, credential, order_sent=False) from None
        self._leverage_set[key] = request.leverage
        _log.info(
            "venue.leverage_set",
            venue=self.name,
            user_id=request.user_id,
            symbol=request.symbol,
            leverage=request.leverage,
            margin_mode=self._margin_mode,
        )

    async def create_order(self, request: OrderRequest) -> VenueOrder:
        self._check_client_order_id(request.client_order_id)
        if request.trade_type is not self.trade_type:
            raise OrderRejected(
                f"{self.name} is configured for {self.trade_type.value}, not {request.trade_type.value}"
            )
        markets = await self._ensure_markets()
        market = markets.get(request.symbol)
        if market is None:
            raise OrderRejected(f"{self.name} has no {self.trade_type.value} market {request.symbol}")
        client, credential = await self._client(request.user_id)
        params: dict[str, Any] = {self._profile.client_order_id_param: request.client_order_id}
        if request.trade_type is TradeType.FUTURES:
            await self._ensure_leverage(client, credential, request)
            if request.reduce_only:
                params["reduceOnly"] = True
            if self._profile.margin_mode_in_order:
                params["marginMode"] = self._margin_mode
        # Market orders carry no price, except where a spot buy is sized in the quote coin (qty x hint).
        price = None
        if (
            self._profile.spot_buy_sized_in_quote
            and request.trade_type is TradeType.SPOT
            and (request.side is Side.BUY)
        ):
            price = float(request.price_hint)
        log = _log.bind(
            venue=self.name,
            user_id=request.user_id,
            client_order_id=request.client_order_id,
            symbol=request.symbol,
        )
        try:
            raw = await client.create_order(
                request.symbol, "market", request.side.value, float(request.qty), price, params
            )
        except ccxt.BaseError as exc:
            if is_duplicate(exc, self._profile):
                # The venue already holds this client order id (a retry after all): answer with that order.
                log.info("order.duplicate_client_id")
                existing = await self._fetch_existing(request, client, credential)
                if existing is not None:
                    return existing
                # ccxt calls the duplicate an invalid order (REJECTED, funds released), yet it proves the order
                # exists; the read can lag (Bybit's order history). Resolution by client order id will find it.
                unknown = OutcomeUnknown(
                    f"{self.name} holds client order id {request.client_order_id} (duplicate) but cannot read it back"
                )
                log.warning("order.create_failed", outcome=type(unknown).__name__, error=str(unknown))
                raise unknown from None
            error = self._classify(exc, client, credential, order_sent=True)
            log.warning("order.create_failed", outcome=type(error).__name__, error=str(error))
            raise error from None
        except Exception as exc:  # noqa: BLE001 - ccxt parsing a garbage body: the order may exist
            error = self._classify(exc, client, credential, order_sent=True)
            log.warning("order.create_failed", outcome=type(error).__name__, error=str(error))
            raise error from None
        order = self._to_order(raw, market, request.client_order_id)
        if order is None:  # an ack without fill details (bybit, bitget): read the order back
            order = await self._fetch_existing(request, client, credential)
            if order is None:
                raise OutcomeUnknown(f"{self.name} accepted {request.client_order_id} but cannot read it back")
        log.info(
            "order.created",
            status=order.status.value,
            filled_qty=str(order.filled_qty),
            avg_price=str(order.avg_price),
            exchange_order_id=order.exchange_order_id,
        )
        return order

    async def _fetch_existing(self, request: OrderRequest, client: Any, credential: Credential) -> VenueOrder | None:
        try:
            return await self._fetch_by_client_id(client, request.symbol, request.client_order_id)
        except Exception as exc:  # noqa: BLE001 - the order may exist; we could not read it
            raise OutcomeUnknown(str(self._classify(exc, client, credential, order_sent=False))) from None

    def _to_order(self, raw: Any, market: MarketInfo, client_order_id: str) -> VenueOrder | None:
        try:
            return to_venue_order(raw, market, client_order_id)
        except (TypeError, ValueError, ArithmeticError, KeyError, AttributeError) as exc:
            raise OutcomeUnknown(f"{self.name} answered with an unreadable order: {type(exc).__name__}") from None

    async def _fetch_by_client_id(self, client: Any, symbol: str, client_order_id: str) -> VenueOrder | None:
        market = (await self._ensure_markets()).get(symbol)
        if market is None:
            return None
        params = {self._profile.fetch_by_client_id_param: client_order_id}
        if self._profile.fetch_by_listing:
            rows = await client.fetch_open_orders(symbol, None, None, dict(params))
            if not rows:
                rows = await client.fetch_canceled_and_closed_orders(symbol, None, None, dict(params))
            raw = next((row for row in rows if row.get("clientOrderId") == client_order_id), None)
            if raw is None:
                return None
        else:
            try:
                # The id is ignored when the client-id param is present; ccxt formats it into messages.
                raw = await client.fetch_order(client_order_id, symbol, params)
            except ccxt.OrderNotFound:
                return None
        return to_venue_order(raw, market, client_order_id)

    async def fetch_order_by_client_id(
        self, *, user_id: int, symbol: str, trade_type: TradeType, client_order_id: str
    ) -> VenueOrder | None:
        client, credential = await self._client(user_id)
        try:
            return await self._fetch_by_client_id(client, symbol, client_order_id)
        except Exception as exc:  # noqa: BLE001 - a boundary: whatever failed is reported, never raised through
            raise self._classify(exc, client, credential, order_sent=False) from None

    async def cancel_order(
        self, *, user_id: int, symbol: str, trade_type: TradeType, client_order_id: str
    ) -> VenueOrder | None:
        client, credential = await self._client(user_id)
        market = (await self._ensure_markets()).get(symbol)
        if market is None:
            return None
        params = {self._profile.fetch_by_client_id_param: client_order_id}
        try:
            # Bybit sends a non-None id as orderId beside orderLinkId; the others ignore it
            order_id = None if self._profile.fetch_by_listing else client_order_id
            raw = await client.cancel_order(order_id, symbol, params)
        except ccxt.OrderNotFound:
            # Unknown, or no longer cancellable (filled): report what the venue holds.
            return await self.fetch_order_by_client_id(
                user_id=user_id, symbol=symbol, trade_type=trade_type, client_order_id=client_order_id
            )
        except Exception as exc:  # noqa: BLE001 - a boundary: whatever failed is reported, never raised through
            raise self._classify(exc, client, credential, order_sent=False) from None
        try:
            order = to_venue_order(raw, market, client_order_id)
        except TypeError:  # an unreadable answer: the venue holds the truth
            order = None
        if order is None:
            return await self.fetch_order_by_client_id(
                user_id=user_id, symbol=symbol, trade_type=trade_type, client_order_id=client_order_id
            )
        _log.info(
            "order.cancelled",
            venue=self.name,
            user_id=user_id,
            client_order_id=client_order_id,
            status=order.status.value,
        )
        return order

    # -- balances, positions and marks ---------------------------------------------------------------------

    async def fetch_balance(self, *, user_id: int, trade_type: TradeType) -> dict[str, Decimal]:
        client, credential = await self._client(user_id)
        try:
            raw = await client.fetch_balance(self._profile.balance_params(trade_type))
        except Exception as exc:  # noqa: BLE001 - a boundary: whatever failed is reported, never raised through
            raise self._classify(exc, client, credential, order_sent=False) from None
        free = raw.get("free") or {}
        return {asset: Decimal(str(amount)) for asset, amount in free.items() if amount is not None}

    async def fetch_positions(self, *, user_id: int, symbols: list[str]) -> list[VenuePosition]:
        """Open USDT-futures positions, one request (see the profile's ``fetch_positions`` weight). A spot
        venue holds no positions: ``[]`` without a request. Bybit takes at most one symbol per call, so several
        (or none) are fetched as every USDT-settled position and filtered here."""
        if self.trade_type is TradeType.SPOT:
            return []
        client, credential = await self._client(user_id)
        try:
            raw = await client.fetch_positions(symbols if len(symbols) == 1 else None)
        except Exception as exc:  # noqa: BLE001 - a boundary: whatever failed is reported, never raised through
            raise self._classify(exc, client, credential, order_sent=False) from None
        if not isinstance(client.last_json_response, dict | list):
            # ccxt reads an HTML page or a cut body as "no positions"; flat is a claim we must not invent.
            raise RetryableError(f"{self.name} answered the positions request with an unreadable body")
        wanted = set(symbols)
        try:
            positions = [p for p in map(to_venue_position, raw) if p is not None]
        except (TypeError, ValueError, ArithmeticError, KeyError, AttributeError) as exc:
            # A read: nothing happened on the venue, asking again is safe.
            raise RetryableError(f"{self.name} answered with an unreadable position: {exc!r}") from None
        return [p for p in positions if not wanted or p.symbol in wanted]

    async def fetch_marks(self, symbols: list[str]) -> dict[str, Decimal]:
        await self._ensure_markets()
        try:
            tickers = await self._market_client.fetch_tickers(symbols or None)
        except Exception as exc:  # noqa: BLE001 - a boundary: whatever failed is reported, never raised through
            headers = getattr(self._market_client, "last_response_headers", None)
            raise classify(exc, order_sent=False, now_s=self._clock.now().timestamp(), headers=headers) from None
        marks = {}
        for symbol, ticker in tickers.items():
            price = ticker.get("markPrice") or ticker.get("last") or ticker.get("close")
            if price is not None and (not symbols or symbol in symbols):
                marks[symbol] = Decimal(str(price))
        return marks

    def request_weight(self, operation: str) -> int:
        return self._profile.weights[self.trade_type].get(operation, 1)

    def order_weight(self, request: OrderRequest) -> int:
        """The weight ``create_order(request)`` costs: a futures order whose leverage is not on the venue yet
        also sets margin mode and leverage first (read on the exchange actor's thread; a stale read can only
        over-count)."""
        weight = self.request_weight("create_order")
        if request.trade_type is TradeType.FUTURES and (
            self._leverage_set.get((request.user_id, request.symbol)) != request.leverage
        ):
            weight += self.request_weight("set_leverage")
        return weight

    async def close(self) -> None:
        clients = [client for client, _ in self._clients.values()] + self._retired
        self._retired = []
        if self._market_client is not None:
            clients.append(self._market_client)
        self._clients.clear()
        self._market_client = None
        # All at once: each ccxt close() ends with a 250 ms sleep (``timeout_on_exit``), so one after the other
        # a venue with 1,000 accounts would take four minutes to shut down.
        results = await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):  # closing is best effort; a broken session must not stop shutdown
                _log.warning("venue.close_failed", venue=self.name, error=type(result).__name__)

    # -- helpers ---------------------------------------------------------------------------------------

    def _classify(self, exc: BaseException, client: Any, credential: Credential, *, order_sent: bool) -> VenueError:
        secrets = (credential.api_key, credential.secret, credential.passphrase)
        headers = getattr(client, "last_response_headers", None)
        now_s = self._clock.now().timestamp()
        return classify(exc, order_sent=order_sent, now_s=now_s, headers=headers, secrets=secrets)


def _already_set(exc: BaseException) -> bool:
    text = str(exc)
    return any(marker in text for marker in ("No need to change", "not modified", "110043", "leverage not changed"))


def _route_binance_exceptions(client: Any) -> None:
    """ccxt picks Binance's per-market error tables by host (``fapi.binance.com``...). With the API on another
    host (emulator, proxy) route by path instead, so e.g. -2019 stays InsufficientFunds on USDⓈ-M."""

    def by_path(url: str | None, exact_or_broad: str) -> dict[str, Any]:
        if url is None:
            return {}
        market_type = None
        if "/fapi/" in url:
            market_type = "linear"
        elif "/dapi/" in url:
            market_type = "inverse"
        elif "/api/v3" in url or "/api/v1" in url:
            market_type = "spot"
        if market_type is None:
            return {}
        table: dict[str, Any] = client.safe_dict(client.exceptions, market_type, {})
        return client.safe_dict(table, exact_or_broad, {})  # type: ignore[no-any-return]

    client.get_exceptions_by_url = by_path
