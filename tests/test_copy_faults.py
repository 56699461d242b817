"""Venue faults during the copy flow, injected into the paper venue per client order id (``PaperVenue.inject``).

The outcome policy of ``docs/architecture.md``: a definitive reject releases the reservation; 429 and 5xx are
retried with the SAME client order id; a timeout after the venue accepted the order leaves the trade UNKNOWN
until it is reconciled by its client order id, and is never re-sent; a partial fill books what filled.

Each test reserves its signal id first, so it knows its client order ids before the signal exists and can aim
each fault at exactly one order. Real actors, the embedded PostgreSQL, no mocks.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from adapters.paper import PaperVenue
from engine.ids import client_order_id, position_id_for
from tests.kit import fetch, fetchval, insert_signal, running_engine, settle, signal_row, wait_for, wait_signal_done
from tests.kit.copying import PAPER_START_USDT as START_USDT
from tests.kit.copying import (
    event_count,
    insert_signal_with_id,
    next_signal_id,
    position,
    seed_simple,
    trade,
    usdt,
    wait_trades_final,
)

D = Decimal


def trade_outcomes(dsn: str, signal_id: int) -> dict[str, int]:
    """The trades table's outcomes for one signal: count by status."""
    rows = fetch(dsn, "SELECT status, count(*) AS n FROM trades WHERE signal_id = $1 GROUP BY status", signal_id)
    return {r["status"]: r["n"] for r in rows}


def _prepare(pg_dsn: str, whale_id: int, users: range) -> tuple[int, dict[int, str]]:
    """Followers (fixed 100 USDT, leverage 10) and a reserved signal id with each follower's client order id."""
    seed_simple(pg_dsn, whale_id, users)
    signal_id = next_signal_id(pg_dsn)
    return signal_id, {uid: client_order_id(signal_id, uid) for uid in users}


def test_reject_releases_the_reservation(pg_dsn: str, tmp_path: Path) -> None:
    whale, users, symbol = 2001, range(20_001, 20_004), "BTC/USDT:USDT"
    signal_id, cids = _prepare(pg_dsn, whale, users)
    venue = PaperVenue(initial_marks={symbol: D(60_000)})
    rejected = users[:2]
    for uid in rejected:
        venue.inject("reject", client_order_id=cids[uid])
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        insert_signal_with_id(pg_dsn, signal_id, whale_id=whale, symbol=symbol, price=60_000, leverage=10)
        row = wait_signal_done(pg_dsn, signal_id)
        # Counted from what the venue did, not when the orders were sent (that read copied=3, failed=0).
        assert (row["status"], row["copied"], row["skipped"], row["failed"]) == ("processed", 1, 0, 2)
        assert row["skip_reasons"] == {"rejected": 2}
        settle(system)
        wait_trades_final(pg_dsn, [cids[u] for u in rejected], ("rejected",))
        assert trade_outcomes(pg_dsn, signal_id) == {"filled": 1, "rejected": 2}
        settle(system)
        assert system.supervisor is not None
        for uid in rejected:
            t = trade(pg_dsn, cids[uid])
            assert t["status"] == "rejected" and "rejected" in t["error"]
            assert t["executed_qty"] == 0
            assert venue.order_count(cids[uid]) == 0 and venue.create_calls(cids[uid]) == 1
            assert position(pg_dsn, position_id_for(signal_id, uid)) == {}
            assert usdt(pg_dsn, uid) == (START_USDT, D(0))
            assert event_count(pg_dsn, "trade_failed", signal_id=signal_id, user_id=uid) == 1
            desc = system.follower_refs()[uid].proxy().describe().get(timeout=30)
            assert desc["open_positions"] == [] and desc["orders_in_flight"] == []
        # The follower the fault was not aimed at copied normally: 0.016 BTC (1000 USDT at 60,000, lot 0.001).
        other = users[2]
        assert trade(pg_dsn, cids[other])["status"] == "filled"
        assert position(pg_dsn, position_id_for(signal_id, other))["qty"] == D("0.016")
        assert usdt(pg_dsn, other) == (START_USDT - D(96) - D("0.48"), D(0))


def test_rate_limit_is_retried_with_the_same_client_order_id(pg_dsn: str, tmp_path: Path) -> None:
    whale, users, symbol = 2002, range(20_101, 20_103), "BNB/USDT:USDT"  # lot 0.01, taker 0.05 %
    signal_id, cids = _prepare(pg_dsn, whale, users)
    venue = PaperVenue(initial_marks={symbol: D(580)})
    for cid in cids.values():
        venue.inject("rate_limit", client_order_id=cid, retry_after_s=0.2)
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        insert_signal_with_id(pg_dsn, signal_id, whale_id=whale, symbol=symbol, price=580, leverage=10)
        wait_signal_done(pg_dsn, signal_id)
        wait_trades_final(pg_dsn, cids.values())
        settle(system)
    for uid, cid in cids.items():
        assert venue.create_calls(cid) == 2  # the 429, then the retry
        assert venue.order_count(cid) == 1
        orders = venue.orders_for(cid)
        assert orders[0].client_order_id == cid
        # 1000 USDT at 580: 1.72 BNB, notional 997.6, margin 99.76, fee 0.4988.
        t = trade(pg_dsn, cid)
        assert (t["status"], t["executed_qty"], t["exchange_order_id"]) == (
            "filled",
            D("1.72"),
            orders[0].exchange_order_id,
        )
        assert position(pg_dsn, position_id_for(signal_id, uid))["qty"] == D("1.72")
        assert usdt(pg_dsn, uid) == (START_USDT - D("99.76") - D("0.4988"), D(0))


