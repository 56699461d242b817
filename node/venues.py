"""One ``Venue`` per configured exchange: its adapter, its exchange actor, its markets and its health.

Markets are loaded once per venue at start and shared (read-only) by every follower on it. ``entries_open``
mirrors the exchange actor's breaker and ban for entries, as the actor tells them (``VenueHealth``, subscribed at
start: nobody polls), and the operator's pause; followers read it to skip with ``venue_unavailable`` instead of
queueing orders the exchange actor would refuse anyway.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from actors.exchange import ExchangeActor
from adapters.ioloop import IoLoop
from adapters.venue_factory import make_adapter
from engine.clock import Clock
from engine.config import VenueConfig
from engine.control import SubscribeHealth, VenueHealth
from engine.logs import get_logger
from engine.messages import MarketInfo, PositionRow, PositionSide, TradeType

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
        self.entries_paused = False  # operator pause (admin ``pause exchange NAME``): no new entries
        self.health: VenueHealth | None = None  # the exchange actor's last word on its breaker and ban
        self.marks: dict[str, Decimal] = {}  # replaced wholesale by the price feed (readers see one version)

    def mark(self, symbol: str) -> Decimal | None:
        if self.adapter.settable_marks:  # the adapter's own book: what ``set_mark`` set is the mark at once
            mark: Decimal | None = self.adapter.marks().get(symbol)
            return mark
        return self.marks.get(symbol)

    def paper_fund(self, user_id: int, usdt: Decimal, positions: Iterable[PositionRow]) -> None:
        """The paper venue lives in memory: give it the balances and spot holdings our books say exist."""
        self.adapter.deposit(user_id, "USDT", usdt)
        for row in positions:
            if row.venue != self.name:
                continue
            if row.trade_type is TradeType.SPOT:
                self.adapter.deposit(user_id, row.symbol.split("/")[0], row.qty)
            else:
                signed = row.qty if row.side is PositionSide.LONG else -row.qty
                self.adapter.restore_position(
                    user_id,
                    row.symbol,
                    qty=signed,
                    entry_price=row.entry_price,
                    margin=row.margin_usdt,
                    leverage=row.leverage,
                )

    def on_health(self, health: VenueHealth) -> None:
        """The exchange actor's breaker or ban changed (runs on its thread: only takes note)."""
        self.health = health
        self._update_entries_open()

    def pause_entries(self, paused: bool) -> None:
        """The operator's pause (admin ``pause exchange NAME``): no new entries until resumed."""
        self.entries_paused = paused
        self._update_entries_open()

    def _update_entries_open(self) -> None:
        health = self.health
        self.entries_open = (health is None or health.entries_open) and not self.entries_paused

    def status(self) -> dict[str, Any]:
        """The exchange actor's status (a blocking ask: for the stats line and the admin socket, not a hot path)."""
        status: dict[str, Any] = self.exchange.proxy().status().get(timeout=10)
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


def order_weight_per_minute(cfg: VenueConfig, adapter: Any) -> int:
    """What is left of the venue's weight budget for orders once the price feed (which calls the adapter
    directly, not through the exchange actor) has taken its share: one ``fetch_marks`` per poll interval."""
    if adapter.settable_marks:  # marks in memory: the feed makes no venue request
        return cfg.weight_per_minute
    feed = math.ceil(int(adapter.request_weight("fetch_marks")) * 60_000 / cfg.price_poll_interval_ms)
    if feed > cfg.weight_per_minute // 2:
        log.warning(
            "venue.price_feed_weight_high",
            venue=cfg.name,
            feed_weight_per_minute=feed,
            weight_per_minute=cfg.weight_per_minute,
            hint="raise price_poll_interval_ms",
        )
    return max(1, cfg.weight_per_minute - feed)


def build_venues(
    configs: Iterable[VenueConfig], adapters: Mapping[str, Any], *, io: IoLoop, clock: Clock
) -> dict[str, Venue]:
    """Adapters (given ones first, e.g. from tests), markets and exchange actors for every configured venue."""
    venues: dict[str, Venue] = {}
    for cfg in configs:
        adapter = adapters.get(cfg.name) or make_adapter(cfg, clock=clock)
        markets = io.run(adapter.load_markets(), 120)
        exchange = ExchangeActor.start(
            io, adapter, cfg, weight_per_minute=order_weight_per_minute(cfg, adapter), clock=clock
        )
        venue = Venue(cfg, adapter, exchange, markets)
        exchange.tell(SubscribeHealth(venue.on_health))
        if not adapter.settable_marks:
            _seed_marks(io, venue)
        venues[cfg.name] = venue
        log.info("venue.ready", venue=cfg.name, kind=cfg.kind, markets=len(markets), api_base_url=cfg.api_base_url)
    return venues


def _seed_marks(io: IoLoop, venue: Venue) -> None:
    """Marks for every symbol before the first signal (the price feed keeps them fresh from then on)."""
    try:
        venue.marks = io.run(venue.adapter.fetch_marks([]), 60)
    except Exception as exc:  # noqa: BLE001 - the price feed retries; until then entries skip with no_price
        log.warning("venue.marks_unavailable", venue=venue.name, error=f"{type(exc).__name__}: {exc}")
