"""ccxt's unified structures → the engine's ``MarketInfo``, ``VenueOrder`` and ``VenuePosition`` (Decimal
throughout)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from adapters.ccxt_profiles import VenueProfile
from engine.logs import get_logger
from engine.messages import MarketInfo, PositionSide, TradeStatus, TradeType, VenueOrder, VenuePosition

__all__ = ["is_duplicate", "market_info", "to_venue_order", "to_venue_position"]

_log = get_logger("adapters.ccxt_orders")
_ZERO = Decimal(0)


def _dec(value: Any, default: Decimal | None = None) -> Decimal | None:
    if value is None or value == "":
        return default
    return Decimal(str(value))


def market_info(market: dict[str, Any], trade_type: TradeType, default_max_leverage: int) -> MarketInfo | None:
    """The engine's view of one ccxt market, or ``None`` if it is not a tradable market of ``trade_type``."""
    if market.get("active") is False:
        return None
    if trade_type is TradeType.SPOT and not market.get("spot"):
        return None
    if trade_type is TradeType.FUTURES and not (market.get("swap") and market.get("linear")):
        return None
    precision, limits = market.get("precision") or {}, market.get("limits") or {}
    qty_step, price_tick = _dec(precision.get("amount")), _dec(precision.get("price"))
    if qty_step is None or price_tick is None:
        return None
    max_leverage = (limits.get("leverage") or {}).get("max")
    spot = trade_type is TradeType.SPOT
    leverage = 1 if spot else (int(max_leverage) if max_leverage else default_max_leverage)
    fields: dict[str, Any] = {}
    taker = _dec(market.get("taker"))
    if taker is not None:
        fields["taker_fee_rate"] = taker
    contract_size = _dec(market.get("contractSize"))
    if contract_size is not None:
        fields["contract_size"] = contract_size
    return MarketInfo(
        symbol=market["symbol"],
        trade_type=trade_type,
        base=market["base"],
        quote=market["quote"],
        qty_step=qty_step,
        price_tick=price_tick,
        min_qty=_dec((limits.get("amount") or {}).get("min"), _ZERO) or _ZERO,
        min_notional=_dec((limits.get("cost") or {}).get("min"), _ZERO) or _ZERO,
        max_leverage=leverage,
        **fields,
    )


def _fee_usdt(raw: dict[str, Any], market: MarketInfo, filled: Decimal, avg: Decimal | None) -> Decimal:
    fees = raw.get("fees") or ([raw["fee"]] if raw.get("fee") else [])
    total, seen = _ZERO, False
    for fee in fees:
        cost = _dec(fee.get("cost"))
        if cost is None:
            continue
        seen = True
        currency = fee.get("currency")
        if currency == market.base and avg is not None:
            total += cost * avg
        elif currency in (market.quote, None):
            total += cost
        else:  # paid in another asset (BNB...): the engine cannot price it here
            _log.info("order.fee_other_asset", currency=currency, cost=str(cost))
    if not seen and filled > 0 and avg is not None:
        # The venue's order answer carries no fee (USDⓈ-M, bybit, bitget): estimate at the taker rate.
        total = filled * market.contract_size * avg * market.taker_fee_rate
    return total


def _fee_base(raw: dict[str, Any], market: MarketInfo) -> Decimal:
    """The fee taken in the base asset: what a spot buy holds is the filled quantity less this."""
    fees = raw.get("fees") or ([raw["fee"]] if raw.get("fee") else [])
    return sum(
        (cost for fee in fees if fee.get("currency") == market.base and (cost := _dec(fee.get("cost")))),
        _ZERO,
    )


def to_venue_order(raw: Any, market: MarketInfo, client_order_id: str) -> VenueOrder | None:
    """The ``VenueOrder`` of a ccxt order, or ``None`` when the answer is only an acknowledgement."""
    if not isinstance(raw, dict) or not isinstance(raw.get("info"), dict) or raw.get("id") is None:
        # ccxt "parses" an HTML page or a cut body into an empty order: that is no answer at all.
        raise TypeError("the venue's order answer is malformed")
    status, filled = raw.get("status"), _dec(raw.get("filled"))
    if status is None or filled is None:
        return None
    amount = _dec(raw.get("amount"))
    avg = _dec(raw.get("average"))
    if avg is None and filled > 0:
        cost = _dec(raw.get("cost"))
        avg = cost / filled if cost else None
    if status == "closed":
        done = amount is None or filled >= amount
        trade_status = TradeStatus.FILLED if done else TradeStatus.PARTIALLY_FILLED
    elif status in ("canceled", "expired", "rejected"):
        if filled > 0:
            trade_status = TradeStatus.PARTIALLY_FILLED
        else:
            trade_status = TradeStatus.REJECTED if status == "rejected" else TradeStatus.CANCELLED
    else:
        trade_status = TradeStatus.SUBMITTED
    return VenueOrder(
        client_order_id=raw.get("clientOrderId") or client_order_id,
        exchange_order_id=str(raw["id"]) if raw.get("id") is not None else None,
        status=trade_status,
        filled_qty=filled,
        avg_price=avg,
        fee_usdt=_fee_usdt(raw, market, filled, avg),
        fee_base=_fee_base(raw, market),
    )


def to_venue_position(raw: Any) -> VenuePosition | None:
    """The ``VenuePosition`` of a ccxt position, or ``None`` when it holds nothing (a zero-size entry).

    Base quantity = contracts x contract size. Margin is what the position holds without unrealised PnL
    (ccxt's ``positionMargin``), else its initial margin, else its collateral. Raises ``TypeError``,
    ``KeyError`` or ``ArithmeticError`` on an entry that cannot be read.
    """
    if not isinstance(raw, dict):
        raise TypeError("the venue's position entry is malformed")
    contracts = _dec(raw.get("contracts"), _ZERO) or _ZERO
    qty = abs(contracts) * (_dec(raw.get("contractSize")) or Decimal(1))
    if qty == 0:
        return None
    side = raw.get("side")
    if side not in ("long", "short"):
        raise KeyError(f"position side {side!r}")
    liquidation = _dec(raw.get("liquidationPrice"))
    margin = next((m for key in ("positionMargin", "initialMargin", "collateral") if (m := _dec(raw.get(key)))), None)
    return VenuePosition(
        symbol=raw["symbol"],
        side=PositionSide(side),
        qty=qty,
        entry_price=_dec(raw.get("entryPrice")),
        liquidation_price=liquidation if liquidation is not None and liquidation > 0 else None,
        margin_usdt=margin,
    )


def is_duplicate(exc: BaseException, profile: VenueProfile) -> bool:
    """Whether a create-order error says the client order id is already taken on the venue."""
    text = str(exc)
    return any(marker in text for marker in profile.duplicate_markers)
