"""The engine's vocabulary: the enums every message, row and log line uses. Names and values are stable: they
are counted, logged and stored. Import them from ``engine.messages`` (which re-exports them) or from here."""

from __future__ import annotations

import enum


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class SignalAction(enum.StrEnum):
    OPEN = "open"
    INCREASE = "increase"
    REDUCE = "reduce"
    CLOSE = "close"


class TradeType(enum.StrEnum):
    SPOT = "spot"
    FUTURES = "futures"


class Priority(enum.StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Lower runs first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.HIGH: 0, Priority.MEDIUM: 1, Priority.LOW: 2}


class SignalStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    PROCESSED = "processed"
    FAILED = "failed"
    EXPIRED = "expired"


class TradeStatus(enum.StrEnum):
    PENDING = "pending"  # intent durable, order not yet sent
    SUBMITTED = "submitted"  # sent, no answer yet
    FILLED = "filled"
    PARTIALLY_FILLED = "partially_filled"  # final: the venue filled part and cancelled the rest
    REJECTED = "rejected"  # the venue said no, definitively
    FAILED = "failed"  # never reached the venue (or reconciliation proved it never existed)
    UNKNOWN = "unknown"  # outcome not known: resolved by asking the venue for the client order id
    CANCELLED = "cancelled"


class PositionSide(enum.StrEnum):
    LONG = "long"
    SHORT = "short"


class PositionStatus(enum.StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    LIQUIDATED = "liquidated"


class SizingMode(enum.StrEnum):
    FIXED_USDT = "fixed_usdt"
    PERCENT_OF_BALANCE = "percent_of_balance"
    MULTIPLIER_OF_WHALE = "multiplier_of_whale"


class SkipReason(enum.StrEnum):
    """Why a follower did not copy a signal. Names are stable: they are counted, logged and stored."""

    COPY_DISABLED = "copy_disabled"
    AUTO_COPY_DISABLED = "auto_copy_disabled"
    PAUSED = "paused"
    NOT_FOLLOWING = "not_following"
    SIGNAL_TOO_OLD = "signal_too_old"
    SLIPPAGE_TOO_HIGH = "slippage_too_high"
    NO_PRICE = "no_price"
    UNKNOWN_SYMBOL = "unknown_symbol"
    TRADE_TYPE_UNSUPPORTED = "trade_type_unsupported"
    BELOW_MIN_NOTIONAL = "below_min_notional"
    BELOW_MIN_QTY = "below_min_qty"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    MAX_OPEN_POSITIONS = "max_open_positions"
    MAX_TRADES_PER_DAY = "max_trades_per_day"
    DAILY_LOSS_LIMIT = "daily_loss_limit"
    NO_POSITION = "no_position"  # whale reduced/closed something the follower does not hold
    POSITION_BUSY = "position_busy"  # an order on that position is still in flight
    VENUE_UNAVAILABLE = "venue_unavailable"  # breaker open for entries
    DRAINING = "draining"
    SYMBOL_HELD = "symbol_held"  # the follower holds this symbol from another whale's signal
    OPPOSITE_POSITION = "opposite_position"  # an open in the other direction while a copy is open
    SIGNAL_EXPIRED = "signal_expired"
