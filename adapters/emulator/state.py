"""The emulator's venue-neutral state: markets, marks, accounts, orders, faults and the weight ledger.

Everything here runs on the emulator's event loop (the test's loop); nothing is thread-safe by design.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from aiohttp import web

from adapters.emulator.positions import FuturesPosition, apply_fill

Category = str  # "spot" | "linear"

FAULTS = frozenset(
    {
        "429",  # rate limited, with Retry-After
        "418",  # IP ban (Binance), with Retry-After
        "5xx",  # 503 before anything happened
        "accept_then_timeout",  # the order is created, the response never comes
        "accept_then_disconnect",  # the order is created, the connection is cut
        "accept_then_5xx",  # the order is created, the answer is a 503 (Binance: execution status unknown)
        "order_not_found",  # a read (GET) answers as if the order did not exist yet (order history lagging)
        "partial_fill",  # a market order fills half, the rest expires
        "delayed_fill",  # the order rests (NEW) and fills on the next read
        "html",  # an HTML error page with status 200 after the handler ran
        "truncated_json",  # the handler's JSON cut in half
        "reject_insufficient",  # a definitive insufficient-funds reject
    }
)
READ_FAULTS = frozenset({"order_not_found"})  # only a GET takes them (Binance creates and reads on one path)
CLIENT_ID_SCOPES = frozenset({"all", "open"})
# What a venue does with a reduce-only order larger than the position (one-way mode): refuse it, or cut it down to
# the position ("cap"). An order with nothing to reduce (flat, or the same side as the position) is always refused.
REDUCE_ONLY_EXCESS = frozenset({"reject", "cap"})


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """One instrument: ``base``/``quote`` plus its filters, shared by every venue of the emulator."""

    base: str
    quote: str
    qty_step: Decimal
    price_tick: Decimal
    min_qty: Decimal
    min_notional: Decimal
    max_leverage: int = 100
    maintenance_margin_rate: Decimal = Decimal("0.005")

    @property
    def venue_id(self) -> str:
        return self.base + self.quote


DEFAULT_MARKETS = (
    MarketSpec("BTC", "USDT", Decimal("0.001"), Decimal("0.1"), Decimal("0.001"), Decimal(5), 125),
    MarketSpec("ETH", "USDT", Decimal("0.01"), Decimal("0.01"), Decimal("0.01"), Decimal(5), 100),
)


@dataclass(slots=True)
class Order:
    order_id: str
    client_order_id: str
    api_key: str
    category: Category
    symbol_id: str
    side: str  # "buy" | "sell"
    qty: Decimal
    reduce_only: bool = False
    filled: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    fee: Decimal = Decimal(0)
    fee_asset: str = "USDT"
    status: str = "new"  # new | filled | partial_expired | cancelled | rejected
    reads_until_fill: int = 0  # delayed fill: the order fills on this many-th read
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    updated_ms: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass(slots=True)
class Account:
    api_key: str
    secret: str
    passphrase: str | None
    balances: dict[str, Decimal] = field(default_factory=dict)
    leverage: dict[tuple[str, str], int] = field(default_factory=dict)  # (category, symbol_id) -> x
    margin_mode: dict[tuple[str, str], str] = field(default_factory=dict)
    futures: dict[tuple[str, str], FuturesPosition] = field(default_factory=dict)  # (category, symbol_id)

    @property
    def positions(self) -> dict[tuple[str, str], Decimal]:
        """Signed futures quantity by ``(category, symbol_id)``; flat symbols are absent."""
        return {key: position.qty for key, position in self.futures.items()}


@dataclass(slots=True)
class Fault:
    kind: str
    remaining: int
    path_contains: str | None


class Refused(Exception):
    """Raised by a handler (auth failed): the middleware answers with ``response``."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class FillError(Exception):
    """The venue refuses the order; ``reason`` is venue-neutral ("insufficient", "min_notional",
    "reduce_only_no_position", "reduce_only_wrong_side", "reduce_only_exceeds", ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VenueState:
    """One venue: its accounts, orders, fault queue and request-weight ledger."""

    def __init__(
        self,
        name: str,
        markets: tuple[MarketSpec, ...],
        marks: dict[str, Decimal],
        *,
        weight_limit: int,
        weight_window_s: float,
        taker_fee: Decimal,
        client_id_scope: str = "all",
        reduce_only_excess: str = "reject",
    ) -> None:
        if client_id_scope not in CLIENT_ID_SCOPES:
            raise ValueError(f"client_id_scope {client_id_scope!r}; one of {sorted(CLIENT_ID_SCOPES)}")
        if reduce_only_excess not in REDUCE_ONLY_EXCESS:
            raise ValueError(f"reduce_only_excess {reduce_only_excess!r}; one of {sorted(REDUCE_ONLY_EXCESS)}")
        self.name = name
        self.client_id_scope = client_id_scope
        self.reduce_only_excess = reduce_only_excess
        self.markets = {m.venue_id: m for m in markets}
        self.marks = marks  # shared with the server: "BTCUSDT" -> price
        self.accounts: dict[str, Account] = {}
        self.orders: list[Order] = []
        self.faults: list[Fault] = []
        self.taker_fee = taker_fee
        self.weight_limit = weight_limit
        self.weight_window_s = weight_window_s
        self._window_start = time.monotonic()
        self._window_weight = 0
        self.weight_excess: list[tuple[float, int]] = []  # (window start, weight used) over the limit
        self.requests: list[tuple[str, str]] = []  # (method, path): what the client actually called
        self.liquidations: list[tuple[str, str, FuturesPosition]] = []  # (api key, symbol id, position)
        self._ids = itertools.count(100_000_001)

    # -- faults and weight -----------------------------------------------------------------------------

    def take_fault(self, path: str, method: str = "GET") -> str | None:
        for fault in self.faults:
            if fault.kind in READ_FAULTS and method != "GET":
                continue
            if fault.path_contains is None or fault.path_contains in path:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                return fault.kind
        return None

    def add_weight(self, weight: int) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.weight_window_s:
            self._window_start, self._window_weight = now, 0
        self._window_weight += weight
        if self._window_weight > self.weight_limit:
            self.weight_excess.append((self._window_start, self._window_weight))

    # -- orders ----------------------------------------------------------------------------------------

    def next_order_id(self) -> str:
        return str(next(self._ids))

    def find_order(
        self,
        api_key: str,
        *,
        client_order_id: str | None = None,
        order_id: str | None = None,
        category: Category | None = None,
    ) -> Order | None:
        for order in reversed(self.orders):
            if order.api_key != api_key or (category is not None and order.category != category):
                continue
            if client_order_id is not None and order.client_order_id == client_order_id:
                return order
            if order_id is not None and order.order_id == order_id:
                return order
        return None

    def client_order_id_taken(self, api_key: str, client_order_id: str, category: Category | None = None) -> bool:
        """Whether a create with ``client_order_id`` is refused as a duplicate. Scope ``"all"``: any order ever
        made with it; ``"open"``: only an open one, as Binance documents (a filled order's id makes a new order)."""
        order = self.find_order(api_key, client_order_id=client_order_id, category=category)
        return order is not None and (self.client_id_scope == "all" or order.status == "new")

    def order_count(self, client_order_id: str) -> int:
        return sum(1 for order in self.orders if order.client_order_id == client_order_id)

    def read_order(self, order: Order) -> Order:
        """A read of ``order``: a delayed fill happens on the second read (the venue filled it meanwhile)."""
        if order.reads_until_fill > 0 and order.status == "new":
            order.reads_until_fill -= 1
            if order.reads_until_fill == 0:
                self._fill(order, order.qty)
        return order

    def place(self, account: Account, order: Order, fault: str | None) -> Order:
        """Validate and (unless ``delayed_fill``) fill a market order at the mark. Raises ``FillError``."""
        market = self.markets.get(order.symbol_id)
        if market is None:
            raise FillError("bad_symbol")
        mark = self.marks.get(order.symbol_id)
        if mark is None:
            raise FillError("no_price")
        if order.qty <= 0 or order.qty < market.min_qty or order.qty % market.qty_step != 0:
            raise FillError("bad_qty")
        if order.reduce_only and order.category != "spot":
            self._check_reduce_only(account, order)
        if not order.reduce_only and order.qty * mark < market.min_notional:
            raise FillError("min_notional")
        if fault == "reject_insufficient" or not self._affordable(account, order, market, mark):
            raise FillError("insufficient")
        self.orders.append(order)
        if fault == "delayed_fill":
            order.reads_until_fill = 2
        elif fault == "partial_fill":
            half = (order.qty / 2).quantize(market.qty_step, rounding=ROUND_DOWN)
            self._fill(order, max(half, market.qty_step), final_status="partial_expired")
        else:
            self._fill(order, order.qty)
        return order

    def _check_reduce_only(self, account: Account, order: Order) -> None:
        """A reduce-only order never grows or flips the position (one-way mode): with nothing to reduce (flat,
        or an order on the position's own side) it is refused; larger than the position it is refused, or cut
        down to the position where the venue does that (``reduce_only_excess="cap"``). Raises ``FillError``."""
        position = account.futures.get((order.category, order.symbol_id))
        if position is None:
            raise FillError("reduce_only_no_position")
        if position.is_long == (order.side == "buy"):
            raise FillError("reduce_only_wrong_side")
        if order.qty > position.size:
            if self.reduce_only_excess != "cap":
                raise FillError("reduce_only_exceeds")
            order.qty = position.size  # the order as the venue holds it: its quantity fixed to the position

    def cancel(self, order: Order) -> bool:
        if order.status != "new":
            return False
        order.status, order.reads_until_fill = "cancelled", 0
        order.updated_ms = int(time.time() * 1000)
        return True

    def _affordable(self, account: Account, order: Order, market: MarketSpec, mark: Decimal) -> bool:
        notional = order.qty * mark
        if order.category == "spot":
            if order.side == "buy":
                return account.balances.get(market.quote, Decimal(0)) >= notional * (1 + self.taker_fee)
            return account.balances.get(market.base, Decimal(0)) >= order.qty
        if order.reduce_only:
            return True
        leverage = account.leverage.get((order.category, order.symbol_id), 1)
        margin = notional / leverage + notional * self.taker_fee
        return account.balances.get(market.quote, Decimal(0)) >= margin

    def _fill(self, order: Order, qty: Decimal, *, final_status: str = "filled") -> None:
        market = self.markets[order.symbol_id]
        account = self.accounts[order.api_key]
        price = self.marks[order.symbol_id]
        notional = qty * price
        balances = account.balances
        zero = Decimal(0)
        if order.category == "spot":
            if order.side == "buy":  # spot buys pay the fee in the base asset, as Binance and Bybit do
                fee, fee_asset = qty * self.taker_fee, market.base
                balances[market.quote] = balances.get(market.quote, zero) - notional
                balances[market.base] = balances.get(market.base, zero) + qty - fee
            else:
                fee, fee_asset = notional * self.taker_fee, market.quote
                balances[market.base] = balances.get(market.base, zero) - qty
                balances[market.quote] = balances.get(market.quote, zero) + notional - fee
        else:
            fee, fee_asset = notional * self.taker_fee, market.quote
            balances[market.quote] = balances.get(market.quote, zero) - fee
            key = (order.category, order.symbol_id)
            apply_fill(
                account.futures,
                key,
                qty if order.side == "buy" else -qty,
                price,
                leverage=account.leverage.get(key, 1),
                maintenance_margin_rate=market.maintenance_margin_rate,
            )
        order.filled, order.avg_price, order.fee, order.fee_asset = qty, price, fee, fee_asset
        order.status = final_status if qty < order.qty else "filled"
        order.updated_ms = int(time.time() * 1000)


STATE_KEY = web.AppKey("state", VenueState)
FAULT_KEY = web.RequestKey("fault", str)  # the fault the middleware picked for this request ("" = none)


def fault_of(request: web.Request) -> str | None:
    return request.get(FAULT_KEY) or None
