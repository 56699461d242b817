"""One ``Venue`` per configured exchange: its adapter, its exchange actor, its markets and its health.

Markets are loaded once per venue at start and shared (read-only) by every follower on it. ``entries_open``
mirrors the exchange actor's breaker for entries; the stats timer refreshes it, and followers read it to skip
with ``venue_unavailable`` instead of queueing orders the exchange actor would refuse anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from actors.exchange import ExchangeActor
from engine.config import VenueConfig
from engine.logs import get_logger
from engine.messages import MarketInfo, PositionRow, TradeType

if TYPE_CHECKING:
    from actors.system import EngineSystem
    from adapters.ioloop import IoLoop

log = get_logger(__name__)


class Venue:
    """A configured venue. ``adapter`` implements ``engine.venue.VenueAdapter``."""

    def __init__(self, config: VenueConfig, adapter: Any, exchange: Any, markets: dict[str, MarketInfo]) -> None:
        self.config = config
        self.name = config.name
        self.kind = config.kind
        self.adapter = adapter
        self.exchange = exchange
        self.markets = markets
        self.entries_open = True
        self.marks: dict[str, Decimal] = {}  # replaced wholesale by the price feed (readers see one version)

    def mark(self, symbol: str) -> Decimal | None:
        if self.kind == "paper":
            mark: Decimal | None = self.adapter.marks().get(symbol)
            return mark
        return self.marks.get(symbol)

    def paper_fund(self, user_id: int, usdt: Decimal, positions: Iterable[PositionRow]) -> None:
        """The paper venue lives in memory: give it the balances and spot holdings our books say exist."""
        self.adapter.deposit(user_id, "USDT", usdt)
        for row in positions:
            if row.trade_type is TradeType.SPOT and row.venue == self.name:
                base = row.symbol.split("/")[0]
                self.adapter.deposit(user_id, base, row.qty)

    def refresh_health(self) -> dict[str, Any]:
        status: dict[str, Any] = self.exchange.proxy().status().get(timeout=10)
        state = str(status.get("breaker", "closed"))
        self.entries_open = state != "open" and not status.get("banned_until")
        return status

    def stop(self, io: IoLoop) -> None:
        try:
            self.exchange.stop(timeout=10)
        except Exception as exc:  # noqa: BLE001 - shutting down regardless
            log.warning("venue.stop_failed", venue=self.name, error=repr(exc))
        try:
            io.run(self.adapter.close(), 10)
        except Exception as exc:  # noqa: BLE001
            log.warning("venue.close_failed", venue=self.name, error=repr(exc))


def _make_adapter(system: EngineSystem, cfg: VenueConfig) -> Any:
    if cfg.kind == "paper":
        from adapters.paper import PaperVenue

        return PaperVenue(slippage_bps=Decimal(str(cfg.paper_slippage_bps)), latency_ms=cfg.paper_latency_ms)
    from adapters.ccxt_venue import CcxtVenue
    from adapters.credentials import CredentialStore

    trade_type = TradeType.FUTURES if "futures" in cfg.trade_types else TradeType.SPOT
    return CcxtVenue(
        cfg.kind,
        trade_type=trade_type,
        api_base_url=cfg.api_base_url,
        credentials=CredentialStore(),
        margin_mode=cfg.margin_mode,
    )


def build_venues(system: EngineSystem, adapters: dict[str, Any]) -> dict[str, Venue]:
    """Adapters (given ones first, e.g. from tests), markets and exchange actors for every configured venue."""
    venues: dict[str, Venue] = {}
    for cfg in system.config.venues:
        adapter = adapters.get(cfg.name) or _make_adapter(system, cfg)
        markets = system.io.run(adapter.load_markets(), 120)
        exchange = ExchangeActor.start(
            system.io,
            adapter,
            weight_per_minute=cfg.weight_per_minute,
            orders_per_second_per_account=cfg.orders_per_second_per_account,
            max_in_flight=cfg.max_in_flight,
            retry_max_attempts=cfg.retry_max_attempts,
            retry_base_ms=cfg.retry_base_ms,
            retry_max_ms=cfg.retry_max_ms,
            breaker_error_rate=cfg.breaker_error_rate,
            breaker_min_requests=cfg.breaker_min_requests,
            breaker_window_s=cfg.breaker_window_s,
            breaker_cooldown_s=cfg.breaker_cooldown_s,
            unknown_grace_s=cfg.unknown_grace_s,
        )
        venues[cfg.name] = Venue(cfg, adapter, exchange, markets)
        log.info("venue.ready", venue=cfg.name, kind=cfg.kind, markets=len(markets))
    return venues
