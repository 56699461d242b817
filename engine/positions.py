"""A follower's position: fills, PnL, margin, liquidation price and SL/TP triggers.

``Position`` is a MUTABLE domain object owned by exactly one actor (the follower that holds it); other actors
only ever see its immutable ``PositionRow`` (``to_row``). Every change of state bumps ``version``, which the
persistence actor uses to keep only the newest row.

Money model (isolated margin, USDT-margined, linear contracts):

* ``qty`` is in venue units; one unit is ``contract_size`` of the base asset, so value = qty × contract_size ×
  price.
* margin committed by a fill = fill value / leverage; spot is leverage 1, so its "margin" is the cost.
* entry price = quantity-weighted average of the entry fills.
* PnL of a closing fill: long (exit - entry) × qty × contract_size, short (entry - exit) × ...
* every fee (entry and exit) is deducted from realised PnL. A closing fill's net loss is capped at the
  margin it releases: isolated margin cannot lose more than it holds (the venue liquidates first and an
  insurance fund covers gaps), so cash returned to the account is never negative.
* liquidation price (futures only): long entry × (1 - 1/lev + mmr), short entry × (1 + 1/lev - mmr).
  Simplifications: ``mmr`` is the market's single maintenance-margin rate (no tiers), fees and funding
  are ignored, and it follows the average entry at the position's nominal leverage.
* ``liquidate()`` realises the loss of the whole margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from engine.messages import PositionRow, PositionSide, PositionStatus, Side, TradeType
from engine.protection import isolated_liquidation_price, protection_prices

__all__ = ["Position", "PositionError", "Realized", "Trigger", "protection_prices"]

Trigger = Literal["stop_loss", "take_profit", "liquidation"]
_ZERO = Decimal(0)


class PositionError(ValueError):
    """An operation that does not fit the position's state (closed, oversized reduce, bad numbers)."""


@dataclass(frozen=True, slots=True)
class Realized:
    """What one closing fill realised. Credit ``cash_returned_usdt`` to the account's free balance."""

    pnl_usdt: Decimal  # net of the exit fee, capped at -margin_released_usdt
    margin_released_usdt: Decimal

    @property
    def cash_returned_usdt(self) -> Decimal:
        """Margin coming back plus (or minus) the realised PnL; never negative."""
        return self.margin_released_usdt + self.pnl_usdt


_STORED = Decimal("1e-8")


def _stored(value: Decimal) -> Decimal:
    return value.quantize(_STORED)


