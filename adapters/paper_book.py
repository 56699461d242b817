"""The paper venue's fill rules: what one market order does to a user's wallet and futures position.

Pure functions over the state the paper venue (``adapters/paper.py``) owns and passes in, called under its lock:
validation against the market's lot and leverage rules, the fill price (mark plus slippage, rounded to the tick),
and settlement (spot wallets; futures margin in one-way mode, an order first reducing an opposite position).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from adapters.paper_markets import liquidation_estimate
from engine.messages import MarketInfo, OrderRequest, Side, TradeType
from engine.venue import OrderRejected

BPS = Decimal(10_000)
ZERO = Decimal(0)

Wallet = dict[str, Decimal]


@dataclass(slots=True)
class PaperPosition:
    qty: Decimal  # signed: > 0 long, < 0 short
    entry_price: Decimal
    margin: Decimal
    leverage: int
    liquidation_estimate: Decimal | None = None  # ``liquidation_estimate`` at this entry; None: market unknown
    liquidation_override: Decimal | None = None  # ``set_liquidation_price``; cleared when the position grows

    @property
    def liquidation_price(self) -> Decimal | None:
        return self.liquidation_estimate if self.liquidation_override is None else self.liquidation_override

    def crossed(self, mark: Decimal) -> bool:
        """``mark`` is at or beyond the liquidation price (below it for a long, above it for a short)."""
        level = self.liquidation_price
        if level is None:
            return False
        return mark <= level if self.qty > 0 else mark >= level


def round_to(value: Decimal, step: Decimal, rounding: str) -> Decimal:
    return (value / step).to_integral_value(rounding=rounding) * step


def validate(markets: dict[str, MarketInfo], request: OrderRequest) -> MarketInfo:
    """The request's market, or ``OrderRejected`` as a venue refuses a bad symbol, lot or leverage."""
    market = markets.get(request.symbol)
    if market is None or market.trade_type is not request.trade_type:
        raise OrderRejected(f"paper: unknown {request.trade_type} symbol {request.symbol}")
    if request.qty <= 0 or request.qty % market.qty_step != 0 or request.qty < market.min_qty:
        raise OrderRejected(f"paper: quantity {request.qty} violates lot size {market.qty_step}")
    if request.leverage < 1 or request.leverage > market.max_leverage:
        raise OrderRejected(f"paper: leverage {request.leverage} outside 1..{market.max_leverage}")
    return market


def fill_price(mark: Decimal | None, request: OrderRequest, market: MarketInfo, slippage_bps: Decimal) -> Decimal:
    """The mark (or the request's price hint when the venue has none) moved against the taker by the slippage."""
    if mark is None:
        mark = request.price_hint if request.price_hint > 0 else None
    if mark is None:
        raise OrderRejected(f"paper: no price for {request.symbol}")
    if request.side is Side.BUY:
        return round_to(mark * (1 + slippage_bps / BPS), market.price_tick, ROUND_CEILING)
    return round_to(mark * (1 - slippage_bps / BPS), market.price_tick, ROUND_FLOOR)


def settle(
    wallet: Wallet,
    positions: dict[tuple[int, str], PaperPosition],
    request: OrderRequest,
    market: MarketInfo,
    *,
    qty: Decimal,
    price: Decimal,
    fee: Decimal,
) -> None:
    """Book a fill of ``qty`` at ``price`` (``OrderRejected``, and nothing changed, when funds do not allow it)."""
    if market.trade_type is TradeType.SPOT:
        _settle_spot(wallet, request, market, qty=qty, price=price, fee=fee)
    else:
        _settle_futures(wallet, positions, request, market, qty=qty, price=price, fee=fee)


def _settle_spot(
    wallet: Wallet, request: OrderRequest, market: MarketInfo, *, qty: Decimal, price: Decimal, fee: Decimal
) -> None:
    quote, base = wallet.get(market.quote, ZERO), wallet.get(market.base, ZERO)
    notional = qty * price
    if request.side is Side.BUY:
        if quote < notional + fee:
            raise OrderRejected(f"paper: insufficient {market.quote}: {quote} < {notional + fee}")
        wallet[market.quote], wallet[market.base] = quote - notional - fee, base + qty
    else:
        if base < qty:
            raise OrderRejected(f"paper: insufficient {market.base}: {base} < {qty}")
        wallet[market.quote], wallet[market.base] = quote + notional - fee, base - qty


def _settle_futures(
    wallet: Wallet,
    positions: dict[tuple[int, str], PaperPosition],
    request: OrderRequest,
    market: MarketInfo,
    *,
    qty: Decimal,
    price: Decimal,
    fee: Decimal,
) -> None:
    """One-way mode: an order first reduces an opposite position; the rest (unless reduce-only) opens or
    adds to one, against margin = notional / leverage."""
    key = (request.user_id, request.symbol)
    position = positions.get(key)
    direction = 1 if request.side is Side.BUY else -1
    held = ZERO if position is None else position.qty
    closing = min(qty, abs(held)) if held * direction < 0 else ZERO
    opening = qty - closing
    if request.reduce_only and (closing == 0 or opening > 0):
        raise OrderRejected("paper: reduce-only order would not only reduce the position")
    margin = opening * price * market.contract_size / request.leverage
    released = pnl = ZERO
    if position is not None and closing > 0:
        released = position.margin * closing / abs(held)
        pnl = (price - position.entry_price) * closing * market.contract_size * -direction
    usdt = wallet.get("USDT", ZERO)
    if usdt + released + pnl < margin + fee:
        raise OrderRejected(f"paper: insufficient USDT margin: {usdt} < {margin + fee}")
    wallet["USDT"] = usdt + released + pnl - margin - fee
    if position is not None and closing > 0:
        position.qty += closing * direction
        position.margin -= released
        if position.qty == 0:
            del positions[key]
            position = None
    if opening > 0:
        if position is None:
            position = positions[key] = PaperPosition(opening * direction, price, margin, request.leverage)
        else:  # adding to a position in the same direction: average the entry
            total = abs(position.qty) + opening
            position.entry_price = (position.entry_price * abs(position.qty) + price * opening) / total
            position.qty += opening * direction
            position.margin += margin
            position.liquidation_override = None
        position.liquidation_estimate = liquidation_estimate(
            market, qty=position.qty, entry_price=position.entry_price, leverage=position.leverage
        )
