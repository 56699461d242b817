"""Every message that crosses an actor boundary, as frozen msgspec Structs.

Actors never share mutable objects: everything they send each other is defined here and is immutable.
Fields that hold an actor reference (``reply_to``) are typed ``Any`` so that this module stays free of
pykka imports; they are never encoded to the wire.

Money and quantities are ``Decimal`` everywhere.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

# The vocabulary of every message (the enums) lives in engine/vocabulary.py and is re-exported here, so
# ``from engine.messages import Side`` stays the one import of the message layer.
from engine.vocabulary import (
    PositionSide,
    PositionStatus,
    Priority,
    Side,
    SignalAction,
    SignalStatus,
    SizingMode,
    SkipReason,
    TradeStatus,
    TradeType,
)

__all__ = [
    "BalanceRow",
    "BatchRow",
    "CheckPositions",
    "CopySignal",
    "DomainEventRow",
    "FollowSettings",
    "FollowerDecision",
    "IntentAck",
    "MarketInfo",
    "OrderOutcome",
    "OrderRequest",
    "PersistIntent",
    "PersistRows",
    "PlaceOrder",
    "PositionRow",
    "PositionSide",
    "PositionStatus",
    "PriceUpdate",
    "Priority",
    "ResolveOrder",
    "Side",
    "Signal",
    "SignalAction",
    "SignalStatus",
    "SignalStatusRow",
    "SizingMode",
    "SkipReason",
    "SnapshotRow",
    "TradeRow",
    "TradeStatus",
    "TradeType",
    "UserSettings",
    "VenueOrder",
    "VenuePosition",
    "VenuePositions",
]

# --------------------------------------------------------------------------------------------------------------
# Domain records carried in messages
# --------------------------------------------------------------------------------------------------------------


class Signal(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A whale trade, as detected elsewhere. ``signal_id`` is the ``whale_signals`` row id."""

    signal_id: int
    external_id: str
    whale_id: int
    symbol: str  # unified ccxt symbol: "BTC/USDT" (spot) or "BTC/USDT:USDT" (USDT futures)
    side: Side
    action: SignalAction
    trade_type: TradeType
    price: Decimal
    size_usdt: Decimal
    leverage: int = 1
    priority: Priority = Priority.MEDIUM
    detected_at: datetime
    expires_at: datetime | None = None
    # For REDUCE: the fraction (0 < f <= 1) of the whale's position that was reduced; CLOSE implies 1.
    fraction: Decimal | None = None


