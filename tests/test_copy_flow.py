"""The copy flow end to end: one signal fanned out to followers, against the embedded PostgreSQL and the paper venue.

Real actors, no mocks. Every expectation is computed by hand in the test (see the comments next to the numbers),
from the rules in ``engine/sizing.py``'s docstring and the money model of ``engine/positions.py``; nothing reuses
the engine's own arithmetic. The paper venue has no slippage, so a fill happens exactly at the mark.

Tests of this module share one database: each uses its own whale, user and symbol ids.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from actors.follower import FollowerActor
from adapters.paper import PaperVenue
from adapters.paper_markets import default_markets
from adapters.signal_intake import row_to_signal
from engine import runtime
from engine.clock import SYSTEM_CLOCK
from engine.control import RouteSignal
from engine.follower_state import FollowerContext, FollowerState
from engine.ids import client_order_id, parse_client_order_id, position_id_for
from engine.messages import (
    BalanceRow,
    CopySignal,
    FollowSettings,
    IntentAck,
    PersistIntent,
    Priority,
    Side,
    Signal,
    SignalAction,
    TradeStatus,
    TradeType,
    UserSettings,
)
from tests.kit import (
    Recorder,
    RecorderActor,
    fetch,
    fetchval,
    insert_signal,
    running_engine,
    seed_whale,
    settle,
    signal_row,
    wait_signal_done,
)
from tests.kit.copying import PAPER_START_USDT as START_USDT
from tests.kit.copying import (
    Group,
    event_count,
    position,
    seed_groups,
    seed_simple,
    signal_and_wait,
    trade,
    trades_by_user,
    usdt,
)

D = Decimal
CID_RE = re.compile(r"c[0-9a-z]{13}u[0-9a-z]+e")


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    return tmp_path / "engine"


# ---- 1. one signal, a thousand followers with mixed settings -------------------------------------------------

WHALE_MIXED = 1001
SYMBOL_MIXED = "ETH/USDT:USDT"  # step 0.001, tick 0.01, min notional 20, taker 0.05 %
MARKET_MAX_LEVERAGE = 15  # lowered from 100 for this test, so the market's cap can bind
MARK = D(3000)
WHALE_PRICE = D(3003)  # 0.1 % away from the mark
SIGNAL_LEVERAGE = 20
WHALE_SIZE = D(50_000)


def _markets_with_low_eth_leverage() -> list[Any]:
    return [
        msgspec.structs.replace(m, max_leverage=MARKET_MAX_LEVERAGE) if m.symbol == SYMBOL_MIXED else m
        for m in default_markets()
    ]


def _ids(start: int, n: int) -> range:
    return range(start, start + n)


MIXED_GROUPS = [
    # --- copied -------------------------------------------------------------------------------------------
    # fixed 100 USDT margin, leverage min(signal 20, user 10, follow 10, market 15) = 10 (user/follow cap):
    # notional 1000 / 3000 = 0.3333.. -> 0.333 ETH, notional 999, margin 99.9, fee 999 × 0.0005 = 0.4995.
    # SL 5 % / TP 10 % of the entry 3000: 2850 / 3300.
    Group(
        "fixed",
        _ids(10_001, 150),
        follow={"sizing_mode": "fixed_usdt", "fixed_usdt": D(100), "stop_loss_pct": D(5), "take_profit_pct": D(10)},
    ),
    # 10 % of the 10,000 free = 1000 margin, leverage capped by the USER (5): notional 5000 -> 1.666 ETH,
    # notional 4998, margin 999.6, fee 2.499. SL 2 %: 2940, no TP.
    Group(
        "percent",
        _ids(10_151, 100),
        user={"max_leverage": 5},
        follow={
            "sizing_mode": "percent_of_balance",
            "percent_of_balance": D(10),
            "max_leverage": 20,
            "stop_loss_pct": D(2),
        },
    ),
    # whale margin 50,000 / 20 = 2500 × 0.02 = 50, leverage capped by the FOLLOW (3): notional 150 -> 0.05 ETH,
    # margin 50, fee 0.075.
    Group(
        "multiplier",
        _ids(10_251, 100),
        follow={"sizing_mode": "multiplier_of_whale", "whale_multiplier": D("0.02"), "max_leverage": 3},
    ),
    # fixed 100, leverage capped by the MARKET (15 < signal 20, user 50, follow 50): notional 1500 -> 0.5 ETH,
    # margin 100, fee 0.75.
    Group(
        "market_cap", _ids(10_351, 100), user={"max_leverage": 50}, follow={"fixed_usdt": D(100), "max_leverage": 50}
    ),
    # fixed 500 capped at max_usdt_per_trade 200, leverage 10: notional 2000 -> 0.666 ETH, notional 1998,
    # margin 199.8, fee 0.999.
    Group("per_trade_cap", _ids(10_451, 50), follow={"fixed_usdt": D(500), "max_usdt_per_trade": D(200)}),
    # --- skipped ------------------------------------------------------------------------------------------
    Group("user_paused", _ids(10_501, 50), user={"paused": True}),
    Group("copy_disabled", _ids(10_551, 50), user={"copy_trading_enabled": False}),
    Group("auto_copy_off", _ids(10_601, 50), follow={"auto_copy_enabled": False}),
    Group("follow_paused", _ids(10_651, 50), follow={"paused": True}),
    Group("min_notional", _ids(10_701, 50), follow={"min_notional_usdt": D(10_000)}),  # 999 < 10,000
    Group("too_old", _ids(10_751, 50), follow={"max_signal_age_s": 10}),  # the signal is 30 s old
    Group("slippage", _ids(10_801, 50), follow={"max_slippage_pct": D("0.05")}),  # gap 0.0999 % > 0.05 %
    Group("poor", _ids(10_851, 50), usdt=D(50)),  # needs 99.9 + 0.4995
    Group("max_positions", _ids(10_901, 50), follow={"max_open_positions": 0}),
    Group("max_trades", _ids(10_951, 50), follow={"max_trades_per_day": 0}),
]

# group -> (qty, leverage, margin, fee, stop loss, take profit)
EXPECTED_COPIES: dict[str, tuple[Decimal, int, Decimal, Decimal, Decimal | None, Decimal | None]] = {
    "fixed": (D("0.333"), 10, D("99.9"), D("0.4995"), D(2850), D(3300)),
    "percent": (D("1.666"), 5, D("999.6"), D("2.499"), D(2940), None),
    "multiplier": (D("0.05"), 3, D(50), D("0.075"), None, None),
    "market_cap": (D("0.5"), 15, D(100), D("0.75"), None, None),
    "per_trade_cap": (D("0.666"), 10, D("199.8"), D("0.999"), None, None),
}
EXPECTED_SKIPS = {
    "user_paused": "paused",
    "copy_disabled": "copy_disabled",
    "auto_copy_off": "auto_copy_disabled",
    "follow_paused": "paused",
    "min_notional": "below_min_notional",
    "too_old": "signal_too_old",
    "slippage": "slippage_too_high",
    "poor": "insufficient_balance",
    "max_positions": "max_open_positions",
    "max_trades": "max_trades_per_day",
}


def test_one_signal_thousand_mixed_followers_then_the_same_signal_again(pg_dsn: str, engine_dir: Path) -> None:
    """1. One signal to 1,000 followers: the exact trades, positions, balances, skips and events.
    2. The same signal again (a second INSERT, the same ``Signal`` routed twice more): no second order.

    One test, because two engines must not run on one database at once (each would claim the other's signals).
    """
    assert sum(len(g.user_ids) for g in MIXED_GROUPS) == 1000
    seed_whale(pg_dsn, WHALE_MIXED)
    seed_groups(pg_dsn, WHALE_MIXED, MIXED_GROUPS)
    venue = PaperVenue(markets=_markets_with_low_eth_leverage(), initial_marks={SYMBOL_MIXED: MARK}, slippage_bps=0)
    with running_engine(pg_dsn, engine_dir, venue=venue) as system:
        signal_id = insert_signal(
            pg_dsn,
            whale_id=WHALE_MIXED,
            symbol=SYMBOL_MIXED,
            side="buy",
            price=WHALE_PRICE,
            size_usdt=WHALE_SIZE,
            leverage=SIGNAL_LEVERAGE,
            detected_at=datetime.now(UTC) - timedelta(seconds=30),
            external_id="mixed-1000",
        )
        wait_signal_done(pg_dsn, signal_id, timeout_s=120)
        settle(system, timeout_s=120)
        _assert_mixed_outcome(pg_dsn, venue, signal_id)
        _assert_same_signal_places_no_second_order(pg_dsn, system, venue, signal_id)


def _assert_mixed_outcome(pg_dsn: str, venue: PaperVenue, signal_id: int) -> None:
    row = signal_row(pg_dsn, signal_id)
    copied_users = sum(len(g.user_ids) for g in MIXED_GROUPS if g.name in EXPECTED_COPIES)
    reasons: dict[str, int] = {}
    for g in MIXED_GROUPS:
        if g.name in EXPECTED_SKIPS:
            reasons[EXPECTED_SKIPS[g.name]] = reasons.get(EXPECTED_SKIPS[g.name], 0) + len(g.user_ids)
    assert row["status"] == "processed"
    assert (row["copied"], row["skipped"], row["failed"]) == (copied_users, 1000 - copied_users, 0)
    assert row["skip_reasons"] == reasons
    assert row["error"] is None

    trades = trades_by_user(pg_dsn, signal_id)
    assert len(trades) == copied_users
    # One query each for the 1,000 followers' positions and balances.
    user_ids = [uid for g in MIXED_GROUPS for uid in g.user_ids]
    positions = {
        r["user_id"]: dict(r)
        for r in fetch(pg_dsn, "SELECT * FROM positions WHERE user_id = ANY($1::bigint[])", user_ids)
    }
    balances = {
        r["user_id"]: (r["free"], r["reserved"])
        for r in fetch(
            pg_dsn,
            "SELECT * FROM balances WHERE user_id = ANY($1::bigint[]) AND venue = 'paper' AND asset = 'USDT'",
            user_ids,
        )
    }
    assert len(positions) == copied_users and len(balances) == 1000
    for g in MIXED_GROUPS:
        for uid in g.user_ids:
            if g.name not in EXPECTED_COPIES:
                assert uid not in trades and uid not in positions, (g.name, uid)
                assert balances[uid] == (g.usdt if g.usdt is not None else START_USDT, 0), g.name
                continue
            qty, leverage, margin, fee, sl, tp = EXPECTED_COPIES[g.name]
            t = trades[uid]
            cid = client_order_id(signal_id, uid)
            assert t["client_order_id"] == cid and CID_RE.fullmatch(cid) and len(cid) <= 32
            assert parse_client_order_id(cid) == (signal_id, uid, "e")
            assert (t["status"], t["side"], t["reduce_only"]) == ("filled", "buy", False), g.name
            assert (t["qty"], t["executed_qty"], t["executed_price"], t["leverage"]) == (qty, qty, MARK, leverage), (
                g.name
            )
            assert t["fee_usdt"] == fee and t["whale_id"] == WHALE_MIXED and t["symbol"] == SYMBOL_MIXED
            assert venue.order_count(cid) == 1

            p = positions[uid]
            assert t["position_id"] == p["position_id"] == position_id_for(signal_id, uid)
            assert (p["status"], p["side"], p["qty"], p["entry_price"], p["leverage"]) == (
                "open",
                "long",
                qty,
                MARK,
                leverage,
            ), g.name
            assert p["margin_usdt"] == margin, g.name
            assert (p["stop_loss_price"], p["take_profit_price"]) == (sl, tp), g.name
            assert p["realized_pnl_usdt"] == -fee  # the entry fee is a realised cost
            assert p["whale_id"] == WHALE_MIXED
            assert balances[uid] == (START_USDT - margin - fee, 0), g.name

    assert event_count(pg_dsn, "trade_executed", signal_id=signal_id) == copied_users
    assert event_count(pg_dsn, "position_opened", signal_id=signal_id) == copied_users
    assert event_count(pg_dsn, "follower_skipped", signal_id=signal_id) == 1000 - copied_users
    assert event_count(pg_dsn, "signal_processed", signal_id=signal_id) == 1
    skipped = fetch(
        pg_dsn,
        """SELECT user_id, payload->>'reason' AS reason FROM domain_events
           WHERE event_type = 'follower_skipped' AND signal_id = $1""",
        signal_id,
    )
    by_user = {r["user_id"]: r["reason"] for r in skipped}
    for g in MIXED_GROUPS:
        if g.name in EXPECTED_SKIPS:
            assert {by_user.get(uid) for uid in g.user_ids} == {EXPECTED_SKIPS[g.name]}, g.name
    processed = fetch(
        pg_dsn, "SELECT payload FROM domain_events WHERE event_type = 'signal_processed' AND signal_id = $1", signal_id
    )
    assert processed[0]["payload"]["skip_reasons"] == reasons


# ---- 2. the same signal again --------------------------------------------------------------------------------


def _assert_same_signal_places_no_second_order(pg_dsn: str, system: Any, venue: PaperVenue, signal_id: int) -> None:
    trades_before = fetchval(pg_dsn, "SELECT count(*) FROM trades")
    # The detector sends the same external id again: the table refuses it.
    with pytest.raises(asyncpg.UniqueViolationError):
        insert_signal(pg_dsn, whale_id=WHALE_MIXED, symbol=SYMBOL_MIXED, price=WHALE_PRICE, external_id="mixed-1000")
    # The same Signal reaches the router twice more (a second intake, an admin re-send).
    signal = row_to_signal(signal_row(pg_dsn, signal_id), now=datetime.now(UTC), max_age_s=3600)
    system.router.tell(RouteSignal(signal=signal))
    system.router.tell(RouteSignal(signal=signal))
    settle(system)
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades") == trades_before
    for uid, t in trades_by_user(pg_dsn, signal_id).items():
        cid = t["client_order_id"]
        assert venue.order_count(cid) == 1 and venue.create_calls(cid) == 1, uid
        assert t["status"] == "filled"
    assert signal_row(pg_dsn, signal_id)["status"] == "processed"
    assert event_count(pg_dsn, "signal_processed", signal_id=signal_id) == 1


# ---- 3. whale close and reduce: realised PnL and balances ----------------------------------------------------


def test_whale_close_realises_pnl_long_and_short(pg_dsn: str, engine_dir: Path) -> None:
    long_whale, long_users, long_sym = 1003, range(12_001, 12_003), "SOL/USDT:USDT"  # lot 1, taker 0.05 %
    short_whale, short_users, short_sym = 1004, range(12_011, 12_013), "AVAX/USDT:USDT"  # lot 1, taker 0.05 %
    seed_simple(pg_dsn, long_whale, long_users)  # fixed 100 USDT, user and follow max leverage 10
    seed_simple(pg_dsn, short_whale, short_users)
    venue = PaperVenue(initial_marks={long_sym: D(150), short_sym: D(30)}, slippage_bps=0)
    with running_engine(pg_dsn, engine_dir, venue=venue) as system:
        # Signal leverage 5 is the cap (user 10, follow 10, market 100).
        long_open = signal_and_wait(
            pg_dsn, system, whale_id=long_whale, symbol=long_sym, side="buy", price=150, leverage=5
        )
        short_open = signal_and_wait(
            pg_dsn, system, whale_id=short_whale, symbol=short_sym, side="sell", price=30, leverage=5
        )
        for uid in long_users:
            # 100 × 5 = 500 USDT at 150: 3 SOL (lot 1), notional 450, margin 90, fee 0.225.
            p = position(pg_dsn, position_id_for(long_open, uid))
            assert (p["side"], p["qty"], p["leverage"], p["margin_usdt"], p["entry_price"]) == ("long", 3, 5, 90, 150)
            assert trade(pg_dsn, client_order_id(long_open, uid))["leverage"] == 5
            assert usdt(pg_dsn, uid) == (START_USDT - D(90) - D("0.225"), D(0))
        for uid in short_users:
            # 100 × 5 = 500 USDT at 30: 16 AVAX, notional 480, margin 96, fee 0.24.
            p = position(pg_dsn, position_id_for(short_open, uid))
            assert (p["side"], p["qty"], p["leverage"], p["margin_usdt"], p["entry_price"]) == ("short", 16, 5, 96, 30)
            assert trade(pg_dsn, client_order_id(short_open, uid))["side"] == "sell"
            assert usdt(pg_dsn, uid) == (START_USDT - D(96) - D("0.24"), D(0))

        venue.set_mark(long_sym, D(160))  # a gain for the long
        venue.set_mark(short_sym, D(33))  # a loss for the short
        long_close = signal_and_wait(
            pg_dsn, system, whale_id=long_whale, symbol=long_sym, side="sell", action="close", price=160
        )
        short_close = signal_and_wait(
            pg_dsn, system, whale_id=short_whale, symbol=short_sym, side="buy", action="close", price=33
        )

    # Long: sell 3 at 160, gross (160 - 150) × 3 = 30, exit fee 3 × 160 × 0.0005 = 0.24;
    # realised = -0.225 (entry fee) + 30 - 0.24 = 29.535.
    # Short: buy 16 at 33, gross (30 - 33) × 16 = -48, exit fee 16 × 33 × 0.0005 = 0.264;
    # realised = -0.24 - 48 - 0.264 = -48.504.
    cases = [
        (long_users, long_open, long_close, long_sym, "sell", D(3), D(160), D("0.24"), D("29.535")),
        (short_users, short_open, short_close, short_sym, "buy", D(16), D(33), D("0.264"), D("-48.504")),
    ]
    for users, opened, closed, symbol, exit_side, qty, price, exit_fee, pnl in cases:
        for uid in users:
            p = position(pg_dsn, position_id_for(opened, uid))
            assert (p["status"], p["qty"], p["margin_usdt"], p["close_reason"]) == ("closed", 0, 0, "signal")
            assert p["realized_pnl_usdt"] == pnl
            assert p["closed_at"] is not None
            t = trade(pg_dsn, client_order_id(closed, uid))
            assert (t["status"], t["side"], t["reduce_only"], t["executed_qty"], t["executed_price"]) == (
                "filled",
                exit_side,
                True,
                qty,
                price,
            )
            assert t["fee_usdt"] == exit_fee and t["position_id"] == p["position_id"]
            assert usdt(pg_dsn, uid) == (START_USDT + pnl, D(0))
            assert venue.position_qty(uid, symbol) == 0
            assert venue.order_count(t["client_order_id"]) == 1
            assert event_count(pg_dsn, "position_closed", signal_id=closed, user_id=uid) == 1


def test_whale_reduce_half_closes_half(pg_dsn: str, engine_dir: Path) -> None:
    whale, users, symbol = 1005, range(12_101, 12_103), "LTC/USDT:USDT"  # lot 0.001, taker 0.05 %
    seed_simple(pg_dsn, whale, users)
    venue = PaperVenue(initial_marks={symbol: D(80)}, slippage_bps=0)
    with running_engine(pg_dsn, engine_dir, venue=venue) as system:
        # 100 × 10 = 1000 USDT at 80: 12.5 LTC, margin 100, fee 0.5.
        opened = signal_and_wait(pg_dsn, system, whale_id=whale, symbol=symbol, side="buy", price=80, leverage=10)
        venue.set_mark(symbol, D(90))
        reduced = signal_and_wait(
            pg_dsn, system, whale_id=whale, symbol=symbol, side="sell", action="reduce", fraction="0.5", price=90
        )
        assert system.supervisor is not None
        for uid in users:
            desc = system.follower_refs()[uid].proxy().describe().get(timeout=30)
            assert [D(p["qty"]) for p in desc["open_positions"]] == [D("6.25")]
    # Sell 6.25 at 90: gross 10 × 6.25 = 62.5, fee 6.25 × 90 × 0.0005 = 0.28125, half the margin (50) released.
    for uid in users:
        p = position(pg_dsn, position_id_for(opened, uid))
        assert (p["status"], p["qty"], p["margin_usdt"], p["entry_price"]) == ("open", D("6.25"), 50, 80)
        assert p["realized_pnl_usdt"] == D("-0.5") + D("62.5") - D("0.28125")
        t = trade(pg_dsn, client_order_id(reduced, uid))
        assert (t["status"], t["side"], t["reduce_only"], t["qty"], t["executed_price"]) == (
            "filled",
            "sell",
            True,
            D("6.25"),
            90,
        )
        # 10,000 - 100.5 at the entry, + 50 margin + 62.5 - 0.28125 back at the reduce.
        assert usdt(pg_dsn, uid) == (D("10011.71875"), D(0))
        assert venue.position_qty(uid, symbol) == D("6.25")
        assert event_count(pg_dsn, "position_reduced", signal_id=reduced, user_id=uid) == 1
        assert event_count(pg_dsn, "position_closed", user_id=uid) == 0


# ---- the follower's messages, without a database -------------------------------------------------------------


def test_intent_is_durable_before_the_order_and_the_submitted_row_is_the_full_trade_row() -> None:
    log = Recorder()  # one for all three: the order across them shows
    persistence = RecorderActor.start(log, "persistence")
    exchange = RecorderActor.start(log, "exchange")
    router = RecorderActor.start(log, "router")
    markets = {m.symbol: m for m in default_markets()}
    ctx = FollowerContext(
        persistence=persistence,
        router=router,
        exchanges={"paper": exchange},
        markets={"paper": markets},
        clock=SYSTEM_CLOCK,
        publish=lambda _event, **_: None,
        venue_available=lambda _venue: True,
        needs_reconcile=lambda _uid: None,
        on_failure=lambda *_args: None,
    )
    balance = BalanceRow(user_id=7, venue="paper", asset="USDT", free=D(1000), reserved=D(0))
    state = FollowerState(
        user=UserSettings(user_id=7), follows=(FollowSettings(user_id=7, whale_id=3),), balances=(balance,)
    )
    follower = FollowerActor.start(state, ctx)
    now = datetime.now(UTC)
    signal = Signal(
        signal_id=11, external_id="x11", whale_id=3, symbol="ETH/USDT:USDT", side=Side.BUY, action=SignalAction.OPEN,
        trade_type=TradeType.FUTURES, price=D(3000), size_usdt=D(50_000), leverage=5, priority=Priority.MEDIUM,
        detected_at=now, expires_at=now + timedelta(minutes=5),
    )  # fmt: skip
    try:
        follower.tell(CopySignal(signal=signal, received_at_ns=1, mark_price=D(3000)))
        name, intent = log.wait(1)[0]
        assert name == "persistence" and isinstance(intent, PersistIntent)
        assert intent.row.status is TradeStatus.PENDING and intent.row.version == 1 and intent.row.reserved_usdt > 0
        follower.tell(IntentAck(client_order_id=intent.row.client_order_id, durable=True))
        messages = log.wait(4)
        kinds = {name: type(message).__name__ for name, message in messages[1:]}
        assert kinds == {"exchange": "PlaceOrder", "persistence": "PersistRows", "router": "FollowerDecision"}
        (submitted,) = next(m for n, m in messages[1:] if n == "persistence").rows
        # The SUBMITTED row is the intent row with only status and version moved, and equal to the trade's own row.
        assert submitted == msgspec.structs.replace(intent.row, status=TradeStatus.SUBMITTED, version=2)
        desc = follower.proxy().describe().get(timeout=10)
        assert desc["orders_in_flight"] == [
            {"client_order_id": intent.row.client_order_id, "status": "submitted", "kind": "open"}
        ]
    finally:
        runtime.stop_actors([follower], timeout_s=10)
        for ref in (persistence, exchange, router):
            ref.stop()