def test_server_errors_are_retried(pg_dsn: str, tmp_path: Path) -> None:
    whale, users, symbol = 2003, range(20_201, 20_203), "ADA/USDT:USDT"  # lot 1, taker 0.05 %
    signal_id, cids = _prepare(pg_dsn, whale, users)
    venue = PaperVenue(initial_marks={symbol: D("0.45")})
    for cid in cids.values():
        venue.inject("server_error", client_order_id=cid, count=2)
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        insert_signal_with_id(pg_dsn, signal_id, whale_id=whale, symbol=symbol, price="0.45", leverage=10)
        wait_signal_done(pg_dsn, signal_id)
        wait_trades_final(pg_dsn, cids.values())
        settle(system)
    for uid, cid in cids.items():
        assert venue.create_calls(cid) == 3 and venue.order_count(cid) == 1
        # 1000 USDT at 0.45: 2222 ADA (lot 1), notional 999.9, margin 99.99, fee 0.49995.
        assert trade(pg_dsn, cid)["executed_qty"] == 2222
        assert position(pg_dsn, position_id_for(signal_id, uid))["qty"] == 2222
        assert usdt(pg_dsn, uid) == (START_USDT - D("99.99") - D("0.49995"), D(0))


def test_timeout_after_accept_is_unknown_then_reconciled_never_resent(pg_dsn: str, tmp_path: Path) -> None:
    whale, users, symbol = 2004, range(20_301, 20_303), "DOGE/USDT:USDT"  # lot 1, taker 0.05 %
    signal_id, cids = _prepare(pg_dsn, whale, users)
    venue = PaperVenue(initial_marks={symbol: D("0.15")})
    for cid in cids.values():
        venue.inject("timeout_after_accept", client_order_id=cid)
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        insert_signal_with_id(pg_dsn, signal_id, whale_id=whale, symbol=symbol, price="0.15", leverage=10)
        # The venue filled the orders but the engine never heard: each trade went UNKNOWN (a stored fact), and
        # the signal waits for their outcomes.
        for uid, cid in cids.items():

            def needs_reconciliation(uid: int = uid) -> bool:
                return event_count(pg_dsn, "trade_needs_reconciliation", user_id=uid) == 1

            wait_for(needs_reconciliation)
            assert venue.order_count(cid) == 1
            assert trade(pg_dsn, cid)["status"] in ("unknown", "filled")  # filled if the reconcile timer ran
        system.reconcile(all_followers=True)
        wait_trades_final(pg_dsn, cids.values())
        row = wait_signal_done(pg_dsn, signal_id)  # counted once the outcomes are known: both filled
        assert (row["status"], row["copied"], row["failed"], row["skip_reasons"]) == ("processed", 2, 0, {})
        settle(system)
    for uid, cid in cids.items():
        assert venue.create_calls(cid) == 1 and venue.order_count(cid) == 1  # never re-sent
        # 1000 USDT at 0.15: 6666 DOGE, notional 999.9, margin 99.99, fee 0.49995.
        t = trade(pg_dsn, cid)
        assert (t["status"], t["executed_qty"], t["reserved_usdt"]) == ("filled", 6666, D("99.99") + D("0.49995"))
        p = position(pg_dsn, position_id_for(signal_id, uid))
        assert (p["status"], p["qty"], p["margin_usdt"]) == ("open", 6666, D("99.99"))
        assert usdt(pg_dsn, uid) == (START_USDT - D("99.99") - D("0.49995"), D(0))
        assert event_count(pg_dsn, "position_opened", signal_id=signal_id, user_id=uid) == 1


