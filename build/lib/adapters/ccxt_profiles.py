"""What differs between the ccxt venues: constructor options, parameter names, weights, URL layout.

Pure data and tiny helpers; no I/O. ``CcxtVenue`` picks one ``VenueProfile`` by venue name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from engine.messages import TradeType

__all__ = ["PROFILES", "VenueProfile", "rewrite_api_urls"]


@dataclass(frozen=True, slots=True)
class VenueProfile:
    """One venue's ccxt specifics. ``weights`` are the venue's rate-limit weight per adapter operation."""

    name: str
    client_order_id_param: str  # createOrder param carrying our client order id
    fetch_by_client_id_param: str  # fetchOrder/cancelOrder param that selects by client order id
    client_order_id_max_len: int
    client_order_id_charset: re.Pattern[str]
    weights: dict[TradeType, dict[str, int]]
    options: Callable[[TradeType], dict[str, Any]]
    needs_passphrase: bool = False
    # Substrings of a create-order error that mean "this client order id already exists".
    duplicate_markers: tuple[str, ...] = ()
    default_max_leverage: int = 20  # when the venue's market data carries none
    # Bybit's fetchOrder wants an order id (and "acknowledged"): by client id, list open then closed orders.
    fetch_by_listing: bool = False
    # Bitget sizes spot market buys in the quote coin: ccxt converts amount x price, so the hint goes along.
    spot_buy_sized_in_quote: bool = False
    # Bitget takes the margin mode on every futures order (ccxt defaults it to cross otherwise).
    margin_mode_in_order: bool = False
    extra_order_params: Callable[[TradeType], dict[str, Any]] = field(default=lambda _t: {})

    def balance_params(self, trade_type: TradeType) -> dict[str, Any]:
        return {"type": "spot" if trade_type is TradeType.SPOT else "swap"}


def rewrite_api_urls(urls: Any, base_url: str) -> Any:
    """Every entry of ccxt's ``urls['api']`` with scheme and host replaced by ``base_url``; the path the venue
    needs (``/api/v3``, ``/fapi/v1``...) is kept. Nested dicts are rewritten recursively."""
    base = base_url.rstrip("/")
    if isinstance(urls, dict):
        return {key: rewrite_api_urls(value, base) for key, value in urls.items()}
    if isinstance(urls, str):
        return base + urlsplit(urls.replace("{hostname}", "host.invalid")).path
    return urls


def _binance_options(trade_type: TradeType) -> dict[str, Any]:
    spot = trade_type is TradeType.SPOT
    return {
        "defaultType": "spot" if spot else "swap",
        "defaultSubType": None if spot else "linear",
        "fetchMarkets": {"types": ["spot"] if spot else ["linear"]},
        "fetchMargins": False,  # sapi margin-pair listings: extra calls we never use
        "fetchCurrencies": False,  # sapi capital/config: a private call per load
        "adjustForTimeDifference": False,
        "warnOnFetchOpenOrdersWithoutSymbol": False,
        # fetchPositions first loads every leverage bracket (GET /fapi/v1/leverageBracket) to derive cross-margin
        # figures we never read; an empty cache skips that call.
        "leverageBrackets": {},
    }


def _bybit_options(trade_type: TradeType) -> dict[str, Any]:
    spot = trade_type is TradeType.SPOT
    return {
        "defaultType": "spot" if spot else "swap",
        "defaultSubType": "linear",
        "fetchMarkets": {"types": ["spot"] if spot else ["linear"]},
        "fetchCurrencies": False,
        "loadAllOptions": False,
        "loadExpiredOptions": False,
        "adjustForTimeDifference": False,
        "enableUnifiedAccount": True,
        "enableUnifiedMargin": False,
        "enableDemoTrading": False,
        # spot market buys: `amount` is the base quantity (ccxt converts with the price we pass), not cost
        "createMarketBuyOrderRequiresPrice": False,
    }


def _bitget_options(trade_type: TradeType) -> dict[str, Any]:
    spot = trade_type is TradeType.SPOT
    return {
        "defaultType": "spot" if spot else "swap",
        "defaultSubType": "linear",
        "fetchMarkets": {"types": ["spot"] if spot else ["swap"]},
        "fetchCurrencies": False,
        "adjustForTimeDifference": False,
        "uta": False,  # classic v2 API; otherwise ccxt probes /api/v3/account/settings per client
    }


_CID_BINANCE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_CID_BYBIT = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
_CID_BITGET = re.compile(r"^[A-Za-z0-9_#:-]{1,40}$")

_ONE = {
    "create_order": 1,
    "fetch_order": 1,
    "cancel_order": 1,
    "fetch_balance": 1,
    "fetch_marks": 1,
    "fetch_positions": 1,
    "set_leverage": 1,
    "load_markets": 1,
}

PROFILES: dict[str, VenueProfile] = {
    "binance": VenueProfile(
        name="binance",
        client_order_id_param="newClientOrderId",
        fetch_by_client_id_param="origClientOrderId",
        client_order_id_max_len=36,
        client_order_id_charset=_CID_BINANCE,
        # Binance's documented IP weights per request (spot limit 6000/min, USDⓈ-M 2400/min).
        weights={
            TradeType.SPOT: {
                "create_order": 1,
                "fetch_order": 4,
                "cancel_order": 1,
                "fetch_balance": 20,
                "fetch_marks": 40,
                "fetch_positions": 0,  # spot holds no positions: no request
                "set_leverage": 0,
                "load_markets": 20,
            },
            TradeType.FUTURES: {
                "create_order": 1,
                "fetch_order": 1,
                "cancel_order": 1,
                "fetch_balance": 5,
                "fetch_marks": 40,
                "fetch_positions": 5,  # GET /fapi/v3/positionRisk
                "set_leverage": 2,
                "load_markets": 1,
            },
        },
        options=_binance_options,
        duplicate_markers=("Duplicate order sent", "-4116", "ClientOrderId is duplicated"),
    ),
    # Bybit v5 and Bitget v2 limit requests per second per endpoint and UID, not by weight: one each.
    "bybit": VenueProfile(
        name="bybit",
        client_order_id_param="orderLinkId",
        fetch_by_client_id_param="orderLinkId",
        client_order_id_max_len=36,
        client_order_id_charset=_CID_BYBIT,
        # create = create + read-back (open, then closed list); fetch by client id = open + closed list.
        # fetch_positions: GET /v5/position/list (spot: no request).
        weights={
            TradeType.SPOT: dict(_ONE, create_order=3, fetch_order=2, fetch_positions=0, set_leverage=2),
            TradeType.FUTURES: dict(_ONE, create_order=3, fetch_order=2, set_leverage=2),
        },
        options=_bybit_options,
        fetch_by_listing=True,
        duplicate_markers=("110072", "OrderLinkedID is duplicate", "170141"),
    ),
    "bitget": VenueProfile(
        name="bitget",
        client_order_id_param="clientOid",
        fetch_by_client_id_param="clientOid",
        client_order_id_max_len=40,
        client_order_id_charset=_CID_BITGET,
        # create = place + read-back; spot markets load symbols + margin currencies, swaps six product types.
        # fetch_positions: GET /api/v2/mix/position/all-position (spot: no request).
        weights={
            TradeType.SPOT: dict(_ONE, create_order=2, load_markets=2, fetch_positions=0),
            TradeType.FUTURES: dict(_ONE, create_order=2, load_markets=6, set_leverage=2),
        },
        options=_bitget_options,
        needs_passphrase=True,
        duplicate_markers=("40786", "Duplicate clientOid"),
        spot_buy_sized_in_quote=True,
        margin_mode_in_order=True,
    ),
}
