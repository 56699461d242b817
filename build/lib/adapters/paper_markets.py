"""The paper venue's markets (Binance-like lot sizes, ticks, minimums, leverage and fees, starting marks) and
how it reports a futures position."""

from __future__ import annotations

from decimal import Decimal

from engine.messages import MarketInfo, PositionSide, TradeType, VenuePosition
from engine.protection import isolated_liquidation_price

# Like Binance. base: spot (qty_step, price_tick),
#                futures (qty_step, price_tick, min_notional, max_leverage, maintenance margin rate).
_MARKET_RULES: dict[str, tuple[tuple[str, str], tuple[str, str, str, int, str]]] = {
    "BTC": (("0.00001", "0.01"), ("0.001", "0.1", "100", 125, "0.004")),
    "ETH": (("0.0001", "0.01"), ("0.001", "0.01", "20", 100, "0.005")),
    "SOL": (("0.001", "0.01"), ("1", "0.01", "5", 100, "0.005")),
    "XRP": (("0.1", "0.0001"), ("0.1", "0.0001", "5", 75, "0.005")),
    "DOGE": (("1", "0.00001"), ("1", "0.00001", "5", 75, "0.005")),
    "BNB": (("0.001", "0.01"), ("0.01", "0.01", "5", 75, "0.005")),
    "ADA": (("0.1", "0.0001"), ("1", "0.0001", "5", 75, "0.005")),
    "AVAX": (("0.01", "0.01"), ("1", "0.001", "5", 75, "0.01")),
    "LINK": (("0.01", "0.01"), ("0.01", "0.001", "5", 75, "0.01")),
    "LTC": (("0.001", "0.01"), ("0.001", "0.01", "5", 75, "0.01")),
}
DEFAULT_MARKS: dict[str, Decimal] = {
    base: Decimal(price)
    for base, price in {
        "BTC": "60000", "ETH": "3000", "SOL": "150", "XRP": "0.6", "DOGE": "0.15",
        "BNB": "580", "ADA": "0.45", "AVAX": "30", "LINK": "14", "LTC": "80",
    }.items()
}  # fmt: skip


def default_markets() -> list[MarketInfo]:
    """Spot ``BASE/USDT`` (taker 0.1 %) and USDT futures ``BASE/USDT:USDT`` (taker 0.05 %) for each base."""
    markets: list[MarketInfo] = []
    for base, ((spot_step, spot_tick), (step, tick, notional, leverage, mmr)) in _MARKET_RULES.items():
        markets.append(
            MarketInfo(
                symbol=f"{base}/USDT", trade_type=TradeType.SPOT, base=base, quote="USDT",
                qty_step=Decimal(spot_step), price_tick=Decimal(spot_tick), min_qty=Decimal(spot_step),
                min_notional=Decimal(5), taker_fee_rate=Decimal("0.001"),
            )
        )  # fmt: skip
        markets.append(
            MarketInfo(
                symbol=f"{base}/USDT:USDT", trade_type=TradeType.FUTURES, base=base, quote="USDT",
                qty_step=Decimal(step), price_tick=Decimal(tick), min_qty=Decimal(step),
                min_notional=Decimal(notional), max_leverage=leverage, maintenance_margin_rate=Decimal(mmr),
                taker_fee_rate=Decimal("0.0005"),
            )
        )  # fmt: skip
    return markets


def implied_leverage(base_qty: Decimal, entry_price: Decimal, margin: Decimal) -> int:
    """The whole leverage at which ``margin`` holds ``base_qty`` at ``entry_price`` (1 when unknown)."""
    if margin <= 0:
        return 1
    return max(1, round(abs(base_qty) * entry_price / margin))


def liquidation_estimate(market: MarketInfo, *, qty: Decimal, entry_price: Decimal, leverage: int) -> Decimal:
    """The liquidation price of a futures position (``qty`` signed) by the engine's own isolated-margin rule
    (``engine.protection.isolated_liquidation_price``, the market's maintenance margin rate): on the paper venue
    the engine books a liquidation by this estimate, so the venue liquidates by it too."""
    side = PositionSide.LONG if qty > 0 else PositionSide.SHORT
    return isolated_liquidation_price(side, entry_price, leverage, market.maintenance_margin_rate)


def venue_position(
    market: MarketInfo,
    *,
    qty: Decimal,
    entry_price: Decimal,
    leverage: int,
    margin: Decimal,
    liquidation_override: Decimal | None = None,
) -> VenuePosition:
    """What the paper venue says about a futures position (``qty`` signed, in venue units). Its liquidation
    price is ``liquidation_estimate`` (the engine's own), unless a test overrides it."""
    estimate = liquidation_estimate(market, qty=qty, entry_price=entry_price, leverage=leverage)
    return VenuePosition(
        symbol=market.symbol,
        side=PositionSide.LONG if qty > 0 else PositionSide.SHORT,
        qty=abs(qty) * market.contract_size,
        entry_price=entry_price,
        liquidation_price=estimate if liquidation_override is None else liquidation_override,
        margin_usdt=margin,
    )