def test_partial_fill_books_the_filled_quantity(pg_dsn: str, tmp_path: Path) -> None:
    whale, users, symbol = 2005, range(20_401, 20_403), "LINK/USDT:USDT"  # lot 0.01, taker 0.05 %
    signal_id, cids = _prepare(pg_dsn, whale, users)
    venue = PaperVenue(initial_marks={symbol: D(14)})
    for cid in cids.values():
        venue.inject("partial_fill", client_order_id=cid, fill_fraction=D("0.5"))
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        insert_signal_with_id(pg_dsn, signal_id, whale_id=whale, symbol=symbol, price=14, leverage=10)
        row = wait_signal_done(pg_dsn, signal_id)
        assert (row["copied"], row["failed"]) == (len(users), 0)  # a partial fill copied (what filled)
        wait_trades_final(pg_dsn, cids.values(), ("partially_filled",))
        assert trade_outcomes(pg_dsn, signal_id) == {"partially_filled": len(users)}
        settle(system)
    for uid, cid in cids.items():
        # Ordered 1000 USDT at 14: 71.42 LINK; half filled, rounded down to the lot: 35.71.
        t = trade(pg_dsn, cid)
        assert (t["qty"], t["executed_qty"], t["executed_price"]) == (D("71.42"), D("35.71"), 14)
        p = position(pg_dsn, position_id_for(signal_id, uid))
        # margin 35.71 × 14 / 10 = 49.994, fee 35.71 × 14 × 0.0005 = 0.24997; what did not fill is not spent.
        assert (p["status"], p["qty"], p["margin_usdt"]) == ("open", D("35.71"), D("49.994"))
        assert usdt(pg_dsn, uid) == (START_USDT - D("49.994") - D("0.24997"), D(0))
        assert venue.position_qty(uid, symbol) == D("35.71")
        assert venue.order_count(cid) == 1
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE signal_id = $1", signal_id) == len(users)


def test_signals_while_an_entry_has_not_filled_yet(pg_dsn: str, tmp_path: Path) -> None:
    """The entry waits at the venue (injected latency). Meanwhile: a second open on the symbol is skipped as
    position_busy (not a second position on one symbol), an open on another symbol meets max_open_positions = 1,
    which counts the entry on its way, and the whale's close waits for the entry's fill, then closes the copy
    (not "no position" that leaves the copy open after the fill). The first signal is not processed while its
    order is at the venue; it is, copied, once the order fills."""
    whale, user = 2101, 21_001
    btc, eth = "BTC/USDT:USDT", "ETH/USDT:USDT"
    seed_simple(pg_dsn, whale, range(user, user + 1), max_open_positions=1)
    first = next_signal_id(pg_dsn)
    venue = PaperVenue(initial_marks={btc: D(60_000), eth: D(3_000)})
    venue.inject("latency", client_order_id=client_order_id(first, user), delay_ms=8000)
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        insert_signal_with_id(pg_dsn, first, whale_id=whale, symbol=btc, price=60_000, leverage=10)
        wait_for(lambda: trade(pg_dsn, client_order_id(first, user)).get("status") == "submitted", 30)
        assert signal_row(pg_dsn, first)["status"] == "processing"  # the order is on its way: not counted yet
        again = insert_signal(pg_dsn, whale_id=whale, symbol=btc, price=60_000, leverage=10)
        close = insert_signal(pg_dsn, whale_id=whale, symbol=btc, side="sell", action="close", price=60_000)
        other = insert_signal(pg_dsn, whale_id=whale, symbol=eth, price=3_000, leverage=10)
        signals = {"again": again, "other": other}
        rows = {name: wait_signal_done(pg_dsn, signal_id) for name, signal_id in signals.items()}
        assert trade(pg_dsn, client_order_id(first, user))["status"] == "submitted"  # still no fill
        assert signal_row(pg_dsn, first)["status"] == "processing"
        done = wait_signal_done(pg_dsn, first)  # processed once the order is final: filled
        assert (done["status"], done["copied"], done["failed"]) == ("processed", 1, 0)
        rows["close"] = wait_signal_done(pg_dsn, close)
        settle(system)
    assert rows["again"]["skip_reasons"] == {"position_busy": 1}
    assert (rows["close"]["copied"], rows["close"]["skip_reasons"]) == (1, {})
    assert rows["other"]["skip_reasons"] == {"max_open_positions": 1}
    assert fetchval(pg_dsn, "SELECT count(*) FROM positions WHERE user_id = $1", user) == 1
    assert fetchval(pg_dsn, "SELECT status FROM positions WHERE user_id = $1", user) == "closed"
    assert trade(pg_dsn, client_order_id(first, user))["status"] == "filled"
    assert trade(pg_dsn, client_order_id(close, user))["status"] == "filled"


def test_a_signal_every_follower_skipped_for_one_reason_says_so(pg_dsn: str, tmp_path: Path) -> None:
    """A symbol the followers' venue does not list: each follower skips (``unknown_symbol``, a per-follower skip
    counted in skip_reasons) and the signal is processed naming that reason (it used to say nothing)."""
    whale, users = 2106, range(21_501, 21_504)
    seed_simple(pg_dsn, whale, users)
    with running_engine(pg_dsn, tmp_path, venue=PaperVenue()):
        signal_id = insert_signal(pg_dsn, whale_id=whale, symbol="NOSUCH/USDT:USDT", price=1, leverage=10)
        row = wait_signal_done(pg_dsn, signal_id)
    assert (row["status"], row["copied"], row["skipped"], row["failed"]) == ("processed", 0, len(users), 0)
    assert row["skip_reasons"] == {"unknown_symbol": len(users)}
    assert row["error"] == f"all {len(users)} followers skipped: unknown_symbol"
    assert trade_outcomes(pg_dsn, signal_id) == {}