def _stored_or_none(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(_STORED)


def _positive(name: str, value: Decimal) -> None:
    if not value.is_finite() or value <= 0:
        raise PositionError(f"{name} must be positive, got {value}")


class Position:
    """One open (or finished) position. Not thread-safe: owned by one actor. See the module docstring."""

    __slots__ = (
        "_liquidation_estimate",
        "close_reason",
        "closed_at",
        "contract_size",
        "entry_price",
        "leverage",
        "maintenance_margin_rate",
        "margin_usdt",
        "opened_at",
        "position_id",
        "qty",
        "realized_pnl_usdt",
        "side",
        "status",
        "stop_loss_price",
        "symbol",
        "take_profit_price",
        "trade_type",
        "unrealized_pnl_usdt",
        "user_id",
        "venue",
        "venue_liquidation_price",
        "version",
        "whale_id",
    )

    def __init__(
        self,
        *,
        position_id: str,
        user_id: int,
        venue: str,
        symbol: str,
        trade_type: TradeType,
        side: PositionSide,
        qty: Decimal,
        entry_price: Decimal,
        leverage: int,
        margin_usdt: Decimal,
        status: PositionStatus = PositionStatus.OPEN,
        whale_id: int | None = None,
        stop_loss_price: Decimal | None = None,
        take_profit_price: Decimal | None = None,
        realized_pnl_usdt: Decimal = _ZERO,
        unrealized_pnl_usdt: Decimal = _ZERO,
        opened_at: datetime | None = None,
        closed_at: datetime | None = None,
        close_reason: str | None = None,
        maintenance_margin_rate: Decimal = Decimal("0.005"),
        contract_size: Decimal = Decimal(1),
        version: int = 1,
    ) -> None:
        """Restore a position as it is; use ``open`` for a new one from its first fill."""
        self.position_id = position_id
        self.user_id = user_id
        self.venue = venue
        self.symbol = symbol
        self.trade_type = trade_type
        self.side = side
        self.qty = qty
        self.entry_price = entry_price
        self.leverage = leverage if trade_type is TradeType.FUTURES else 1
        self.margin_usdt = margin_usdt
        self.status = status
        self.whale_id = whale_id
        self.stop_loss_price = stop_loss_price
        self.take_profit_price = take_profit_price
        self.realized_pnl_usdt = realized_pnl_usdt
        self.unrealized_pnl_usdt = unrealized_pnl_usdt
        self.opened_at = opened_at
        self.closed_at = closed_at
        self.close_reason = close_reason
        self.maintenance_margin_rate = maintenance_margin_rate
        self.contract_size = contract_size
        self.version = version
        # What the venue says (``adopt_venue_liquidation_price``); it replaces our estimate until the size changes.
        self.venue_liquidation_price: Decimal | None = None
        # ((entry, leverage, mmr), estimate): every price tick reads it; the formula divides.
        self._liquidation_estimate: tuple[tuple[Decimal, int, Decimal], Decimal] | None = None

    # -- construction ------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        position_id: str,
        user_id: int,
        venue: str,
        symbol: str,
        trade_type: TradeType,
        side: PositionSide,
        qty: Decimal,
        price: Decimal,
        leverage: int,
        fee_usdt: Decimal,
        now: datetime,
        whale_id: int | None = None,
        stop_loss_price: Decimal | None = None,
        take_profit_price: Decimal | None = None,
        maintenance_margin_rate: Decimal = Decimal("0.005"),
        contract_size: Decimal = Decimal(1),
    ) -> Position:
        """A new OPEN position from its first fill; the entry fee is charged to realised PnL."""
        _positive("qty", qty)
        _positive("price", price)
        if trade_type is TradeType.SPOT and side is PositionSide.SHORT:
            raise PositionError("spot positions can only be long")
        lev = max(1, leverage) if trade_type is TradeType.FUTURES else 1
        return cls(
            position_id=position_id,
            user_id=user_id,
            venue=venue,
            symbol=symbol,
            trade_type=trade_type,
            side=side,
            qty=qty,
            entry_price=price,
            leverage=lev,
            margin_usdt=qty * contract_size * price / lev,
            whale_id=whale_id,
            stop_loss_price=stop_loss_price,
            take_profit_price=take_profit_price,
            realized_pnl_usdt=-fee_usdt,
            opened_at=now,
            maintenance_margin_rate=maintenance_margin_rate,
            contract_size=contract_size,
        )

    @classmethod
    def from_row(
        cls,
        row: PositionRow,
        *,
        maintenance_margin_rate: Decimal = Decimal("0.005"),
        contract_size: Decimal = Decimal(1),
    ) -> Position:
        """Restore from a row; the row does not carry the market's mmr and contract size, so pass them."""
        return cls(
            position_id=row.position_id,
            user_id=row.user_id,
            venue=row.venue,
            symbol=row.symbol,
            trade_type=row.trade_type,
            side=row.side,
            qty=row.qty,
            entry_price=row.entry_price,
            leverage=row.leverage,
            margin_usdt=row.margin_usdt,
            status=row.status,
            whale_id=row.whale_id,
            stop_loss_price=row.stop_loss_price,
            take_profit_price=row.take_profit_price,
            realized_pnl_usdt=row.realized_pnl_usdt,
            unrealized_pnl_usdt=row.unrealized_pnl_usdt,
            opened_at=row.opened_at,
            closed_at=row.closed_at,
            close_reason=row.close_reason,
            maintenance_margin_rate=maintenance_margin_rate,
            contract_size=contract_size,
            version=row.version,
        )

    def to_row(self) -> PositionRow:
        """The immutable row to persist or send. Money and prices are stored to 1e-8 (the arithmetic here keeps
        full precision; a division such as margin = value / leverage would otherwise store 28 digits)."""
        return PositionRow(
            position_id=self.position_id,
            user_id=self.user_id,
            venue=self.venue,
            symbol=self.symbol,
            trade_type=self.trade_type,
            side=self.side,
            qty=self.qty,
            entry_price=_stored(self.entry_price),
            leverage=self.leverage,
            margin_usdt=_stored(self.margin_usdt),
            status=self.status,
            whale_id=self.whale_id,
            stop_loss_price=self.stop_loss_price,
            take_profit_price=self.take_profit_price,
            liquidation_price=_stored_or_none(self.liquidation_price),
            realized_pnl_usdt=_stored(self.realized_pnl_usdt),
            unrealized_pnl_usdt=_stored(self.unrealized_pnl_usdt),
            opened_at=self.opened_at,
            closed_at=self.closed_at,
            close_reason=self.close_reason,
            version=self.version,
        )

    # -- derived values ----------------------------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        """OPEN or CLOSING: the position still holds quantity."""
        return self.status in (PositionStatus.OPEN, PositionStatus.CLOSING)

    @property
    def exit_side(self) -> Side:
        """The order side that reduces this position."""
        return Side.SELL if self.side is PositionSide.LONG else Side.BUY

    @property
    def liquidation_price(self) -> Decimal | None:
        """Isolated-margin liquidation price (see module docstring), or the venue's own figure once adopted;
        ``None`` for spot or when flat."""
        if self.trade_type is not TradeType.FUTURES or self.qty <= 0:
            return None
        if self.venue_liquidation_price is not None:
            return self.venue_liquidation_price
        key = (self.entry_price, self.leverage, self.maintenance_margin_rate)
        cached = self._liquidation_estimate
        if cached is not None and cached[0] == key:
            return cached[1]
        estimate = isolated_liquidation_price(self.side, *key)
        self._liquidation_estimate = (key, estimate)
        return estimate

    def unrealized_pnl(self, mark: Decimal) -> Decimal:
        """Gross PnL of the remaining quantity at ``mark`` (fees not included)."""
        return self._gross_pnl(self.qty, mark)

    def _gross_pnl(self, qty: Decimal, price: Decimal) -> Decimal:
        diff = price - self.entry_price if self.side is PositionSide.LONG else self.entry_price - price
        return diff * qty * self.contract_size

    # -- changes -------------------------------------------------------------------------------------------

    def _require_active(self) -> None:
        if not self.is_active:
            raise PositionError(f"position {self.position_id} is {self.status}")

    def mark_to_market(self, mark: Decimal) -> Decimal:
        """Refresh ``unrealized_pnl_usdt`` at ``mark`` (bumps the version only if it changed)."""
        if self.is_active:
            pnl = self.unrealized_pnl(mark)
            if pnl != self.unrealized_pnl_usdt:
                self.unrealized_pnl_usdt = pnl
                self.version += 1
        return self.unrealized_pnl_usdt

    def near_liquidation(self, mark: Decimal, band: Decimal) -> bool:
        """``mark`` is past the liquidation price or within ``band`` (a fraction of it) of it."""
        level = self.liquidation_price
        if level is None or not self.is_active:
            return False
        if self.side is PositionSide.LONG:
            return mark <= level * (1 + band)
        return mark >= level * (1 - band)

    def adopt_venue_liquidation_price(self, price: Decimal | None) -> bool:
        """Take the venue's liquidation price instead of our estimate (``None``: back to the estimate).
        Returns whether the effective price changed (the version is bumped then)."""
        before = self.liquidation_price
        self.venue_liquidation_price = price if price is not None and price > 0 else None
        if self.liquidation_price == before:
            return False
        self.version += 1
        return True

    def set_protection(self, *, stop_loss_price: Decimal | None, take_profit_price: Decimal | None) -> None:
        """Replace the SL/TP prices (e.g. recomputed from the new average entry after an increase)."""
        self.stop_loss_price = stop_loss_price
        self.take_profit_price = take_profit_price
        self.version += 1

    def increase(self, qty: Decimal, price: Decimal, fee_usdt: Decimal) -> Decimal:
        """Apply an entry fill; returns the margin it committed. Entry price becomes the weighted average."""
        self._require_active()
        _positive("qty", qty)
        _positive("price", price)
        total = self.qty + qty
        self.entry_price = (self.entry_price * self.qty + price * qty) / total
        self.qty = total
        self.venue_liquidation_price = None  # the venue's figure was for the old entry: estimate until asked again
        added = qty * self.contract_size * price / self.leverage
        self.margin_usdt += added
        self.realized_pnl_usdt -= fee_usdt
        self.version += 1
        return added

    def reduce(self, qty: Decimal, price: Decimal, fee_usdt: Decimal, *, now: datetime) -> Realized:
        """Apply a closing fill of ``qty`` (≤ the held qty). Reaching zero closes the position."""
        self._require_active()
        _positive("qty", qty)
        _positive("price", price)
        if qty > self.qty:
            raise PositionError(f"reduce {qty} > held {self.qty} on {self.position_id}")
        released = self.margin_usdt if qty == self.qty else self.margin_usdt * qty / self.qty
        pnl = max(self._gross_pnl(qty, price) - fee_usdt, -released)
        self.qty -= qty
        self.margin_usdt -= released
        self.realized_pnl_usdt += pnl
        if self.qty == 0:
            self.status = PositionStatus.CLOSED
            self.closed_at = now
            self.unrealized_pnl_usdt = _ZERO
            self.close_reason = self.close_reason or "signal"
        self.version += 1
        return Realized(pnl_usdt=pnl, margin_released_usdt=released)

    def close(self, price: Decimal, fee_usdt: Decimal, *, now: datetime, reason: str | None = None) -> Realized:
        """Close the whole remaining quantity at ``price``.

        ``reason`` (signal, stop_loss, take_profit, manual) defaults to the one given to ``begin_closing``,
        else "signal".
        """
        self.close_reason = reason or self.close_reason or "signal"
        return self.reduce(self.qty, price, fee_usdt, now=now)

    def begin_closing(self, reason: str) -> None:
        """OPEN → CLOSING: an engine close order is in flight (no SL/TP triggers meanwhile)."""
        if self.status is not PositionStatus.OPEN:
            raise PositionError(f"position {self.position_id} is {self.status}, cannot begin closing")
        self.status = PositionStatus.CLOSING
        self.close_reason = reason
        self.version += 1

    def abort_closing(self) -> None:
        """CLOSING → OPEN: the close order failed definitively; the position is live again."""
        if self.status is not PositionStatus.CLOSING:
            raise PositionError(f"position {self.position_id} is {self.status}, not closing")
        self.status = PositionStatus.OPEN
        self.close_reason = None
        self.version += 1

    def liquidate(self, *, now: datetime) -> Realized:
        """The venue (or paper venue) liquidated the position: the whole margin is lost."""
        self._require_active()
        released = self.margin_usdt
        self.realized_pnl_usdt -= released
        self.qty = _ZERO
        self.margin_usdt = _ZERO
        self.unrealized_pnl_usdt = _ZERO
        self.status = PositionStatus.LIQUIDATED
        self.closed_at = now
        self.close_reason = "liquidation"
        self.version += 1
        return Realized(pnl_usdt=-released, margin_released_usdt=released)

    def check_triggers(self, mark: Decimal, *, liquidation: bool = True) -> Trigger | None:
        """Which exit ``mark`` triggers: liquidation beats stop loss beats take profit.

        Liquidation is checked while OPEN or CLOSING (an in-flight close does not protect from it);
        SL/TP only while OPEN, because a close is already under way otherwise. ``liquidation=False`` leaves
        it out (a real venue says whether it liquidated; our estimate must not hide a stop loss).
        """
        if not self.is_active:
            return None
        long = self.side is PositionSide.LONG

        def crossed(level: Decimal | None, *, adverse: bool) -> bool:
            if level is None:
                return False
            # Adverse levels (liq, SL) are crossed by moving against the position, TP by moving with it.
            return (mark <= level) if long == adverse else (mark >= level)

        if liquidation and crossed(self.liquidation_price, adverse=True):
            return "liquidation"
        if self.status is not PositionStatus.OPEN:
            return None
        if crossed(self.stop_loss_price, adverse=True):
            return "stop_loss"
        if crossed(self.take_profit_price, adverse=False):
            return "take_profit"
        return None
