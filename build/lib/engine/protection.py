"""Protective price levels of a position: stop-loss / take-profit from the follow's percentages, and the
isolated-margin liquidation price estimate (see ``engine/positions.py`` for the money model). Pure."""

from __future__ import annotations

from decimal import Decimal

from engine.messages import PositionSide
from engine.precision import round_price

_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


def isolated_liquidation_price(
    side: PositionSide, entry_price: Decimal, leverage: int, maintenance_margin_rate: Decimal
) -> Decimal:
    """Long entry × (1 - 1/lev + mmr), short entry × (1 + 1/lev - mmr); never below zero. One maintenance rate
    (no tiers), fees and funding ignored: an estimate, which a real venue's own figure replaces."""
    inv = Decimal(1) / Decimal(leverage)
    if side is PositionSide.LONG:
        return max(_ZERO, entry_price * (1 - inv + maintenance_margin_rate))
    return entry_price * (1 + inv - maintenance_margin_rate)


def protection_prices(
    side: PositionSide,
    entry_price: Decimal,
    *,
    stop_loss_pct: Decimal | None,
    take_profit_pct: Decimal | None,
    tick: Decimal,
) -> tuple[Decimal | None, Decimal | None]:
    """``(stop_loss, take_profit)`` as percent of the entry PRICE, rounded to ``tick``; ``None`` when unset.

    Long: SL = entry × (1 - pct/100), TP = entry × (1 + pct/100); short mirrored.
    """
    sign = Decimal(1) if side is PositionSide.LONG else Decimal(-1)
    sl = tp = None
    if stop_loss_pct is not None and stop_loss_pct > 0:
        sl = round_price(entry_price * (1 - sign * stop_loss_pct / _HUNDRED), tick)
    if take_profit_pct is not None and take_profit_pct > 0:
        tp = round_price(entry_price * (1 + sign * take_profit_pct / _HUNDRED), tick)
    return sl, tp
