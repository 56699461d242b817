"""Restarts: an engine stops and another starts on the same database and the same paper venue (a real venue
outlives the engine too).

* a signal inserted while no engine runs is claimed and copied by the next one;
* trades left UNKNOWN by the last run are resolved by client order id at start-up: found -> FILLED, booked once;
* a PENDING / UNKNOWN trade the venue never saw is FAILED once the venue's ``unknown_grace_s`` is over, and its
  reservation goes back to free; within the grace it stays unknown and is asked about again later.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.paper import PaperVenue
from engine.ids import client_order_id, position_id_for
from engine.messages import TradeType, VenueOrder
from engine.venue import RetryableError
from tests.kit import (
    execute,
    fetch,
    fetchval,
    insert_signal,
    running_engine,
    seed_followers,
    seed_whale,
    settle,
    signal_row,
    wait_for,
    wait_signal_done,
)
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


def test_signal_inserted_while_engine_down_is_copied_after_start(pg_dsn: str, tmp_path: Path) -> None:
    whale, users, symbol = 3001, range(30_001, 30_004), "SOL/USDT:USDT"
    seed_simple(pg_dsn, whale, users)
    venue = PaperVenue(initial_marks={symbol: D(150)})
    with running_engine(pg_dsn, tmp_path, venue=venue):
        pass
    signal_id = insert_signal_with_id(
        pg_dsn, next_signal_id(pg_dsn), whale_id=whale, symbol=symbol, price=150, leverage=10
    )
    assert signal_row(pg_dsn, signal_id)["status"] == "pending"
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        row = wait_signal_done(pg_dsn, signal_id)
        settle(system)
    assert (row["status"], row["copied"], row["skipped"]) == ("processed", len(users), 0)
    for uid in users:
        cid = client_order_id(signal_id, uid)
        # 1000 USDT at 150: 6 SOL (lot 1), notional 900, margin 90, fee 0.45.
        assert trade(pg_dsn, cid)["status"] == "filled" and venue.order_count(cid) == 1
        assert position(pg_dsn, position_id_for(signal_id, uid))["qty"] == 6
        assert usdt(pg_dsn, uid) == (START_USDT - D(90) - D("0.45"), D(0))


class FetchBlockableVenue(PaperVenue):
    """A paper venue whose order look-ups can be made to fail (HTTP 503), so an UNKNOWN trade stays unknown
    for as long as the test wants: the venue is up for orders, down for queries."""

    fetch_blocked = False

    async def fetch_order_by_client_id(
        self, *, user_id: int, symbol: str, trade_type: TradeType, client_order_id: str
    ) -> VenueOrder | None:
        if self.fetch_blocked:
            raise RetryableError("test: 503 on order queries")
        return await super().fetch_order_by_client_id(
            user_id=user_id, symbol=symbol, trade_type=trade_type, client_order_id=client_order_id
        )


def test_restart_resolves_unknown_trades_and_books_them_once(pg_dsn: str, tmp_path: Path) -> None:
    whale, users, symbol, other_symbol = 3002, range(30_101, 30_104), "DOGE/USDT:USDT", "XRP/USDT:USDT"
    seed_simple(pg_dsn, whale, users)
    signal_id = next_signal_id(pg_dsn)
    cids = {uid: client_order_id(signal_id, uid) for uid in users}
    venue = FetchBlockableVenue(initial_marks={symbol: D("0.15"), other_symbol: D("0.6")})
    venue.fetch_blocked = True
    for cid in cids.values():
        venue.inject("timeout_after_accept", client_order_id=cid)
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        insert_signal_with_id(pg_dsn, signal_id, whale_id=whale, symbol=symbol, price="0.15", leverage=10)
        wait_trades_final(pg_dsn, cids.values(), ("unknown",))
        # Another copy fills meanwhile, so the books are written with the unknown order's funds still reserved.
        other_id = insert_signal_with_id(
            pg_dsn, next_signal_id(pg_dsn), whale_id=whale, symbol=other_symbol, price="0.6", leverage=10
        )
        wait_signal_done(pg_dsn, other_id)
        wait_trades_final(pg_dsn, [client_order_id(other_id, uid) for uid in users])
        settle(system)
    # The engine is gone with the outcomes unknown; the venue filled every order. The signal was not processed:
    # its copies were neither filled nor failed as far as the engine knew.
    assert signal_row(pg_dsn, signal_id)["status"] == "processing"
    for uid, cid in cids.items():
        assert trade(pg_dsn, cid)["status"] == "unknown"
        assert venue.order_count(cid) == 1
        assert position(pg_dsn, position_id_for(signal_id, uid)) == {}
    venue.fetch_blocked = False
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        wait_trades_final(pg_dsn, cids.values())
        # Routed again at start: each copy answers with its outcome, resolved by the recovery (counted once).
        row = wait_signal_done(pg_dsn, signal_id)
        assert (row["status"], row["copied"], row["skipped"], row["failed"]) == ("processed", len(users), 0, 0)
        settle(system)
        assert system.supervisor is not None
        for uid in users:
            desc = system.follower_refs()[uid].proxy().describe().get(timeout=30)
            assert desc["orders_in_flight"] == []
            assert sorted(D(p["qty"]) for p in desc["open_positions"]) == [D("1666.6"), 6666]
    for uid, cid in cids.items():
        assert venue.create_calls(cid) == 1 and venue.order_count(cid) == 1  # never re-sent
        # 1000 USDT at 0.15: 6666 DOGE, notional 999.9, margin 99.99, fee 0.49995.
        t = trade(pg_dsn, cid)
        assert (t["status"], t["executed_qty"], t["executed_price"]) == ("filled", 6666, D("0.15"))
        p = position(pg_dsn, position_id_for(signal_id, uid))
        assert (p["status"], p["qty"], p["margin_usdt"]) == ("open", 6666, D("99.99"))
        # The reservation made by the first run is settled by the second: nothing stays reserved. The other
        # copy: 1000 USDT at 0.6, 1666.6 XRP, margin 99.996, fee 0.49998.
        assert usdt(pg_dsn, uid) == (START_USDT - D("99.99") - D("0.49995") - D("99.996") - D("0.49998"), D(0))
        assert event_count(pg_dsn, "position_opened", user_id=uid) == 2
        assert event_count(pg_dsn, "trade_executed", signal_id=signal_id, user_id=uid) == 1


def _write_open_trade(
    pg_dsn: str, *, cid: str, user_id: int, symbol: str, status: str, reserved: Decimal, created_at: datetime
) -> None:
    """A trade row as a crashed run leaves it: intent written (maybe sent), outcome unknown, funds reserved."""
    execute(
        pg_dsn,
        """INSERT INTO trades (client_order_id, user_id, venue, symbol, trade_type, side, qty, price, status,
               leverage, signal_id, whale_id, position_id, reserved_usdt, created_at, version)
           VALUES ($1, $2, 'paper', $3, 'futures', 'buy', 6, 150, $4, 10, $5, $6, $7, $8, $9, 2)""",
        cid,
        user_id,
        symbol,
        status,
        user_id,  # any signal id: only its client order id matters to the venue
        3003,
        f"p-{cid}",
        reserved,
        created_at,
    )
    execute(
        pg_dsn,
        "INSERT INTO balances (user_id, venue, asset, free, reserved, version) VALUES ($1, 'paper', 'USDT', $2, $3, 5)",
        user_id,
        START_USDT - reserved,
        reserved,
    )


def test_trades_the_venue_never_saw_fail_after_the_grace_and_release_funds(pg_dsn: str, tmp_path: Path) -> None:
    whale, symbol = 3003, "SOL/USDT:USDT"
    old_pending, old_unknown, fresh_pending = 30_201, 30_202, 30_203
    users = range(old_pending, fresh_pending + 1)
    seed_simple(pg_dsn, whale, users)
    reserved = D("90.45")  # 6 SOL at 150, leverage 10: margin 90 + fee 0.45
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    grace_s = 3
    cids = {uid: f"cxtestneverseenu{uid}e" for uid in users}
    _write_open_trade(
        pg_dsn,
        cid=cids[old_pending],
        user_id=old_pending,
        symbol=symbol,
        status="pending",
        reserved=reserved,
        created_at=long_ago,
    )
    _write_open_trade(
        pg_dsn,
        cid=cids[old_unknown],
        user_id=old_unknown,
        symbol=symbol,
        status="unknown",
        reserved=reserved,
        created_at=long_ago,
    )
    # Written just now: within the grace the venue may simply not have it *yet*.
    _write_open_trade(
        pg_dsn,
        cid=cids[fresh_pending],
        user_id=fresh_pending,
        symbol=symbol,
        status="pending",
        reserved=reserved,
        created_at=datetime.now(UTC),
    )
    venue = PaperVenue(initial_marks={symbol: D(150)})
    env: dict[str, Any] = {"ENGINE_VENUES": f'[{{name = "paper", unknown_grace_s = {grace_s}}}]'}
    with running_engine(pg_dsn, tmp_path, venue=venue, **env) as system:
        assert system.venues["paper"].config.unknown_grace_s == grace_s
        wait_trades_final(pg_dsn, [cids[old_pending], cids[old_unknown]], ("failed",))
        # The fresh one is asked about again (the periodic reconciliation: system.reconcile) until the grace
        # is over, then fails the same way.
        wait_for(
            lambda: system.reconcile() >= 0 and trade(pg_dsn, cids[fresh_pending])["status"] == "failed",
            timeout_s=60,
            interval_s=0.5,
        )
        settle(system)
        assert system.supervisor is not None
        for uid in users:
            desc = system.follower_refs()[uid].proxy().describe().get(timeout=30)
            assert desc["orders_in_flight"] == [] and desc["open_positions"] == []
    for uid, cid in cids.items():
        t = trade(pg_dsn, cid)
        assert t["status"] == "failed" and "not_found" in (t["error"] or ""), t
        assert venue.create_calls(cid) == 0 and venue.order_count(cid) == 0  # never sent now either
        assert usdt(pg_dsn, uid) == (START_USDT, D(0))
        assert event_count(pg_dsn, "trade_failed", user_id=uid) == 1
    assert fetchval(pg_dsn, "SELECT count(*) FROM positions WHERE user_id = ANY($1::bigint[])", list(users)) == 0


def test_signal_left_processing_by_a_crash_is_finished_once(pg_dsn: str, tmp_path: Path) -> None:
    """A run that crashed after claiming a signal leaves it PROCESSING. The next start routes it again; every
    order it already caused is recognised as a duplicate (same client order id, intent already durable), so
    nothing reaches the venue twice and the books are not counted twice."""

    seed_whale(pg_dsn, 8801)
    users = list(range(880_101, 880_111))
    seed_followers(pg_dsn, whale_id=8801, user_ids=users, follow={"fixed_usdt": Decimal(100)})
    venue = PaperVenue()
    mark = venue.marks()["SOL/USDT:USDT"]
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        signal_id = insert_signal(pg_dsn, whale_id=8801, symbol="SOL/USDT:USDT", price=mark, leverage=2)
        assert wait_signal_done(pg_dsn, signal_id)["copied"] == len(users)
        settle(system)
    before = fetch(pg_dsn, "SELECT user_id, qty FROM positions WHERE user_id = ANY($1::bigint[]) ORDER BY 1", users)
    free_before = fetchval(pg_dsn, "SELECT sum(free) FROM balances WHERE user_id = ANY($1::bigint[])", users)
    cids = [
        r["client_order_id"]
        for r in fetch(pg_dsn, "SELECT client_order_id FROM trades WHERE signal_id = $1", signal_id)
    ]
    # What a crash between claim and PROCESSED leaves behind.
    execute(pg_dsn, "UPDATE whale_signals SET status = 'processing' WHERE id = $1", signal_id)

    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        row = wait_signal_done(pg_dsn, signal_id)
        settle(system)
    assert row["status"] == "processed"
    assert row["copied"] == len(users)  # the copies exist: counted as copied, not as failures
    assert all(venue.order_count(cid) == 1 for cid in cids)
    after = fetch(pg_dsn, "SELECT user_id, qty FROM positions WHERE user_id = ANY($1::bigint[]) ORDER BY 1", users)
    assert [(r["user_id"], r["qty"]) for r in after] == [(r["user_id"], r["qty"]) for r in before]
    assert fetchval(pg_dsn, "SELECT sum(free) FROM balances WHERE user_id = ANY($1::bigint[])", users) == free_before
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE signal_id = $1", signal_id) == len(users)
    assert {r["status"] for r in fetch(pg_dsn, "SELECT status FROM trades WHERE signal_id = $1", signal_id)} == {
        "filled"
    }


def test_a_signal_routed_again_after_a_restart_counts_each_copy_by_its_outcome_once(
    pg_dsn: str, tmp_path: Path
) -> None:
    """A crash between the copies' outcomes and PROCESSED: the next start routes the signal again and each copy,
    a duplicate by client order id, answers with its trade row's outcome: the rejected one as failed, the filled
    ones as copied, none twice, none sent again (it used to count every duplicate as copied)."""
    whale, users, symbol = 3005, range(30_501, 30_504), "BTC/USDT:USDT"
    seed_simple(pg_dsn, whale, users)
    signal_id = next_signal_id(pg_dsn)
    cids = {uid: client_order_id(signal_id, uid) for uid in users}
    venue = PaperVenue(initial_marks={symbol: D(60_000)})
    venue.inject("reject", client_order_id=cids[users[0]])
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        insert_signal_with_id(pg_dsn, signal_id, whale_id=whale, symbol=symbol, price=60_000, leverage=10)
        first = wait_signal_done(pg_dsn, signal_id)
        settle(system)
    assert (first["copied"], first["failed"], first["skip_reasons"]) == (2, 1, {"rejected": 1})
    # What a crash between claim and PROCESSED leaves behind.
    execute(
        pg_dsn,
        "UPDATE whale_signals SET status = 'processing', copied = 0, failed = 0, skip_reasons = '{}' WHERE id = $1",
        signal_id,
    )
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        row = wait_signal_done(pg_dsn, signal_id)
        settle(system)
    assert (row["status"], row["copied"], row["skipped"], row["failed"]) == ("processed", 2, 0, 1)
    assert row["skip_reasons"] == {"rejected": 1}
    outcomes = fetch(pg_dsn, "SELECT status, count(*) AS n FROM trades WHERE signal_id = $1 GROUP BY 1", signal_id)
    assert {r["status"]: r["n"] for r in outcomes} == {"filled": 2, "rejected": 1}
    assert all(venue.create_calls(cid) == 1 for cid in cids.values())
