"""The emulator's USDT-futures positions (one-way mode, isolated margin) and each venue's wire shape of them.

A position is built from the account's futures fills: size and side, the average entry price, the leverage in
force at the last opening fill, and the isolated margin (entry value / leverage, released pro rata on a
reduce). Its liquidation price follows the isolated-margin formula with the market's maintenance-margin rate
(no tiers, fees and funding ignored, like the engine's estimate), unless a test overrides it:

    long:  entry - margin / size + entry x mmr        short: entry + margin / size - entry x mmr

Runs on the emulator's event loop; nothing is thread-safe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

_ZERO = Decimal(0)
_WIRE = Decimal("1e-8")


def _now_ms() -> int:
    return int(time.time() * 1000)


def wire(value: Decimal) -> str:
    """A venue's number string: fixed point, at most 8 decimals, never an exponent."""
    return format(value.quantize(_WIRE).normalize(), "f") if value else "0"


@dataclass(slots=True)
class FuturesPosition:
    """One account's position on one linear symbol. ``qty`` is signed (> 0 long), in base units."""

    symbol_id: str
    qty: Decimal
    entry_price: Decimal
    leverage: int
    margin: Decimal  # isolated margin held by the position (no unrealised PnL)
    maintenance_margin_rate: Decimal
    liquidation_override: Decimal | None = None  # set by a test (``EmulatorServer.set_liquidation_price``)
    created_ms: int = field(default_factory=_now_ms)
    updated_ms: int = field(default_factory=_now_ms)

    @property
    def size(self) -> Decimal:
        return abs(self.qty)

    @property
    def is_long(self) -> bool:
        return self.qty > 0

    @property
    def liquidation_price(self) -> Decimal:
        if self.liquidation_override is not None:
            return self.liquidation_override
        per_unit, buffer = self.margin / self.size, self.entry_price * self.maintenance_margin_rate
        if self.is_long:
            return max(_ZERO, self.entry_price - per_unit + buffer).quantize(_WIRE)
        return (self.entry_price + per_unit - buffer).quantize(_WIRE)

    def unrealised_pnl(self, mark: Decimal) -> Decimal:
        return (mark - self.entry_price) * self.qty

    def _add(self, qty: Decimal, price: Decimal, leverage: int) -> None:
        size = self.size + abs(qty)
        self.entry_price = (self.entry_price * self.size + price * abs(qty)) / size
        self.margin += abs(qty) * price / leverage
        self.qty += qty
        self.leverage = leverage
        self.liquidation_override = None  # a new entry: the venue recomputes
        self.updated_ms = _now_ms()


def apply_fill(
    positions: dict[tuple[str, str], FuturesPosition],
    key: tuple[str, str],
    signed_qty: Decimal,
    price: Decimal,
    *,
    leverage: int,
    maintenance_margin_rate: Decimal,
) -> None:
    """Book one futures fill (``signed_qty`` > 0 buys): it first reduces an opposite position, the rest opens
    or adds. A flat position is removed."""
    position = positions.get(key)
    if position is not None and position.qty * signed_qty > 0:
        position._add(signed_qty, price, leverage)  # noqa: SLF001 - the module's own helper
        return
    remaining = signed_qty
    if position is not None:
        closing = min(abs(signed_qty), position.size)
        position.margin -= position.margin * closing / position.size
        position.qty += closing if signed_qty > 0 else -closing
        position.updated_ms = _now_ms()
        remaining = signed_qty - (closing if signed_qty > 0 else -closing)
        if position.qty == 0:
            del positions[key]
    if remaining != 0:
        positions[key] = FuturesPosition(
            symbol_id=key[1],
            qty=remaining,
            entry_price=price,
            leverage=leverage,
            margin=abs(remaining) * price / leverage,
            maintenance_margin_rate=maintenance_margin_rate,
        )


# -- wire shapes ---------------------------------------------------------------------------------------------


def binance_position(p: FuturesPosition, mark: Decimal) -> dict[str, Any]:
    """One ``GET /fapi/v3/positionRisk`` entry (one-way mode, isolated)."""
    notional, upnl = p.qty * mark, p.unrealised_pnl(mark)
    initial = abs(notional) / p.leverage
    return {
        "symbol": p.symbol_id,
        "positionSide": "BOTH",
        "positionAmt": wire(p.qty),
        "entryPrice": wire(p.entry_price),
        "breakEvenPrice": wire(p.entry_price),
        "markPrice": wire(mark),
        "unRealizedProfit": wire(upnl),
        "liquidationPrice": wire(p.liquidation_price),
        "isolatedMargin": wire(p.margin + upnl),
        "notional": wire(notional),
        "marginAsset": "USDT",
        "isolatedWallet": wire(p.margin),
        "initialMargin": wire(initial),
        "maintMargin": wire(abs(notional) * p.maintenance_margin_rate),
        "positionInitialMargin": wire(initial),
        "openOrderInitialMargin": "0",
        "adl": 1,
        "bidNotional": "0",
        "askNotional": "0",
        "updateTime": p.updated_ms,
    }


