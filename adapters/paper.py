"""The paper exchange: the default venue (``name = "paper"``), and the fault-injection venue of the tests.

Market orders fill at once at the mark price plus slippage (buys above the mark, sells below), rounded to the
price tick, with the market's taker fee charged in USDT. Spot wallets hold USDT and base assets; futures use
USDT margin (notional / leverage) in one-way mode. Like a real venue it remembers client order ids: a repeated
id returns the existing order, never a second one.

Marks come from ``set_mark`` (the admin socket's ``price`` command) or, in demo mode, ``random_walk``.

Liquidation: a futures position whose mark crosses its liquidation price (the engine's own isolated-margin
estimate, ``paper_markets.liquidation_estimate``, or ``set_liquidation_price``'s) is liquidated by the venue
itself when the price feed polls the marks (``fetch_marks``): the position is gone and its margin, taken at
entry, never comes back. On the paper venue the engine books a liquidation by the same estimate on the marks
that poll returns, so venue and books agree on which positions are gone.

Threads: the coroutines run on the I/O loop. ``set_mark``, ``deposit``, ``inject`` and the test accessors may
be called from any thread; one lock guards the state, and it is never held across an ``await``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from decimal import ROUND_DOWN, Decimal

from adapters.paper_book import BPS, ZERO, PaperPosition, fill_price, round_to, settle, validate
from adapters.paper_markets import (
    DEFAULT_MARKS,
    default_markets,
    implied_leverage,
    liquidation_estimate,
    venue_position,
)
from adapters.paper_traffic import CallRecord, InjectedFault, PaperTraffic
from engine.clock import SYSTEM_CLOCK, Clock
from engine.logs import get_logger
from engine.messages import MarketInfo, OrderRequest, TradeStatus, TradeType, VenueOrder, VenuePosition
from engine.venue import LiquidationModel, OrderRejected, OutcomeUnknown

log = get_logger(__name__)


class PaperVenue(PaperTraffic):
    """Implements ``engine.venue.VenueAdapter``."""

    name = "paper"
    funds_accounts = True
    settable_marks = True
    supports_mark_batch = False
    liquidation_model: LiquidationModel = "estimate"

    def __init__(
        self,
        *,
        markets: Iterable[MarketInfo] | None = None,
        initial_marks: Mapping[str, Decimal] | None = None,
        slippage_bps: Decimal | float = Decimal(0),
        latency_ms: float = 0.0,
        weight_limit: int | None = None,
        weight_window_s: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        """``initial_marks`` by symbol or base (default: a realistic price for every default base; pass
        ``{}`` for none). ``weight_limit`` per ``weight_window_s``, if set, makes the venue answer 429 beyond
        it, as a real one does. ``clock``: the venue's own time (bans, call stamps, latency). The engine builds
        it with its clock (``make_adapter``); a venue made by hand runs on real time, as a real exchange does,
        unless a test hands it the engine's ``FakeClock``."""
        self._markets = {m.symbol: m for m in (default_markets() if markets is None else markets)}
        self._slippage_bps = Decimal(str(slippage_bps))  # str(): config floats must not leak binary noise
        self.latency_ms = latency_ms
        self._weight_limit = weight_limit
        self._weight_window_s = weight_window_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._marks: dict[str, Decimal] = {}
        self._wallets: dict[int, dict[str, Decimal]] = {}
        self._positions: dict[tuple[int, str], PaperPosition] = {}
        self._orders: dict[tuple[int, str], VenueOrder] = {}
        self._create_calls: dict[str, int] = {}
        self._faults: list[InjectedFault] = []
        self._calls: list[CallRecord] = []
        self._recent_weight: deque[tuple[float, int]] = deque()
        self._banned_until = 0.0
        self._ids = itertools.count(1)
        self._in_flight = 0
        self.max_in_flight_seen = 0  # most create_order calls open at once
        self.calls_while_banned = 0
        self.rate_limited_calls = 0  # 429s from weight_limit (not injected ones)
        for key, price in (DEFAULT_MARKS if initial_marks is None else initial_marks).items():
            self.set_mark(key, price)

    # ----------------------------------------------------------------------------------------------------
    # Admin and test controls (any thread)
    # ----------------------------------------------------------------------------------------------------

    def set_mark(self, symbol_or_base: str, price: Decimal) -> None:
        """A price for ``BASE`` applies to both ``BASE/USDT`` and ``BASE/USDT:USDT``."""
        price = Decimal(price)
        if price <= 0:
            raise ValueError(f"mark must be positive, got {price}")
        with self._lock:
            if "/" in symbol_or_base:
                symbols = [symbol_or_base]
            else:
                symbols = [s for s, m in self._markets.items() if m.base == symbol_or_base.upper()]
            if not symbols:
                raise ValueError(f"unknown symbol or base {symbol_or_base!r}")
            for symbol in symbols:
                self._marks[symbol] = price

    def marks(self) -> dict[str, Decimal]:
        with self._lock:
            return dict(self._marks)

    def restore_position(
        self,
        user_id: int,
        symbol: str,
        *,
        qty: Decimal,
        entry_price: Decimal,
        margin: Decimal,
        leverage: int | None = None,
    ) -> None:
        """Put back a futures position the engine's books hold (``qty`` signed: > 0 long, < 0 short). The paper
        venue lives in memory, so after a restart this is how it learns what it "had"; margin is not re-debited
        (the engine's books already count it as committed). ``leverage`` defaults to value / margin."""
        market = self._markets.get(symbol)
        if leverage is None:
            leverage = implied_leverage(qty * (market.contract_size if market else 1), entry_price, margin)
        estimate = None
        if market is not None:
            estimate = liquidation_estimate(market, qty=qty, entry_price=entry_price, leverage=leverage)
        with self._lock:
            self._positions[(user_id, symbol)] = PaperPosition(qty, entry_price, margin, leverage, estimate)

    def liquidate(self, user_id: int, symbol: str) -> Decimal:
        """The venue liquidates a futures position: it is gone and its margin (debited at entry) is lost.
        Returns that margin; ``KeyError`` when the user holds none."""
        with self._lock:
            return self._positions.pop((user_id, symbol)).margin

    def set_liquidation_price(self, user_id: int, symbol: str, price: Decimal | None) -> None:
        """Report ``price`` as the position's liquidation price (``None``: the estimate again). ``KeyError``
        when the user holds no position there."""
        with self._lock:
            self._positions[(user_id, symbol)].liquidation_override = price

    def deposit(self, user_id: int, asset: str, amount: Decimal) -> None:
        """Credit a wallet. One wallet per user serves spot and futures margin."""
        with self._lock:
            wallet = self._wallets.setdefault(user_id, {})
            wallet[asset] = wallet.get(asset, ZERO) + Decimal(amount)

    def orders_for(self, client_order_id: str) -> list[VenueOrder]:
        """Every order the venue holds with that client order id (a correct engine never makes two)."""
        with self._lock:
            return [o for (_, cid), o in self._orders.items() if cid == client_order_id]

    def order_count(self, client_order_id: str) -> int:
        return len(self.orders_for(client_order_id))

    def balance(self, user_id: int, asset: str) -> Decimal:
        with self._lock:
            return self._wallets.get(user_id, {}).get(asset, ZERO)

    def position_qty(self, user_id: int, symbol: str) -> Decimal:
        """Signed futures position (``> 0`` long)."""
        with self._lock:
            position = self._positions.get((user_id, symbol))
            return ZERO if position is None else position.qty

    # ----------------------------------------------------------------------------------------------------
    # VenueAdapter (I/O loop)
    # ----------------------------------------------------------------------------------------------------

    async def load_markets(self) -> dict[str, MarketInfo]:
        self._arrive("load_markets", None)
        return dict(self._markets)

    def order_weight(self, request: OrderRequest) -> int:
        """An order costs what ``create_order`` costs: the paper venue sets no leverage first."""
        return self.request_weight("create_order")

    async def create_order(self, request: OrderRequest) -> VenueOrder:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self._in_flight)
        try:
            return await self._create_order(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _create_order(self, request: OrderRequest) -> VenueOrder:
        fault = self._arrive("create_order", request.client_order_id)
        delay_s = self.latency_ms / 2000 + (fault.delay_ms / 1000 if fault and fault.kind == "latency" else 0)
        if delay_s > 0:
            await asyncio.sleep(delay_s)  # the request on its way to the venue
        order = self._execute(request, fault)
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 2000)  # the answer on its way back
        if fault is not None and fault.kind == "timeout_after_accept":
            raise OutcomeUnknown(f"paper: timed out waiting for {request.client_order_id} (injected)")
        return order

    async def fetch_order_by_client_id(
        self, *, user_id: int, symbol: str, trade_type: TradeType, client_order_id: str
    ) -> VenueOrder | None:
        self._arrive("fetch_order", client_order_id)
        await self._round_trip()
        with self._lock:
            return self._orders.get((user_id, client_order_id))

    async def cancel_order(
        self, *, user_id: int, symbol: str, trade_type: TradeType, client_order_id: str
    ) -> VenueOrder | None:
        """Market orders are final at once: cancelling returns the order unchanged (``None`` if unknown)."""
        self._arrive("cancel_order", client_order_id)
        await self._round_trip()
        with self._lock:
            return self._orders.get((user_id, client_order_id))

    async def fetch_balance(self, *, user_id: int, trade_type: TradeType) -> dict[str, Decimal]:
        self._arrive("fetch_balance", None)
        await self._round_trip()
        with self._lock:
            wallet = dict(self._wallets.get(user_id, {}))
        return wallet if trade_type is TradeType.SPOT else {"USDT": wallet.get("USDT", ZERO)}

    async def fetch_positions(self, *, user_id: int, symbols: list[str]) -> list[VenuePosition]:
        self._arrive("fetch_positions", None)
        await self._round_trip()
        with self._lock:
            held = [(s, p) for (uid, s), p in self._positions.items() if uid == user_id and p.qty != 0]
            return [
                venue_position(
                    self._markets[s],
                    qty=p.qty,
                    entry_price=p.entry_price,
                    leverage=p.leverage,
                    margin=p.margin,
                    liquidation_override=p.liquidation_override,
                )
                for s, p in held
                if s in self._markets and (not symbols or s in symbols)
            ]

    async def fetch_marks(self, symbols: list[str]) -> dict[str, Decimal]:
        """The marks of ``symbols``; positions those marks cross are liquidated first (see the module docstring)."""
        self._arrive("fetch_marks", None)
        await self._round_trip()
        with self._lock:
            marks = {s: self._marks[s] for s in symbols if s in self._marks}
            liquidated = self._liquidate_crossed(marks)
        for (user_id, symbol), position in liquidated:
            log.info(
                "paper.liquidated",
                user_id=user_id,
                symbol=symbol,
                qty=position.qty,
                mark=marks[symbol],
                liquidation_price=position.liquidation_price,
                margin_usdt=position.margin,
            )
        return marks

    async def close(self) -> None:
        return None

    async def random_walk(
        self,
        symbols: Iterable[str],
        *,
        interval_ms: float = 1000.0,
        volatility_bps: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        """Demo feed: every ``interval_ms`` move each symbol's (or base's) mark by a Gaussian step of
        ``volatility_bps``. Runs until cancelled."""
        rng = rng or random.Random()
        keys = list(symbols)
        while True:
            await asyncio.sleep(interval_ms / 1000)
            marks = self.marks()
            for key in keys:
                symbol = key if "/" in key else f"{key.upper()}/USDT"
                market, mark = self._markets.get(symbol), marks.get(symbol)
                if market is None or mark is None:
                    continue
                step = Decimal(repr(rng.gauss(0.0, volatility_bps))) / BPS
                price = round_to(mark * (1 + step), market.price_tick, ROUND_DOWN)
                if price > 0:
                    self.set_mark(key, price)

    # ----------------------------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------------------------

    def _liquidate_crossed(self, marks: Mapping[str, Decimal]) -> list[tuple[tuple[int, str], PaperPosition]]:
        """Remove the futures positions ``marks`` cross; their margin is lost. Under the lock."""
        if not marks:
            return []
        crossed = [
            (key, position)
            for key, position in self._positions.items()
            if (mark := marks.get(key[1])) is not None and position.crossed(mark)
        ]
        for key, _ in crossed:
            del self._positions[key]
        return crossed

    async def _round_trip(self) -> None:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)

    def _execute(self, request: OrderRequest, fault: InjectedFault | None) -> VenueOrder:
        key = (request.user_id, request.client_order_id)
        with self._lock:
            existing = self._orders.get(key)
            if existing is not None:
                return existing  # a venue de-duplicates client order ids
            market = validate(self._markets, request)
            qty = request.qty
            if fault is not None and fault.kind == "partial_fill":
                qty = round_to(qty * fault.fill_fraction, market.qty_step, ROUND_DOWN)
            price = fill_price(self._marks.get(request.symbol), request, market, self._slippage_bps)
            notional = request.qty * price * market.contract_size
            if not request.reduce_only and notional < market.min_notional:
                raise OrderRejected(f"paper: notional {notional} below {market.min_notional}")
            fee = ZERO
            if qty > 0:
                fee = qty * price * market.contract_size * market.taker_fee_rate
                wallet = self._wallets.setdefault(request.user_id, {})
                settle(wallet, self._positions, request, market, qty=qty, price=price, fee=fee)
            if qty == request.qty:
                status = TradeStatus.FILLED
            else:
                status = TradeStatus.PARTIALLY_FILLED if qty > 0 else TradeStatus.CANCELLED
            order = VenueOrder(
                client_order_id=request.client_order_id,
                exchange_order_id=f"paper-{next(self._ids)}",
                status=status,
                filled_qty=qty,
                avg_price=price if qty > 0 else None,
                fee_usdt=fee,
            )
            self._orders[key] = order
            return order
