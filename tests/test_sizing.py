"""Sizing and limits: every mode, every skip reason, exits, and properties of the plans."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
from engine.sizing import AccountView, EntryPlan, ExitPlan, HeldPosition, Skip, decide

NOW = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)
USER = UserSettings(user_id=7, max_leverage=20)
FOLLOW = FollowSettings(user_id=7, whale_id=3, fixed_usdt=D(100), max_leverage=10)
FUT = MarketInfo(
    symbol="BTC/USDT:USDT",
    trade_type=TradeType.FUTURES,
    base="BTC",
    quote="USDT",
    qty_step=D("0.001"),
    price_tick=D("0.1"),
    min_qty=D("0.001"),
    min_notional=D(5),
    max_leverage=125,
    taker_fee_rate=D("0.0005"),
)
SPOT = MarketInfo(
    symbol="BTC/USDT",
    trade_type=TradeType.SPOT,
    base="BTC",
    quote="USDT",
    qty_step=D("0.00001"),
    price_tick=D("0.01"),
    min_qty=D("0.00001"),
    min_notional=D(5),
    taker_fee_rate=D("0.001"),
)
ACCOUNT = AccountView(free_usdt=D(10_000))


def signal(**kw: Any) -> Signal:
    base: dict[str, Any] = dict(
        signal_id=42,
        external_id="x42",
        whale_id=3,
        symbol="BTC/USDT:USDT",
        side=Side.BUY,
        action=SignalAction.OPEN,
        trade_type=TradeType.FUTURES,
        price=D(50_000),
        size_usdt=D(200_000),
        leverage=20,
        detected_at=NOW - timedelta(seconds=2),
    )
    base.update(kw)
    return Signal(**base)


def held(**kw: Any) -> HeldPosition:
    base: dict[str, Any] = dict(position_id="p1", whale_id=3, side=PositionSide.LONG, qty=D("0.02"), leverage=10)
    base.update(kw)
    return HeldPosition(**base)


def run(
    sig: Signal | None = None,
    *,
    user: UserSettings = USER,
    follow: FollowSettings | None = FOLLOW,
    market: MarketInfo | None = FUT,
    mark: D | None = D(50_000),
    account: AccountView = ACCOUNT,
    now: datetime = NOW,
) -> Skip | EntryPlan | ExitPlan:
    return decide(sig or signal(), user=user, follow=follow, market=market, mark=mark, now=now, account=account)


def follow(**kw: Any) -> FollowSettings:
    return msgspec.structs.replace(FOLLOW, **kw)


def account(**kw: Any) -> AccountView:
    return msgspec.structs.replace(ACCOUNT, **kw)


# -- sizing modes -------------------------------------------------------------------------------------------


def test_fixed_usdt_worked_example() -> None:
    plan = run()
    assert isinstance(plan, EntryPlan)
    # leverage = min(signal 20, user 20, follow 10, market 125) = 10; notional 1000; qty 1000/50000 = 0.02
    assert plan.leverage == 10
    assert plan.qty == D("0.020")
    assert plan.notional_usdt == D(1000)
    assert plan.margin_usdt == D(100)
    assert plan.est_fee_usdt == D("0.5")
    assert plan.reserve_usdt == D("100.5")
    assert plan.side is Side.BUY and plan.position_side is PositionSide.LONG and not plan.reduce_only
    assert plan.client_order_id == client_order_id(42, 7)
    assert plan.position_id == position_id_for(42, 7) and not plan.is_increase


def test_percent_of_balance() -> None:
    plan = run(follow=follow(sizing_mode=SizingMode.PERCENT_OF_BALANCE, percent_of_balance=D(2)))
    assert isinstance(plan, EntryPlan)
    assert plan.margin_usdt == D(200)  # 2 % of 10,000
    assert plan.qty == D("0.040")


def test_multiplier_of_whale() -> None:
    # whale margin = 200,000 / 20 = 10,000; × 0.05 = 500
    plan = run(follow=follow(sizing_mode=SizingMode.MULTIPLIER_OF_WHALE, whale_multiplier=D("0.05")))
    assert isinstance(plan, EntryPlan)
    assert plan.margin_usdt == D(500)
    assert plan.qty == D("0.1")


def test_cap_at_max_usdt_per_trade() -> None:
    plan = run(follow=follow(fixed_usdt=D(5000), max_usdt_per_trade=D(300)))
    assert isinstance(plan, EntryPlan) and plan.margin_usdt == D(300)


def test_leverage_is_min_of_all_and_at_least_one() -> None:
    plan = run(signal(leverage=3))
    assert isinstance(plan, EntryPlan) and plan.leverage == 3
    plan = run(market=msgspec.structs.replace(FUT, max_leverage=0))
    assert isinstance(plan, EntryPlan) and plan.leverage == 1


def test_spot_buy_has_leverage_one() -> None:
    plan = run(signal(symbol="BTC/USDT", trade_type=TradeType.SPOT), market=SPOT)
    assert isinstance(plan, EntryPlan)
    assert plan.leverage == 1 and plan.qty == D("0.002") and plan.margin_usdt == D(100)


def test_short_sl_tp_mirrored_and_long_sl_tp() -> None:
    f = follow(stop_loss_pct=D(2), take_profit_pct=D(5))
    long_plan = run(follow=f, mark=D("50000.03"))
    assert isinstance(long_plan, EntryPlan)
    assert long_plan.stop_loss_price == D("49000.0") and long_plan.take_profit_price == D("52500.0")
    short_plan = run(signal(side=Side.SELL), follow=f)
    assert isinstance(short_plan, EntryPlan) and short_plan.position_side is PositionSide.SHORT
    assert short_plan.stop_loss_price == D(51000) and short_plan.take_profit_price == D(47500)


def test_increase_of_same_whale_same_side() -> None:
    plan = run(signal(action=SignalAction.INCREASE), account=account(held=held(), open_positions=10))
    assert isinstance(plan, EntryPlan)
    assert plan.is_increase and plan.position_id == "p1"  # max open positions does not apply to increases
    plan = run(signal(action=SignalAction.OPEN), account=account(held=held()))
    assert isinstance(plan, EntryPlan) and plan.is_increase


def test_increase_without_position_opens_one() -> None:
    plan = run(signal(action=SignalAction.INCREASE))
    assert isinstance(plan, EntryPlan) and not plan.is_increase


# -- one test per skip reason -------------------------------------------------------------------------------

CASES: dict[SkipReason, Callable[[], Skip | EntryPlan | ExitPlan]] = {
    SkipReason.COPY_DISABLED: lambda: run(user=UserSettings(user_id=7, copy_trading_enabled=False)),
    SkipReason.AUTO_COPY_DISABLED: lambda: run(follow=follow(auto_copy_enabled=False)),
    SkipReason.PAUSED: lambda: run(follow=follow(paused=True)),
    SkipReason.NOT_FOLLOWING: lambda: run(follow=None),
    SkipReason.SIGNAL_TOO_OLD: lambda: run(signal(detected_at=NOW - timedelta(seconds=61))),
    SkipReason.SLIPPAGE_TOO_HIGH: lambda: run(mark=D(50_600)),
    SkipReason.NO_PRICE: lambda: run(mark=None),
    SkipReason.UNKNOWN_SYMBOL: lambda: run(market=None),
    SkipReason.TRADE_TYPE_UNSUPPORTED: lambda: run(
        signal(symbol="BTC/USDT", trade_type=TradeType.SPOT, side=Side.SELL), market=SPOT
    ),
    SkipReason.BELOW_MIN_NOTIONAL: lambda: run(follow=follow(fixed_usdt=D(6), min_notional_usdt=D(100))),
    SkipReason.BELOW_MIN_QTY: lambda: run(follow=follow(fixed_usdt=D(1), max_leverage=1)),
    SkipReason.INSUFFICIENT_BALANCE: lambda: run(account=account(free_usdt=D(100))),
    SkipReason.MAX_OPEN_POSITIONS: lambda: run(account=account(open_positions=10)),
    SkipReason.MAX_TRADES_PER_DAY: lambda: run(account=account(trades_today=50)),
    SkipReason.DAILY_LOSS_LIMIT: lambda: run(
        follow=follow(daily_loss_limit_usdt=D(50)), account=account(realized_pnl_today_usdt=D(-50))
    ),
    SkipReason.NO_POSITION: lambda: run(signal(action=SignalAction.CLOSE, side=Side.SELL)),
    SkipReason.POSITION_BUSY: lambda: run(account=account(held=held(busy=True))),
    SkipReason.VENUE_UNAVAILABLE: lambda: run(account=account(venue_available=False)),
    SkipReason.DRAINING: lambda: run(account=account(draining=True)),
    SkipReason.SYMBOL_HELD: lambda: run(account=account(held=held(whale_id=99))),
    SkipReason.OPPOSITE_POSITION: lambda: run(account=account(held=held(side=PositionSide.SHORT))),
    SkipReason.SIGNAL_EXPIRED: lambda: run(signal(expires_at=NOW)),
}


def test_every_reason_has_a_case() -> None:
    assert set(CASES) == set(SkipReason)


@pytest.mark.parametrize("reason", list(CASES))
def test_skip_reason(reason: SkipReason) -> None:
    result = CASES[reason]()
    assert isinstance(result, Skip), result
    assert result.reason is reason
    assert result.detail


def test_other_skip_variants() -> None:
    assert run(user=UserSettings(user_id=7, paused=True)).reason is SkipReason.PAUSED  # type: ignore[union-attr]
    assert run(follow=follow(whale_id=4)).reason is SkipReason.NOT_FOLLOWING  # type: ignore[union-attr]
    mismatch = run(market=SPOT)
    assert isinstance(mismatch, Skip) and mismatch.reason is SkipReason.TRADE_TYPE_UNSUPPORTED
    # The follow's min notional counts even when the market's is lower.
    below = run(follow=follow(min_notional_usdt=D(2000)))
    assert isinstance(below, Skip) and below.reason is SkipReason.BELOW_MIN_NOTIONAL
    # Daily loss not yet reached.
    ok = run(follow=follow(daily_loss_limit_usdt=D(50)), account=account(realized_pnl_today_usdt=D("-49.99")))
    assert isinstance(ok, EntryPlan)
    # Slippage exactly at the limit passes.
    assert isinstance(run(mark=D(50_500)), EntryPlan)


# -- exits ----------------------------------------------------------------------------------------------


def exit_signal(action: SignalAction = SignalAction.REDUCE, fraction: D | None = D("0.5")) -> Signal:
    return signal(action=action, side=Side.SELL, fraction=fraction)


def test_close_whole_position() -> None:
    plan = run(exit_signal(SignalAction.CLOSE, None), account=account(held=held()))
    assert isinstance(plan, ExitPlan)
    assert plan.qty == D("0.02") and plan.closes_position and plan.reduce_only
    assert plan.side is Side.SELL and plan.position_id == "p1" and plan.leverage == 10


def test_reduce_by_fraction_rounds_down() -> None:
    plan = run(exit_signal(fraction=D("0.3333")), account=account(held=held(qty=D("0.1"))))
    assert isinstance(plan, ExitPlan)
    assert plan.qty == D("0.033") and not plan.closes_position and not plan.note


def test_reduce_short_buys() -> None:
    plan = run(exit_signal(), account=account(held=held(side=PositionSide.SHORT)))
    assert isinstance(plan, ExitPlan) and plan.side is Side.BUY and plan.qty == D("0.010")


def test_reduce_leaving_dust_closes_all() -> None:
    # 0.9 of 0.002 -> 0.001 leaves 0.001 × 50,000 = 50 ≥ 5: fine. With min notional 100 it is dust.
    m = msgspec.structs.replace(FUT, min_notional=D(100))
    plan = run(exit_signal(fraction=D("0.9")), market=m, account=account(held=held(qty=D("0.002"))))
    assert isinstance(plan, ExitPlan) and plan.closes_position and plan.qty == D("0.002")
    assert "closing all" in plan.note


def test_reduce_rounding_to_zero_is_skipped() -> None:
    res = run(exit_signal(fraction=D("0.01")), account=account(held=held(qty=D("0.05"))))
    assert isinstance(res, Skip) and res.reason is SkipReason.BELOW_MIN_QTY


def test_reduce_without_fraction_closes_all() -> None:
    plan = run(exit_signal(fraction=None), account=account(held=held()))
    assert isinstance(plan, ExitPlan) and plan.closes_position and "without fraction" in plan.note


def test_exits_skip_entry_limits_and_use_whale_price_without_mark() -> None:
    busy_account = account(
        held=held(),
        free_usdt=D(0),
        open_positions=99,
        trades_today=999,
        venue_available=False,
        realized_pnl_today_usdt=D(-(10**6)),
    )
    plan = run(
        exit_signal(SignalAction.CLOSE, None),
        follow=follow(daily_loss_limit_usdt=D(1)),
        mark=None,
        account=busy_account,
        now=NOW + timedelta(hours=1),  # too old for an entry, still fine for an exit
    )
    assert isinstance(plan, ExitPlan) and plan.price == D(50_000)


@pytest.mark.parametrize("action", [SignalAction.CLOSE, SignalAction.REDUCE])
def test_an_expired_exit_still_exits_an_expired_entry_does_not(action: SignalAction) -> None:
    """``expires_at`` limits entries only: an exit past it (and past every age limit, and far from the whale's
    price) is planned all the same; an entry past it is ``signal_expired``."""
    late = {"expires_at": NOW - timedelta(minutes=1), "detected_at": NOW - timedelta(hours=1)}
    sig = exit_signal(action, D("0.5") if action is SignalAction.REDUCE else None)
    plan = run(msgspec.structs.replace(sig, **late), mark=D(75_000), account=account(held=held()))
    assert isinstance(plan, ExitPlan), plan
    res = run(signal(**late))
    assert isinstance(res, Skip) and res.reason is SkipReason.SIGNAL_EXPIRED


def test_exit_of_other_whales_position_is_no_position() -> None:
    res = run(exit_signal(), account=account(held=held(whale_id=8)))
    assert isinstance(res, Skip) and res.reason is SkipReason.NO_POSITION


def test_exit_busy() -> None:
    res = run(exit_signal(), account=account(held=held(busy=True)))
    assert isinstance(res, Skip) and res.reason is SkipReason.POSITION_BUSY


def test_entry_or_exit_while_an_entry_has_not_filled_yet_is_busy() -> None:
    """An order on the symbol in flight and no position yet (the entry has not filled): a second entry would
    book a second position, and a whale exit skipped as "no position" would leave the copy open after the fill."""
    in_flight = account(busy=True)
    for sig in (signal(), exit_signal(SignalAction.CLOSE, None)):
        res = run(sig, account=in_flight)
        assert isinstance(res, Skip) and res.reason is SkipReason.POSITION_BUSY, res
        assert "no fill yet" in res.detail


def test_spot_close() -> None:
    plan = run(
        signal(symbol="BTC/USDT", trade_type=TradeType.SPOT, side=Side.SELL, action=SignalAction.CLOSE),
        market=SPOT,
        account=account(held=held(qty=D("0.5"), leverage=1)),
    )
    assert isinstance(plan, ExitPlan) and plan.side is Side.SELL and plan.qty == D("0.5")


# -- properties -----------------------------------------------------------------------------------------

money = st.decimals(min_value=D("0.01"), max_value=D(100_000), places=2)
prices = st.decimals(min_value=D("0.01"), max_value=D(200_000), places=2)
steps = st.sampled_from([D("0.001"), D(1), D("0.5"), D(10), D("0.00001")])


@given(
    mode=st.sampled_from(list(SizingMode)),
    amount=money,
    free=money,
    price=prices,
    step=steps,
    lev=st.integers(min_value=1, max_value=125),
    cap=money,
)
def test_entry_plan_invariants(mode: SizingMode, amount: D, free: D, price: D, step: D, lev: int, cap: D) -> None:
    f = follow(
        sizing_mode=mode,
        fixed_usdt=amount,
        percent_of_balance=D(50),
        whale_multiplier=D("0.1"),
        max_usdt_per_trade=cap,
        max_leverage=125,
        max_slippage_pct=D(100),
    )
    m = msgspec.structs.replace(FUT, qty_step=step, min_qty=step, max_leverage=125)
    result = run(
        signal(price=price, leverage=lev),
        user=UserSettings(user_id=7, max_leverage=125),
        follow=f,
        market=m,
        mark=price,
        account=account(free_usdt=free),
    )
    if isinstance(result, Skip):
        assert result.reason in {
            SkipReason.BELOW_MIN_QTY,
            SkipReason.BELOW_MIN_NOTIONAL,
            SkipReason.INSUFFICIENT_BALANCE,
        }
        return
    assert isinstance(result, EntryPlan)
    assert result.qty > 0 and result.qty % step == 0
    assert result.leverage == lev
    assert result.margin_usdt <= cap + D("0.00000001")  # rounding the margin up is at most one quantum
    assert result.notional_usdt == result.qty * price
    assert result.notional_usdt >= max(m.min_notional, f.min_notional_usdt)
    assert result.reserve_usdt <= free


@given(
    qty_units=st.integers(min_value=1, max_value=10**6),
    fraction=st.decimals(min_value=D("0.0001"), max_value=1, places=4),
    action=st.sampled_from([SignalAction.REDUCE, SignalAction.CLOSE]),
)
def test_exit_plan_invariants(qty_units: int, fraction: D, action: SignalAction) -> None:
    qty = qty_units * FUT.qty_step
    res = run(exit_signal(action, fraction), mark=None, account=account(held=held(qty=qty)))
    if isinstance(res, Skip):
        assert res.reason is SkipReason.BELOW_MIN_QTY
        return
    assert isinstance(res, ExitPlan)
    assert 0 < res.qty <= qty and res.qty % FUT.qty_step == 0
    assert res.closes_position == (res.qty == qty)
    if action is SignalAction.CLOSE:
        assert res.closes_position
    elif not res.closes_position:
        assert res.qty <= qty * fraction
