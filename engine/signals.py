"""Parse and validate a whale signal from a dict (admin socket JSON or a ``whale_signals`` row).

``parse_signal(data, now=...)`` returns a ``Signal`` or raises ``SignalRejected(reason, detail)``. Reasons are
stable strings (counted and stored): ``missing_field``, ``bad_field``, ``non_positive_price``,
``non_positive_size``, ``bad_fraction``, ``stale``, ``expired``; the router adds ``unknown_whale`` and
``unknown_symbol``, which need state this module does not have.

Accepted shapes:

* numbers as JSON numbers, strings or ``Decimal`` (floats go through their shortest repr, never binary);
  NaN and infinities are ``bad_field``;
* timestamps as ISO-8601 strings, ``datetime`` objects or epoch MILLISECONDS; naive values are taken as UTC;
  ``detected_at`` defaults to ``now`` (admin-injected signals); more than ``MAX_CLOCK_SKEW_S`` in the future
  is ``bad_field``;
* symbols unified (``BTC/USDT:USDT`` futures, ``BTC/USDT`` spot) or exchange-style (``BTCUSDT``,
  ``BTC-USDT``, ``btc_usdt``), normalised by ``trade_type``; without ``trade_type`` a unified symbol decides
  it; only USDT-quoted symbols are accepted;
* enums case-insensitive (``"BUY"``); ``external_id`` defaults to ``str(signal_id)``;
* ``fraction``: required in (0, 1] for REDUCE; forced to 1 for CLOSE; dropped for OPEN/INCREASE (but still
  ``bad_fraction`` when given out of range).

``stale`` (older than ``max_age_s``) and ``expired`` (``expires_at`` passed) refuse ENTRIES only (OPEN, INCREASE):
an exit (REDUCE, CLOSE) of any age is accepted, so a whale's close copied after an outage still closes the copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from engine.messages import Priority, Side, Signal, SignalAction, TradeType

__all__ = [
    "BAD_FIELD",
    "BAD_FRACTION",
    "DEFAULT_MAX_SIGNAL_AGE_S",
    "EXIT_ACTIONS",
    "EXPIRED",
    "MAX_CLOCK_SKEW_S",
    "MISSING_FIELD",
    "NON_POSITIVE_PRICE",
    "NON_POSITIVE_SIZE",
    "STALE",
    "UNKNOWN_SYMBOL",
    "UNKNOWN_WHALE",
    "SignalRejected",
    "normalize_symbol",
    "parse_signal",
]

MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
NON_POSITIVE_PRICE = "non_positive_price"
NON_POSITIVE_SIZE = "non_positive_size"
BAD_FRACTION = "bad_fraction"
STALE = "stale"
EXPIRED = "expired"
UNKNOWN_WHALE = "unknown_whale"  # checked by the router
UNKNOWN_SYMBOL = "unknown_symbol"  # checked by the router

# A whale's exit: never refused for its age or expiry, anywhere (intake, router, follower).
EXIT_ACTIONS = frozenset({SignalAction.REDUCE, SignalAction.CLOSE})

DEFAULT_MAX_SIGNAL_AGE_S = 300
MAX_CLOCK_SKEW_S = 60
_QUOTE = "USDT"


class SignalRejected(Exception):
    """The signal cannot be used; ``reason`` is one of the constants above, ``detail`` names the field."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _Wire(msgspec.Struct, kw_only=True):
    """The accepted input, before normalisation. Unknown keys (a DB row's extra columns) are ignored."""

    signal_id: int
    whale_id: int
    symbol: str
    side: Side
    action: SignalAction
    price: Decimal
    size_usdt: Decimal
    external_id: str | None = None
    trade_type: TradeType | None = None
    leverage: int = 1
    priority: Priority = Priority.MEDIUM
    detected_at: datetime | int | None = None
    expires_at: datetime | int | None = None
    fraction: Decimal | None = None


_ENUM_FIELDS = ("side", "action", "trade_type", "priority")


