"""What a follower is built from and given: its persisted state (``FollowerState``) and the refs and read-only
views every follower shares (``FollowerContext``), built once by the node."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from engine.clock import Clock
from engine.messages import BalanceRow, FollowSettings, MarketInfo, PositionRow, TradeRow, UserSettings

__all__ = ["FollowerContext", "FollowerState", "LiquidationCheck"]


class FollowerState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a follower is rebuilt from: its rows in PostgreSQL."""

    user: UserSettings
    follows: tuple[FollowSettings, ...] = ()
    balances: tuple[BalanceRow, ...] = ()
    positions: tuple[PositionRow, ...] = ()
    open_trades: tuple[TradeRow, ...] = ()
    trade_created_at: dict[str, datetime] = {}
    close_attempts: dict[str, int] = {}  # position id -> engine closes that failed definitively
    realized_total_usdt: Decimal = Decimal(0)
    trades_today: int = 0  # so a restart keeps the daily limits (max trades, realised loss) where they were
    realized_today_usdt: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class LiquidationCheck:
    """How a venue that reports its positions is asked about liquidation (``VenueConfig.liquidation_check_*``)."""

    band: Decimal  # ask when the mark is within this fraction of the liquidation price (0.01 = 1 %)
    interval_s: float  # at most one question per position per interval


@dataclass(frozen=True, slots=True)
class FollowerContext:
    """Refs and read-only views shared by all followers (built once by the node); nothing in it is mutable
    shared state."""

    persistence: Any
    router: Any
    exchanges: Mapping[str, Any]
    markets: Mapping[str, Mapping[str, MarketInfo]]
    clock: Clock  # the engine's one clock: stamps, ages, liquidation-check pacing
    publish: Callable[..., None]  # (event, *, persisted=False): see engine.events.EventBus.publish
    venue_available: Callable[[str], bool]
    needs_reconcile: Callable[[int], None]
    on_failure: Callable[[int, str, str], None]
    unknown_grace_s: float = 60.0
    # Venues whose futures positions are reconciled against the venue's own (real venues): there the venue, not
    # our estimate, says whether a position was liquidated. Paper venues are absent: the estimate is the rule.
    liquidation_checks: Mapping[str, LiquidationCheck] = field(default_factory=dict)
