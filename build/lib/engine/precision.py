"""Venue precision: lot steps, price ticks, minimum quantity and minimum notional.

Rules (docs/architecture.md):

* quantities are rounded DOWN to a multiple of the lot step, so an order never exceeds what was sized;
* prices are rounded to the NEAREST tick, half up. Market orders only carry a price *hint* and SL/TP are
  engine-side triggers, so direction-aware rounding would buy nothing here and would be one more thing to get
  wrong;
* money estimates that are reserved (margin, fee) are rounded UP to ``MONEY_QUANTUM`` so that a reservation
  never falls short of what the order costs.

Steps need not be powers of ten: 0.001, 1, 0.5 and 10 all work, because rounding divides by the step rather
than quantizing to a number of decimals.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, ROUND_HALF_UP, ROUND_UP, Decimal

from engine.messages import MarketInfo, SkipReason

__all__ = [
    "MONEY_QUANTUM",
    "check_minimums",
    "money_up",
    "notional",
    "round_price",
    "round_qty_down",
]

MONEY_QUANTUM = Decimal("0.00000001")  # 1e-8 USDT, below every venue's own precision


def _check_step(step: Decimal, what: str) -> None:
    if not step.is_finite() or step <= 0:
        raise ValueError(f"{what} must be a positive finite number, got {step}")


def round_qty_down(qty: Decimal, step: Decimal) -> Decimal:
    """The largest multiple of ``step`` that is ``<= qty`` (``qty >= 0``)."""
    _check_step(step, "qty step")
    if qty < 0:
        raise ValueError(f"qty must not be negative, got {qty}")
    return (qty / step).to_integral_value(rounding=ROUND_FLOOR) * step


def round_price(price: Decimal, tick: Decimal) -> Decimal:
    """``price`` rounded to the nearest multiple of ``tick``, halves up (``price >= 0``)."""
    _check_step(tick, "price tick")
    if price < 0:
        raise ValueError(f"price must not be negative, got {price}")
    return (price / tick).to_integral_value(rounding=ROUND_HALF_UP) * tick


def money_up(amount: Decimal) -> Decimal:
    """``amount`` rounded up (away from zero) to ``MONEY_QUANTUM``: for reservations and estimates."""
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_UP)


def notional(qty: Decimal, price: Decimal, market: MarketInfo) -> Decimal:
    """Quote value of ``qty`` venue units (contracts for futures) at ``price``."""
    return qty * market.contract_size * price


def check_minimums(
    qty: Decimal, price: Decimal, market: MarketInfo, *, min_notional: Decimal = Decimal(0)
) -> tuple[SkipReason, str] | None:
    """``None`` if a ROUNDED ``qty`` at ``price`` is tradeable, else ``(reason, detail)``.

    The notional floor is the larger of the market's and ``min_notional`` (the follower's own floor).
    A zero quantity is always below the minimum quantity, even when the market states no minimum.
    """
    if qty <= 0 or qty < market.min_qty:
        return SkipReason.BELOW_MIN_QTY, f"qty {qty} < min qty {max(market.min_qty, market.qty_step)}"
    floor = max(market.min_notional, min_notional)
    value = notional(qty, price, market)
    if value < floor:
        return SkipReason.BELOW_MIN_NOTIONAL, f"notional {value} < min notional {floor}"
    return None