class UserSettings(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A ``users`` row, as the engine needs it."""

    user_id: int
    copy_trading_enabled: bool = True
    preferred_exchange: str = "paper"
    max_leverage: int = 10
    paused: bool = False
    credential_ref: str | None = None  # a secret-store reference (adapters/credentials.py), never a secret


class FollowSettings(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A ``user_whale_follows`` row: how one user copies one whale."""

    user_id: int
    whale_id: int
    auto_copy_enabled: bool = True
    sizing_mode: SizingMode = SizingMode.FIXED_USDT
    fixed_usdt: Decimal = Decimal(100)
    percent_of_balance: Decimal = Decimal(5)  # percent, 5 means 5 %
    whale_multiplier: Decimal = Decimal("0.01")
    max_usdt_per_trade: Decimal = Decimal(1000)
    min_notional_usdt: Decimal = Decimal(5)
    max_leverage: int = 10
    stop_loss_pct: Decimal | None = None  # percent of entry price, 5 means 5 %
    take_profit_pct: Decimal | None = None
    max_open_positions: int = 10
    max_trades_per_day: int = 50
    daily_loss_limit_usdt: Decimal | None = None
    max_signal_age_s: int = 60
    max_slippage_pct: Decimal = Decimal(1)
    paused: bool = False


class MarketInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A venue's rules for one symbol, from ccxt ``load_markets`` or the paper venue."""

    symbol: str
    trade_type: TradeType
    base: str
    quote: str
    qty_step: Decimal  # lot size: quantities are rounded down to a multiple of this
    price_tick: Decimal
    min_qty: Decimal = Decimal(0)
    min_notional: Decimal = Decimal(0)
    max_leverage: int = 1
    maintenance_margin_rate: Decimal = Decimal("0.005")
    contract_size: Decimal = Decimal(1)
    taker_fee_rate: Decimal = Decimal("0.001")


class OrderRequest(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One order for one follower account on one venue. ``qty`` and ``price_hint`` are already rounded."""

    client_order_id: str
    user_id: int
    venue: str
    symbol: str
    trade_type: TradeType
    side: Side
    qty: Decimal
    price_hint: Decimal  # the price the engine expects; the paper venue and slippage checks use it
    reduce_only: bool = False
    leverage: int = 1
    signal_id: int | None = None
    position_id: str | None = None

    @property
    def is_exit(self) -> bool:
        """Exits (reduce-only) go before entries and pass an open breaker."""
        return self.reduce_only


class VenueOrder(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a venue says about one order."""

    client_order_id: str
    exchange_order_id: str | None
    status: TradeStatus  # FILLED, PARTIALLY_FILLED, SUBMITTED (open on the book), CANCELLED, REJECTED
    filled_qty: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    fee_usdt: Decimal = Decimal(0)
    # The part of the fee the venue took in the base asset (Binance spot buys): the account then holds
    # filled_qty - fee_base of the base asset. Also counted, priced at the fill, in fee_usdt.
    fee_base: Decimal = Decimal(0)


class VenuePosition(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a venue says about one open futures position of an account (``fetch_positions``)."""

    symbol: str
    side: PositionSide
    qty: Decimal  # in base units (contracts x contract size), always > 0
    entry_price: Decimal | None = None
    liquidation_price: Decimal | None = None  # None when the venue gives none (no liquidation risk, or unknown)
    margin_usdt: Decimal | None = None


# --------------------------------------------------------------------------------------------------------------
# Actor messages
# --------------------------------------------------------------------------------------------------------------


class CopySignal(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Router -> follower: decide and act on one signal. The follower answers with ``FollowerDecision``."""

    signal: Signal
    received_at_ns: int  # monotonic ns when the router took the signal (signal->order latency)
    mark_price: Decimal | None = None  # the venue's latest mark for the symbol when routed, if known


class FollowerDecision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Follower -> router: what it did with a signal; ``copied`` (order sent) is followed by a ``CopyOutcome``."""

    signal_id: int
    user_id: int
    outcome: str  # "copied" | "skipped" | "failed"
    reason: str | None = None


class OrderOutcome(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Exchange actor -> follower: the outcome of a ``PlaceOrder``.

    ``status`` is FILLED / PARTIALLY_FILLED (with qty, price, fee), REJECTED or FAILED (definitive, with
    ``error``), UNKNOWN (timeout or disconnect after sending: reconcile, never re-send blindly) or
    SUBMITTED (accepted, resting on the book).
    """

    client_order_id: str
    status: TradeStatus
    exchange_order_id: str | None = None
    filled_qty: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    fee_usdt: Decimal = Decimal(0)
    error: str | None = None
    fee_base: Decimal = Decimal(0)  # see VenueOrder.fee_base


class PriceUpdate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Price feed -> follower: new marks for the symbols that follower holds on that venue."""

    venue: str
    marks: dict[str, Decimal]
    stale_symbols: frozenset[str] = frozenset()
    at_ns: int = 0


class IntentAck(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Persistence -> requester: the intent row is committed (``durable``) or not (then no order may go)."""

    client_order_id: str
    durable: bool
    error: str | None = None
    duplicate: bool = False  # the row existed: a replay of an order already decided (its row is left untouched)
    existing_status: str | None = None  # with ``duplicate``: that row's status when read


# Rows for the batched lane. The persistence actor upserts each kind by its natural key.


class TradeRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    client_order_id: str
    user_id: int
    venue: str
    symbol: str
    trade_type: TradeType
    side: Side
    qty: Decimal
    price: Decimal  # expected price at intent time
    status: TradeStatus
    reduce_only: bool = False
    leverage: int = 1
    signal_id: int | None = None
    whale_id: int | None = None
    position_id: str | None = None
    exchange_order_id: str | None = None
    executed_qty: Decimal = Decimal(0)
    executed_price: Decimal | None = None
    fee_usdt: Decimal = Decimal(0)
    error: str | None = None
    reserved_usdt: Decimal = Decimal(0)  # funds held for this order (entries), released or settled at the end
    version: int = 1


class PositionRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    position_id: str
    user_id: int
    venue: str
    symbol: str
    trade_type: TradeType
    side: PositionSide
    qty: Decimal
    entry_price: Decimal
    leverage: int
    margin_usdt: Decimal
    status: PositionStatus
    whale_id: int | None = None
    stop_loss_price: Decimal | None = None
    take_profit_price: Decimal | None = None
    liquidation_price: Decimal | None = None
    realized_pnl_usdt: Decimal = Decimal(0)
    unrealized_pnl_usdt: Decimal = Decimal(0)
    opened_at: datetime | None = None
    closed_at: datetime | None = None
    close_reason: str | None = None
    version: int = 1


class DomainEventRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    event_id: str  # deterministic: replaying the same fact gives the same id (idempotent insert)
    event_type: str
    payload: Any  # a JSON object: builtins, or a frozen Struct (an engine.events event) encoded as one
    user_id: int | None = None
    signal_id: int | None = None
    occurred_at: datetime | None = None


class SignalStatusRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    signal_id: int
    status: SignalStatus
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    skip_reasons: dict[str, int] = {}
    error: str | None = None


class BalanceRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    user_id: int
    venue: str
    asset: str
    free: Decimal
    reserved: Decimal
    version: int = 1


class SnapshotRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    user_id: int
    taken_at: datetime
    equity_usdt: Decimal
    free_usdt: Decimal
    reserved_usdt: Decimal
    unrealized_pnl_usdt: Decimal
    realized_pnl_usdt: Decimal
    open_positions: int
    trades_today: int


BatchRow = TradeRow | PositionRow | DomainEventRow | SignalStatusRow | BalanceRow | SnapshotRow


# Requests to the persistence actor.


class PersistIntent(msgspec.Struct, frozen=True, kw_only=True):
    """Durable lane: commit this PENDING trade (group commit) and answer ``reply_to`` with ``IntentAck``."""

    row: TradeRow
    reply_to: Any = None


class PersistRows(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Batched lane: upsert these rows by their natural keys within ≤ flush interval. Fire and forget."""

    rows: tuple[Any, ...]  # BatchRow items


# Requests to an exchange actor.


class PlaceOrder(msgspec.Struct, frozen=True, kw_only=True):
    """Send this order (its intent is already durable). The exchange actor answers ``OrderOutcome``."""

    request: OrderRequest
    reply_to: Any = None


class ResolveOrder(msgspec.Struct, frozen=True, kw_only=True):
    """Ask the venue what became of a client order id. Answer: ``OrderOutcome``; status FAILED with
    error ``"not_found"`` when the venue has no such order, UNKNOWN when it still cannot tell."""

    user_id: int
    symbol: str
    trade_type: TradeType
    client_order_id: str
    reply_to: Any = None


class CheckPositions(msgspec.Struct, frozen=True, kw_only=True):
    """Ask the venue for an account's open futures positions on ``symbols``. Answer: ``VenuePositions``."""

    user_id: int
    symbols: tuple[str, ...]
    reply_to: Any = None


class VenuePositions(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The answer to ``CheckPositions``: ``positions`` lists what the venue holds on the asked symbols (a symbol
    missing from it is flat at the venue); ``error`` is set, and ``positions`` empty, when the venue could not tell."""

    venue: str
    user_id: int
    symbols: tuple[str, ...]
    positions: tuple[VenuePosition, ...] = ()
    error: str | None = None