def bybit_position(p: FuturesPosition | None, symbol_id: str, mark: Decimal, seq: int) -> dict[str, Any]:
    """One ``GET /v5/position/list`` entry; ``p`` None is the flat entry Bybit lists for an asked symbol."""
    now = str(_now_ms())
    row: dict[str, Any] = {
        "positionIdx": 0,
        "riskId": 1,
        "riskLimitValue": "2000000",
        "symbol": symbol_id,
        "side": "",
        "size": "0",
        "avgPrice": "0",
        "positionValue": "0",
        "tradeMode": 0,
        "autoAddMargin": 0,
        "positionStatus": "Normal",
        "leverage": "1",
        "markPrice": wire(mark),
        "liqPrice": "",
        "bustPrice": "",
        "positionIM": "0",
        "positionMM": "0",
        "positionIMByMp": "0",
        "positionMMByMp": "0",
        "positionBalance": "0",
        "takeProfit": "",
        "stopLoss": "",
        "trailingStop": "0",
        "sessionAvgPrice": "",
        "unrealisedPnl": "0",
        "curRealisedPnl": "0",
        "cumRealisedPnl": "0",
        "adlRankIndicator": 0,
        "isReduceOnly": False,
        "mmrSysUpdatedTime": "",
        "leverageSysUpdatedTime": "",
        "createdTime": now,
        "updatedTime": now,
        "seq": seq,
    }
    if p is None:
        return row
    bust = p.entry_price - p.margin / p.size if p.is_long else p.entry_price + p.margin / p.size
    maintenance = p.size * mark * p.maintenance_margin_rate
    return row | {
        "side": "Buy" if p.is_long else "Sell",
        "size": wire(p.size),
        "avgPrice": wire(p.entry_price),
        "positionValue": wire(p.size * p.entry_price),
        "leverage": str(p.leverage),
        "liqPrice": wire(p.liquidation_price),
        "bustPrice": wire(max(_ZERO, bust)),
        "positionIM": wire(p.margin),
        "positionMM": wire(maintenance),
        "positionIMByMp": wire(p.size * mark / p.leverage),
        "positionMMByMp": wire(maintenance),
        "positionBalance": wire(p.margin),
        "unrealisedPnl": wire(p.unrealised_pnl(mark)),
        "adlRankIndicator": 2,
        "createdTime": str(p.created_ms),
        "updatedTime": str(p.updated_ms),
    }


def bitget_position(p: FuturesPosition, mark: Decimal) -> dict[str, Any]:
    """One ``GET /api/v2/mix/position/all-position`` entry (isolated, one-way mode)."""
    upnl = p.unrealised_pnl(mark)
    maintenance = p.size * mark * p.maintenance_margin_rate
    return {
        "marginCoin": "USDT",
        "symbol": p.symbol_id,
        "holdSide": "long" if p.is_long else "short",
        "openDelegateSize": "0",
        "marginSize": wire(p.margin),
        "available": wire(p.size),
        "locked": "0",
        "total": wire(p.size),
        "leverage": str(p.leverage),
        "achievedProfits": "0",
        "openPriceAvg": wire(p.entry_price),
        "marginMode": "isolated",
        "posMode": "one_way_mode",
        "unrealizedPL": wire(upnl),
        "liquidationPrice": wire(p.liquidation_price),
        "keepMarginRate": wire(p.maintenance_margin_rate),
        "markPrice": wire(mark),
        "marginRatio": wire(maintenance / (p.margin + upnl)) if p.margin + upnl > 0 else "1",
        "breakEvenPrice": wire(p.entry_price),
        "totalFee": "",
        "deductedFee": "0",
        "takeProfit": "",
        "stopLoss": "",
        "takeProfitId": "",
        "stopLossId": "",
        "assetMode": "single",
        "autoMargin": "off",
        "grant": "",
        "cTime": str(p.created_ms),
        "uTime": str(p.updated_ms),
    }
