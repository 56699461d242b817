"""The adapter for a configured venue: the paper exchange, or a ccxt venue (``[[venues]]`` ``kind``).

The one place that turns a venue's ``kind`` into an adapter class; everything past it asks the adapter's
capabilities (``engine.venue.VenueAdapter``), never the kind.
"""

from __future__ import annotations

from decimal import Decimal

from adapters.ccxt_venue import CcxtVenue
from adapters.credentials import CredentialStore
from adapters.paper import PaperVenue
from engine.clock import Clock
from engine.config import VenueConfig
from engine.messages import TradeType

__all__ = ["make_adapter", "venue_trade_type"]


def make_adapter(cfg: VenueConfig, *, clock: Clock) -> PaperVenue | CcxtVenue:
    """A new adapter for ``cfg``. Accounts (``users.credential_ref``) are registered later, by
    ``node.venue_accounts.prepare_accounts``. ``clock``: the engine's (the paper venue's latency and rate
    windows, the end of a ccxt venue's ban)."""
    if cfg.kind == "paper":
        return PaperVenue(
            slippage_bps=Decimal(str(cfg.paper_slippage_bps)), latency_ms=cfg.paper_latency_ms, clock=clock
        )
    return CcxtVenue(
        cfg.kind,
        trade_type=venue_trade_type(cfg),
        api_base_url=cfg.api_base_url,
        credentials=CredentialStore(),
        clock=clock,
        margin_mode=cfg.margin_mode,
    )


def venue_trade_type(cfg: VenueConfig) -> TradeType:
    """A ccxt venue trades one type: futures if the config lists it, else spot (configure two venues for both)."""
    return TradeType.FUTURES if "futures" in cfg.trade_types else TradeType.SPOT
