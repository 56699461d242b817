"""The venue adapter interface and the order-outcome policy.

Every venue (the paper exchange, ccxt venues) implements ``VenueAdapter``. Its coroutines run on the engine's
single I/O loop; only the exchange actor and the price feed call them.

Order-outcome policy (the exchange actor follows it; see docs/architecture.md):

* ``OrderRejected``   definitive "no" from the venue (insufficient funds, invalid order, bad symbol): REJECTED.
* ``RetryableError``  known to have happened *before* the venue accepted anything (429, connection refused;
                      a 5xx only on a read): retry with backoff and jitter, same client order id; counts
                      against the breaker. ``retry_after_s`` honours the venue's Retry-After.
* ``VenueBanned``     HTTP 418 / IP ban: no traffic to the venue until ``until_monotonic_s``.
* ``OutcomeUnknown``  the request was (or may have been) sent and no trustworthy answer came back (timeout,
                      disconnect, malformed body, an HTTP 5xx on create): UNKNOWN. Never re-sent blindly;
                      resolved by ``fetch_order_by_client_id``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal, Protocol

from engine.messages import MarketInfo, OrderRequest, TradeType, VenueOrder, VenuePosition

LiquidationModel = Literal["estimate", "venue"]
"""Who decides a futures liquidation: ``estimate``: the engine's isolated-margin estimate on the marks is the venue's
rule (the paper venue liquidates by it too), so the books liquidate by it; ``venue``: the venue decides, and a
follower near the liquidation price asks the venue for its position."""


class VenueError(Exception):
    """Base of the classified venue errors. ``str()`` never contains credentials."""


class OrderRejected(VenueError):
    pass


class RetryableError(VenueError):
    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class VenueBanned(VenueError):
    def __init__(self, message: str, *, ban_s: float) -> None:
        super().__init__(message)
        self.ban_s = ban_s


class OutcomeUnknown(VenueError):
    pass


class VenueAdapter(Protocol):
    """One venue. Coroutines run on the I/O loop.

    Capabilities (what differs between the paper venue and a real one; the engine asks these, never the kind):
    """

    name: str
    funds_accounts: bool
    """True: the engine funds the venue's accounts from its books (``deposit``, ``restore_position``: the paper
    venue lives in memory). False: the venue holds the truth; accounts are registered (``register_account``) and
    their balances fetched at start."""
    settable_marks: bool
    """True: marks live in the adapter, set by ``set_mark`` (admin ``price``, the demo) and read by ``marks()``
    from any thread without I/O. False: marks are the venue's, polled with ``fetch_marks`` (seeded at start, and
    the polls' weight comes out of the venue's budget)."""
    supports_mark_batch: bool
    """True: ``fetch_marks([])`` answers every symbol's mark in the one call it makes for a few (ccxt
    ``fetch_tickers``). False: it answers the symbols asked for only."""
    liquidation_model: LiquidationModel

    async def load_markets(self) -> dict[str, MarketInfo]:
        """Markets by unified symbol; loaded once per venue, shared by every account."""
        ...

    async def create_order(self, request: OrderRequest) -> VenueOrder:
        """Place a market order; raises one of the ``VenueError`` classes above."""
        ...

    async def fetch_order_by_client_id(
        self, *, user_id: int, symbol: str, trade_type: TradeType, client_order_id: str
    ) -> VenueOrder | None:
        """The order with that client order id, or ``None`` if the venue has no such order."""
        ...

    async def cancel_order(
        self, *, user_id: int, symbol: str, trade_type: TradeType, client_order_id: str
    ) -> VenueOrder | None: ...

    async def fetch_balance(self, *, user_id: int, trade_type: TradeType) -> dict[str, Decimal]:
        """Free balance by asset."""
        ...

    async def fetch_positions(self, *, user_id: int, symbols: list[str]) -> list[VenuePosition]:
        """The account's open USDT-futures positions on ``symbols`` (all of them when empty). A symbol with no
        position (zero size) is left out. Raises the ``VenueError`` classes like every other call."""
        ...

    async def fetch_marks(self, symbols: list[str]) -> dict[str, Decimal]:
        """Mark (or last) prices for the symbols, in one batched call where the venue allows it."""
        ...

    def request_weight(self, operation: str) -> int:
        """The venue's rate-limit weight of one call (``create_order``, ``fetch_order``, ``fetch_marks``...)."""
        ...

    def order_weight(self, request: OrderRequest) -> int:
        """The weight ``create_order(request)`` costs (more than ``request_weight("create_order")`` when the
        order also sets leverage first)."""
        ...

    async def close(self) -> None: ...
