"""Binance's JSON shapes for the emulator: exchangeInfo symbols and orders (spot and USDⓈ-M)."""

from __future__ import annotations

from typing import Any

from adapters.emulator.state import MarketSpec, Order

_STATUS = {"new": "NEW", "filled": "FILLED", "partial_expired": "EXPIRED", "cancelled": "CANCELED"}


def order_json(order: Order, *, full: bool = False) -> dict[str, Any]:
    quote_qty = str(order.filled * order.avg_price)
    base: dict[str, Any] = {
        "symbol": order.symbol_id,
        "orderId": int(order.order_id),
        "clientOrderId": order.client_order_id,
        "price": "0",
        "origQty": str(order.qty),
        "executedQty": str(order.filled),
        "status": _STATUS[order.status],
        "timeInForce": "GTC",
        "type": "MARKET",
        "side": order.side.upper(),
        "updateTime": order.updated_ms,
    }
    if order.category == "linear":
        base |= {
            "avgPrice": str(order.avg_price),
            "cumQty": str(order.filled),
            "cumQuote": quote_qty,
            "reduceOnly": order.reduce_only,
            "closePosition": False,
            "positionSide": "BOTH",
            "origType": "MARKET",
            "stopPrice": "0",
            "workingType": "CONTRACT_PRICE",
        }
        return base
    base |= {
        "orderListId": -1,
        "cummulativeQuoteQty": quote_qty,
        "time": order.created_ms,
        "transactTime": order.created_ms,
        "workingTime": order.created_ms,
        "isWorking": True,
        "selfTradePreventionMode": "NONE",
    }
    if full:
        base["fills"] = (
            []
            if order.filled == 0
            else [
                {
                    "price": str(order.avg_price),
                    "qty": str(order.filled),
                    "commission": str(order.fee),
                    "commissionAsset": order.fee_asset,
                    "tradeId": int(order.order_id),
                }
            ]
        )
    return base


def symbol_entry(market: MarketSpec, *, linear: bool) -> dict[str, Any]:
    """One ``exchangeInfo`` symbol with Binance's filters (spot or USDⓈ-M)."""
    filters: list[dict[str, Any]] = [
        {
            "filterType": "PRICE_FILTER",
            "minPrice": str(market.price_tick),
            "maxPrice": "1000000",
            "tickSize": str(market.price_tick),
        },
        {
            "filterType": "LOT_SIZE",
            "minQty": str(market.min_qty),
            "maxQty": "9000",
            "stepSize": str(market.qty_step),
        },
        {
            "filterType": "MARKET_LOT_SIZE",
            "minQty": str(market.min_qty),
            "maxQty": "1000",
            "stepSize": str(market.qty_step),
        },
    ]
    entry: dict[str, Any] = {
        "symbol": market.venue_id,
        "baseAsset": market.base,
        "quoteAsset": market.quote,
        "orderTypes": ["LIMIT", "MARKET"],
        "filters": filters,
    }
    if linear:
        filters.append({"filterType": "MIN_NOTIONAL", "notional": str(market.min_notional)})
        entry |= {
            "pair": market.venue_id,
            "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000,
            "onboardDate": 1569398400000,
            "status": "TRADING",
            "marginAsset": market.quote,
            "pricePrecision": 2,
            "quantityPrecision": 3,
            "baseAssetPrecision": 8,
            "quotePrecision": 8,
            "underlyingType": "COIN",
            "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000",
        }
    else:
        filters.append(
            {
                "filterType": "NOTIONAL",
                "minNotional": str(market.min_notional),
                "applyMinToMarket": True,
                "maxNotional": "9000000",
                "avgPriceMins": 5,
            }
        )
        entry |= {
            "status": "TRADING",
            "baseAssetPrecision": 8,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "permissions": ["SPOT"],
        }
    return entry