def parse_signal(data: Mapping[str, Any], *, now: datetime, max_age_s: float = DEFAULT_MAX_SIGNAL_AGE_S) -> Signal:
    """Validate ``data`` into a ``Signal``; raises ``SignalRejected``. ``now`` is tz-aware UTC."""
    wire = _decode(data)
    trade_type, symbol = normalize_symbol(wire.symbol, wire.trade_type)
    for name in ("price", "size_usdt", "fraction"):
        value = getattr(wire, name)
        if value is not None and not value.is_finite():
            raise SignalRejected(BAD_FIELD, f"{name} is not a finite number: {value}")
    if wire.price <= 0:
        raise SignalRejected(NON_POSITIVE_PRICE, f"price {wire.price}")
    if wire.size_usdt <= 0:
        raise SignalRejected(NON_POSITIVE_SIZE, f"size_usdt {wire.size_usdt}")
    if wire.leverage < 1:
        raise SignalRejected(BAD_FIELD, f"leverage must be >= 1, got {wire.leverage}")
    fraction = _fraction(wire.action, wire.fraction)
    detected_at = _timestamp("detected_at", wire.detected_at) or now
    expires_at = _timestamp("expires_at", wire.expires_at)
    if detected_at - now > timedelta(seconds=MAX_CLOCK_SKEW_S):
        raise SignalRejected(BAD_FIELD, f"detected_at {detected_at.isoformat()} is in the future")
    if wire.action not in EXIT_ACTIONS:  # an exit of any age closes: age and expiry limit entries only
        if expires_at is not None and expires_at <= now:
            raise SignalRejected(EXPIRED, f"expired at {expires_at.isoformat()}")
        age_s = (now - detected_at).total_seconds()
        if age_s > max_age_s:
            raise SignalRejected(STALE, f"detected {age_s:.3f}s ago > {max_age_s}s")
    return Signal(
        signal_id=wire.signal_id,
        external_id=wire.external_id or str(wire.signal_id),
        whale_id=wire.whale_id,
        symbol=symbol,
        side=wire.side,
        action=wire.action,
        trade_type=trade_type,
        price=wire.price,
        size_usdt=wire.size_usdt,
        leverage=wire.leverage if trade_type is TradeType.FUTURES else 1,
        priority=wire.priority,
        detected_at=detected_at,
        expires_at=expires_at,
        fraction=fraction,
    )


def _decode(data: Mapping[str, Any]) -> _Wire:
    cleaned = dict(data)
    for name in _ENUM_FIELDS:
        if isinstance(cleaned.get(name), str):
            cleaned[name] = cleaned[name].strip().lower()
    try:
        # strict: no "12" -> 12 or bool -> int coercion; Decimal accepts str/int/float by design.
        return msgspec.convert(cleaned, _Wire, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.startswith("Object missing required field"):
            raise SignalRejected(MISSING_FIELD, message) from None
        raise SignalRejected(BAD_FIELD, message) from None


def _fraction(action: SignalAction, fraction: Decimal | None) -> Decimal | None:
    if fraction is not None and not 0 < fraction <= 1:
        raise SignalRejected(BAD_FRACTION, f"fraction must be in (0, 1], got {fraction}")
    if action is SignalAction.REDUCE:
        if fraction is None:
            raise SignalRejected(BAD_FRACTION, "reduce needs a fraction in (0, 1]")
        return fraction
    if action is SignalAction.CLOSE:
        return Decimal(1)
    return None


def _timestamp(name: str, value: datetime | int | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise SignalRejected(BAD_FIELD, f"{name} epoch ms out of range: {value}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def normalize_symbol(raw: str, trade_type: TradeType | None) -> tuple[TradeType, str]:
    """``(trade_type, unified symbol)`` for ``raw``; raises ``SignalRejected(bad_field | missing_field)``.

    ``BTCUSDT`` + futures → ``BTC/USDT:USDT``; ``BTC/USDT`` + spot → ``BTC/USDT``. A unified symbol that
    contradicts ``trade_type`` is ``bad_field``.
    """
    text = raw.strip().upper()
    implied: TradeType | None = None
    if ":" in text:
        pair, settle = text.split(":", 1)
        if settle != _QUOTE:
            raise SignalRejected(BAD_FIELD, f"symbol {raw!r}: only {_QUOTE}-settled futures")
        implied = TradeType.FUTURES
    elif "/" in text:
        pair, implied = text, TradeType.SPOT
    else:
        pair = text
    base = pair.replace("/", "").replace("-", "").replace("_", "")
    if not base.endswith(_QUOTE) or len(base) == len(_QUOTE) or not base.isalnum():
        raise SignalRejected(BAD_FIELD, f"symbol {raw!r}: expected BASE/{_QUOTE}, BASE/{_QUOTE}:{_QUOTE}")
    base = base.removesuffix(_QUOTE)
    if trade_type is None:
        if implied is None:
            raise SignalRejected(MISSING_FIELD, f"trade_type is required for symbol {raw!r}")
        trade_type = implied
    elif implied is not None and implied is not trade_type:
        raise SignalRejected(BAD_FIELD, f"symbol {raw!r} contradicts trade_type {trade_type}")
    if trade_type is TradeType.FUTURES:
        return trade_type, f"{base}/{_QUOTE}:{_QUOTE}"
    return trade_type, f"{base}/{_QUOTE}"
