"""Sizing and limits: what one follower does with one signal.

``decide(...)`` is a pure function returning ``Skip``, ``EntryPlan`` or ``ExitPlan``. The follower actor
turns a plan into a PENDING trade (``client_order_id`` and ``position_id`` are already in the plan),
reserves ``EntryPlan.reserve_usdt`` and sends the order.

Sizing (entries). The mode gives the MARGIN, the capital committed in USDT:

* ``fixed_usdt``           the follow's fixed amount;
* ``percent_of_balance``   free balance × pct / 100;
* ``multiplier_of_whale``  (whale size_usdt / whale leverage) × multiplier.

The margin is capped at ``max_usdt_per_trade``. Futures leverage = min(signal, user, follow, market), at
least 1; spot leverage is 1 and spot can only buy to open. Notional = margin × leverage, qty = notional /
(price × contract size) rounded DOWN to the lot; min qty and min notional (the larger of the market's and
the follow's) are checked AFTER rounding, and the plan reports the margin/notional of the rounded qty. The
price is the mark; no mark → ``NO_PRICE``. Fee estimate = notional × taker fee; the balance must cover
margin + fee. Margin and fee are rounded up to 1e-8 so that a reservation is never short.

Order of checks, first failure wins (so the reported reason is stable):

1. draining; user copy disabled; user paused; not following (no follow, or another whale's); auto-copy off;
   follow paused. These apply to EVERY signal, exits included: the user (or the operator) said "do not act".
   Positions stay protected by SL/TP, which are not signals. Then, for entries only: signal expired
   (``expires_at <= now``).
2. unknown symbol (no market); trade type mismatch or spot sell-to-open → ``TRADE_TYPE_UNSUPPORTED``.
3. exits (REDUCE/CLOSE) branch off here, see below.
4. entries: position on the symbol from another whale → ``SYMBOL_HELD``; same whale, other side →
   ``OPPOSITE_POSITION``; an order already in flight on it → ``POSITION_BUSY``; a same-side copy from the same
   whale makes the OPEN/INCREASE an increase of that position (an INCREASE with nothing held opens one).
5. entries: too old (now - detected_at > max_signal_age_s); no mark; slippage (|mark - whale price| / whale
   price × 100 > max_slippage_pct); breaker open; daily realised loss (realised PnL today ≤ -limit); max open
   positions (NEW positions only); max trades per day; then sizing, minimums, balance.

Exits (REDUCE/CLOSE) skip the entry limits: expiry, age, slippage, breaker, daily loss, max positions, trades per day
and balance. Blocking an exit traps a follower in risk, so they only need a position to exit:

* ``NO_POSITION`` when the follower holds nothing from that whale on the symbol; ``POSITION_BUSY`` when an
  order on it is in flight (the follower actor then holds the exit until that order is final and decides it
  again against what filled: ``actors/follower.py``);
* qty = held × fraction (1 for CLOSE; a REDUCE without a fraction is treated as a close, said in ``detail``),
  rounded down to the lot. If the remainder would fall below min qty or the market's min notional, the whole
  position is closed instead (``ExitPlan.closes_position``); a reduce that rounds below min qty is skipped;
* the order side is the one that reduces the HELD position (``signal.side`` is not trusted for exits);
* price hint = the mark if known, else the whale's price: a missing mark never blocks an exit. Min notional is
  not enforced on exits (venues accept small reduce-only orders; the remainder rule avoids dust).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from engine.ids import client_order_id, position_id_for
from engine.messages import (
    FollowSettings,
    MarketInfo,
    PositionSide,
    Side,
    Signal,
    SignalAction,
    SizingMode,
    SkipReason,
    TradeType,
    UserSettings,
)
from engine.positions import protection_prices
from engine.precision import check_minimums, money_up, notional, round_qty_down
from engine.signals import EXIT_ACTIONS

__all__ = ["AccountView", "Decision", "EntryPlan", "ExitPlan", "HeldPosition", "Skip", "decide"]

_HUNDRED = Decimal(100)


class HeldPosition(msgspec.Struct, frozen=True, kw_only=True):
    """The follower's active position on the signal's symbol (a follower holds at most one per symbol)."""

    position_id: str
    whale_id: int | None
    side: PositionSide
    qty: Decimal
    leverage: int = 1
    busy: bool = False  # an order on this position is in flight (or it is CLOSING)


class AccountView(msgspec.Struct, frozen=True, kw_only=True):
    """What ``decide`` needs to know about the follower's account, on the signal's venue."""

    free_usdt: Decimal
    open_positions: int = 0
    trades_today: int = 0
    realized_pnl_today_usdt: Decimal = Decimal(0)
    held: HeldPosition | None = None
    busy: bool = False  # an order on this venue and symbol is in flight (a position may not exist yet)
    draining: bool = False
    venue_available: bool = True  # False when the venue's breaker is open (blocks entries only)


class Skip(msgspec.Struct, frozen=True, kw_only=True):
    """Do nothing for this follower; ``reason`` is counted and stored, ``detail`` is for humans."""

    reason: SkipReason
    detail: str


class EntryPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Open a new position or increase ``position_id``. All amounts are for the ROUNDED qty."""

    client_order_id: str
    position_id: str
    is_increase: bool
    symbol: str
    trade_type: TradeType
    side: Side
    position_side: PositionSide
    qty: Decimal
    price: Decimal  # price hint (the mark)
    notional_usdt: Decimal
    margin_usdt: Decimal
    leverage: int
    est_fee_usdt: Decimal
    stop_loss_price: Decimal | None = None
    take_profit_price: Decimal | None = None
    reduce_only: bool = False

    @property
    def reserve_usdt(self) -> Decimal:
        """What to reserve from the free balance before the order goes: margin + estimated fee."""
        return self.margin_usdt + self.est_fee_usdt


class ExitPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Reduce or close ``position_id`` with a reduce-only order."""

    client_order_id: str
    position_id: str
    symbol: str
    trade_type: TradeType
    side: Side  # the order side: opposite of the held position
    qty: Decimal
    price: Decimal  # price hint: the mark, else the whale's price
    notional_usdt: Decimal
    est_fee_usdt: Decimal
    closes_position: bool
    leverage: int = 1
    reduce_only: bool = True
    note: str = ""  # why the qty differs from held × fraction (e.g. "closing all"), empty otherwise


Decision = Skip | EntryPlan | ExitPlan


def decide(
    signal: Signal,
    *,
    user: UserSettings,
    follow: FollowSettings | None,
    market: MarketInfo | None,
    mark: Decimal | None,
    now: datetime,
    account: AccountView,
) -> Decision:
    """What follower ``user`` does with ``signal``. Pure; see the module docstring for every rule."""
    skip = _gates(signal, user, follow, account)
    if skip is not None:
        return skip
    is_exit = signal.action in EXIT_ACTIONS
    if not is_exit and signal.expires_at is not None and signal.expires_at <= now:
        return Skip(reason=SkipReason.SIGNAL_EXPIRED, detail=f"expired at {signal.expires_at.isoformat()}")
    assert follow is not None  # _gates returned NOT_FOLLOWING otherwise
    if market is None:
        return Skip(reason=SkipReason.UNKNOWN_SYMBOL, detail=f"no market {signal.symbol}")
    if market.trade_type is not signal.trade_type:
        return Skip(
            reason=SkipReason.TRADE_TYPE_UNSUPPORTED,
            detail=f"{signal.symbol} is {market.trade_type}, signal is {signal.trade_type}",
        )
    if is_exit:
        return _decide_exit(signal, user, market, mark, account)
    if signal.trade_type is TradeType.SPOT and signal.side is Side.SELL:
        return Skip(reason=SkipReason.TRADE_TYPE_UNSUPPORTED, detail="spot cannot sell to open")
    return _decide_entry(signal, user=user, follow=follow, market=market, mark=mark, now=now, account=account)


def _gates(signal: Signal, user: UserSettings, follow: FollowSettings | None, account: AccountView) -> Skip | None:
    """The checks that apply to every signal, entries and exits alike."""
    if account.draining:
        return Skip(reason=SkipReason.DRAINING, detail="engine is draining")
    if not user.copy_trading_enabled:
        return Skip(reason=SkipReason.COPY_DISABLED, detail="user disabled copy trading")
    if user.paused:
        return Skip(reason=SkipReason.PAUSED, detail="user paused")
    if follow is None or follow.whale_id != signal.whale_id or follow.user_id != user.user_id:
        return Skip(reason=SkipReason.NOT_FOLLOWING, detail=f"not following whale {signal.whale_id}")
    if not follow.auto_copy_enabled:
        return Skip(reason=SkipReason.AUTO_COPY_DISABLED, detail=f"auto-copy off for whale {signal.whale_id}")
    if follow.paused:
        return Skip(reason=SkipReason.PAUSED, detail=f"follow of whale {signal.whale_id} paused")
    return None


def _held_conflict(signal: Signal, account: AccountView) -> Skip | None:
    held = account.held
    if held is None:
        if account.busy:  # an entry on its way: a second one would book a second position on the symbol
            return Skip(reason=SkipReason.POSITION_BUSY, detail=f"order in flight on {signal.symbol}, no fill yet")
        return None
    if held.whale_id != signal.whale_id:
        return Skip(
            reason=SkipReason.SYMBOL_HELD,
            detail=f"{signal.symbol} held from whale {held.whale_id} ({held.position_id})",
        )
    if held.side is not _position_side(signal.side):
        return Skip(
            reason=SkipReason.OPPOSITE_POSITION,
            detail=f"holding {held.side} {held.position_id}, signal is {signal.side}",
        )
    if held.busy:
        return Skip(reason=SkipReason.POSITION_BUSY, detail=f"order in flight on {held.position_id}")
    return None


def _entry_limits(
    signal: Signal, follow: FollowSettings, mark: Decimal | None, now: datetime, account: AccountView
) -> Skip | None:
    age_s = (now - signal.detected_at).total_seconds()
    if age_s > follow.max_signal_age_s:
        return Skip(reason=SkipReason.SIGNAL_TOO_OLD, detail=f"age {age_s:.3f}s > {follow.max_signal_age_s}s")
    if mark is None:
        return Skip(reason=SkipReason.NO_PRICE, detail=f"no mark for {signal.symbol}")
    slippage_pct = abs(mark - signal.price) / signal.price * _HUNDRED
    if slippage_pct > follow.max_slippage_pct:
        return Skip(
            reason=SkipReason.SLIPPAGE_TOO_HIGH,
            detail=f"mark {mark} vs whale {signal.price}: {slippage_pct:.4f}% > {follow.max_slippage_pct}%",
        )
    if not account.venue_available:
        return Skip(reason=SkipReason.VENUE_UNAVAILABLE, detail="venue breaker open")
    limit = follow.daily_loss_limit_usdt
    if limit is not None and account.realized_pnl_today_usdt <= -limit:
        return Skip(
            reason=SkipReason.DAILY_LOSS_LIMIT,
            detail=f"realised today {account.realized_pnl_today_usdt} <= -{limit}",
        )
    if account.held is None and account.open_positions >= follow.max_open_positions:
        return Skip(
            reason=SkipReason.MAX_OPEN_POSITIONS,
            detail=f"{account.open_positions} open >= {follow.max_open_positions}",
        )
    if account.trades_today >= follow.max_trades_per_day:
        return Skip(
            reason=SkipReason.MAX_TRADES_PER_DAY,
            detail=f"{account.trades_today} trades today >= {follow.max_trades_per_day}",
        )
    return None


def _margin(signal: Signal, follow: FollowSettings, account: AccountView) -> Decimal:
    """Margin (USDT) by sizing mode, capped at ``max_usdt_per_trade``."""
    if follow.sizing_mode is SizingMode.FIXED_USDT:
        margin = follow.fixed_usdt
    elif follow.sizing_mode is SizingMode.PERCENT_OF_BALANCE:
        margin = account.free_usdt * follow.percent_of_balance / _HUNDRED
    else:
        margin = signal.size_usdt / max(1, signal.leverage) * follow.whale_multiplier
    return max(Decimal(0), min(margin, follow.max_usdt_per_trade))


def _leverage(signal: Signal, user: UserSettings, follow: FollowSettings, market: MarketInfo) -> int:
    if signal.trade_type is TradeType.SPOT:
        return 1
    return max(1, min(signal.leverage, user.max_leverage, follow.max_leverage, market.max_leverage))


def _decide_entry(
    signal: Signal,
    *,
    user: UserSettings,
    follow: FollowSettings,
    market: MarketInfo,
    mark: Decimal | None,
    now: datetime,
    account: AccountView,
) -> Decision:
    skip = _held_conflict(signal, account) or _entry_limits(signal, follow, mark, now, account)
    if skip is not None:
        return skip
    assert mark is not None  # _entry_limits returned NO_PRICE otherwise
    leverage = _leverage(signal, user, follow, market)
    margin = _margin(signal, follow, account)
    raw_qty = margin * leverage / (mark * market.contract_size)
    qty = round_qty_down(raw_qty, market.qty_step)
    below = check_minimums(qty, mark, market, min_notional=follow.min_notional_usdt)
    if below is not None:
        return Skip(reason=below[0], detail=f"{below[1]} (margin {margin}, leverage {leverage})")
    value = notional(qty, mark, market)
    plan_margin = money_up(value / leverage)
    fee = money_up(value * market.taker_fee_rate)
    if account.free_usdt < plan_margin + fee:
        return Skip(
            reason=SkipReason.INSUFFICIENT_BALANCE,
            detail=f"free {account.free_usdt} < margin {plan_margin} + fee {fee}",
        )
    position_side = _position_side(signal.side)
    sl, tp = protection_prices(
        position_side,
        mark,
        stop_loss_pct=follow.stop_loss_pct,
        take_profit_pct=follow.take_profit_pct,
        tick=market.price_tick,
    )
    held = account.held
    return EntryPlan(
        client_order_id=client_order_id(signal.signal_id, user.user_id),
        position_id=held.position_id if held else position_id_for(signal.signal_id, user.user_id),
        is_increase=held is not None,
        symbol=signal.symbol,
        trade_type=signal.trade_type,
        side=signal.side,
        position_side=position_side,
        qty=qty,
        price=mark,
        notional_usdt=value,
        margin_usdt=plan_margin,
        leverage=leverage,
        est_fee_usdt=fee,
        stop_loss_price=sl,
        take_profit_price=tp,
    )


def _decide_exit(
    signal: Signal, user: UserSettings, market: MarketInfo, mark: Decimal | None, account: AccountView
) -> Decision:
    held = account.held
    if held is None and account.busy:
        # The entry has not filled yet: "no position" would be wrong, and the copy stays open after the fill.
        return Skip(reason=SkipReason.POSITION_BUSY, detail=f"order in flight on {signal.symbol}, no fill yet")
    if held is None or held.whale_id != signal.whale_id or held.qty <= 0:
        detail = f"no copy of whale {signal.whale_id} on {signal.symbol}"
        return Skip(reason=SkipReason.NO_POSITION, detail=detail)
    if held.busy:
        return Skip(reason=SkipReason.POSITION_BUSY, detail=f"order in flight on {held.position_id}")
    price = mark if mark is not None else signal.price
    fraction = Decimal(1) if signal.action is SignalAction.CLOSE else signal.fraction
    note = ""
    if fraction is None:
        fraction, note = Decimal(1), "reduce without fraction: closing all; "
    # Orders are whole lots: a close sells all whole lots held (a spot holding can carry a sub-lot remainder
    # after a fee taken in the base asset; the ledger books that dust as closed with the fill).
    sellable = round_qty_down(held.qty, market.qty_step)
    qty = sellable if fraction >= 1 else round_qty_down(held.qty * fraction, market.qty_step)
    remainder = held.qty - qty
    if remainder >= market.qty_step and (
        remainder < market.min_qty or notional(remainder, price, market) < market.min_notional
    ):
        qty, note = sellable, note + f"remainder {remainder} below venue minimum: closing all; "
    if qty <= 0 or (qty < held.qty and qty < market.min_qty):
        return Skip(
            reason=SkipReason.BELOW_MIN_QTY,
            detail=f"reduce {fraction} of {held.qty} rounds to {qty} < min qty {market.min_qty}",
        )
    value = notional(qty, price, market)
    return ExitPlan(
        client_order_id=client_order_id(signal.signal_id, user.user_id),
        position_id=held.position_id,
        symbol=signal.symbol,
        trade_type=signal.trade_type,
        side=Side.SELL if held.side is PositionSide.LONG else Side.BUY,
        qty=qty,
        price=price,
        notional_usdt=value,
        est_fee_usdt=money_up(value * market.taker_fee_rate),
        closes_position=held.qty - qty < market.qty_step,
        leverage=held.leverage,
        note=note.rstrip("; "),
    )


def _position_side(side: Side) -> PositionSide:
    return PositionSide.LONG if side is Side.BUY else PositionSide.SHORT
