"""Bad input and broken followers never stop the engine.

* Bad ``whale_signals`` rows are marked with a reason and never copied: an unknown whale (failed,
  ``unknown_whale``), past ``expires_at`` (expired), ``detected_at`` older than ``signals.max_signal_age_s``
  (expired, stale), a reduce without a fraction (failed, ``bad_fraction``); a symbol the follower's venue does not
  list is skipped by every follower (``unknown_symbol``). A good signal afterwards is still copied.
* A row whose timestamp PostgreSQL stores but Python cannot represent (year 200000, 4000 BC, ``-infinity``,
  ``infinity``) is failed by itself with ``undecodable: ...`` and logged once; the rows behind it are taken, and the
  claim never fails as a whole (today's ``intake.error`` every poll). Such rows predate the schema's CHECKs (the
  test drops them, as a database from before migration 2 would not have them).
* A follower actor whose handler raises is restarted by the supervisor from its persisted state; the others keep
  running untouched, and the restarted one copies the next signal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from adapters.paper import PaperVenue
from engine.ids import client_order_id, position_id_for
from engine.messages import PriceUpdate
from tests.kit import (
    HeldConnection,
    capture_logs,
    events,
    execute,
    fetch,
    fetchval,
    insert_signal,
    running_engine,
    wait_for,
    wait_signal_done,
)
from tests.kit.copying import PAPER_START_USDT as START_USDT
from tests.kit.copying import event_count, position, seed_simple, signal_and_wait, trade, usdt

D = Decimal


def test_bad_signals_are_marked_and_never_stop_the_router(pg_dsn: str, tmp_path: Path) -> None:
    whale, users, symbol = 4001, range(40_001, 40_004), "ETH/USDT:USDT"
    seed_simple(pg_dsn, whale, users)
    venue = PaperVenue(initial_marks={symbol: D(3000)})
    now = datetime.now(UTC)
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        bad = {
            "unknown_whale": insert_signal(pg_dsn, whale_id=4999, symbol=symbol, price=3000),
            "expired": insert_signal(
                pg_dsn, whale_id=whale, symbol=symbol, price=3000, detected_at=now - timedelta(seconds=5),
                expires_at=now - timedelta(seconds=1),
            ),
            "stale": insert_signal(
                pg_dsn, whale_id=whale, symbol=symbol, price=3000, detected_at=now - timedelta(seconds=400),
                expires_at=now + timedelta(minutes=5),
            ),
            "no_fraction": insert_signal(
                pg_dsn, whale_id=whale, symbol=symbol, side="sell", action="reduce", price=3000
            ),
        }  # fmt: skip
        rows = {name: wait_signal_done(pg_dsn, signal_id) for name, signal_id in bad.items()}
        assert (rows["unknown_whale"]["status"], rows["unknown_whale"]["error"]) == ("failed", "unknown_whale")
        assert rows["expired"]["status"] == "expired" and rows["expired"]["error"].startswith("expired")
        assert rows["stale"]["status"] == "expired" and rows["stale"]["error"].startswith("stale")
        assert rows["no_fraction"]["status"] == "failed" and rows["no_fraction"]["error"].startswith("bad_fraction")

        unknown_symbol = insert_signal(pg_dsn, whale_id=whale, symbol="FOO/USDT:USDT", price=1)
        row = wait_signal_done(pg_dsn, unknown_symbol)
        assert (row["status"], row["copied"], row["skipped"], row["failed"]) == ("processed", 0, len(users), 0)
        assert row["skip_reasons"] == {"unknown_symbol": len(users)}

        good = signal_and_wait(pg_dsn, system, whale_id=whale, symbol=symbol, price=3000, leverage=10)
    assert (
        fetchval(
            pg_dsn, "SELECT count(*) FROM trades WHERE signal_id = ANY($1::bigint[])", [*bad.values(), unknown_symbol]
        )
        == 0
    )
    for uid in users:
        assert trade(pg_dsn, client_order_id(good, uid))["status"] == "filled"
        assert event_count(pg_dsn, "follower_skipped", signal_id=unknown_symbol, user_id=uid) == 1
    assert event_count(pg_dsn, "signal_processed", signal_id=good) == 1


def test_failed_follower_is_restarted_from_its_books_others_untouched(pg_dsn: str, tmp_path: Path) -> None:
    whale, users, symbol, next_symbol = 4002, range(40_101, 40_105), "SOL/USDT:USDT", "XRP/USDT:USDT"
    seed_simple(pg_dsn, whale, users)
    venue = PaperVenue(initial_marks={symbol: D(150), next_symbol: D("0.6")})
    victim = users[0]
    with running_engine(pg_dsn, tmp_path, venue=venue) as system:
        assert system.supervisor is not None
        opened = signal_and_wait(pg_dsn, system, whale_id=whale, symbol=symbol, price=150, leverage=10)
        before = system.follower_refs()
        old_ref = before[victim]

        def broken_price_handler(update: Any) -> None:
            raise RuntimeError("injected: price handler bug")

        # Fault injection on that one instance: its next PriceUpdate raises inside the handler.
        actor = old_ref._actor_weakref()
        assert actor is not None
        actor._on_prices = broken_price_handler  # type: ignore[method-assign]  # fault injection, this instance only
        del actor
        old_ref.tell(PriceUpdate(venue="paper", marks={symbol: D(151)}))
        new_ref = wait_for(lambda: (ref := system.follower_refs().get(victim)) is not old_ref and ref)
        assert not old_ref.is_alive()
        desc = new_ref.proxy().describe().get(timeout=30)
        # Rebuilt from PostgreSQL: the open position and the balance as they were (6 SOL, margin 90, fee 0.45).
        assert [(p["position_id"], D(p["qty"])) for p in desc["open_positions"]] == [
            (position_id_for(opened, victim), D(6))
        ]
        usdt_row = next(b for b in desc["balances"] if b["asset"] == "USDT")
        assert (D(usdt_row["free"]), D(usdt_row["reserved"])) == (START_USDT - D(90) - D("0.45"), D(0))
        after = system.follower_refs()
        for uid in users[1:]:
            assert after[uid] is before[uid] and after[uid].is_alive()  # the others were not restarted

        later = signal_and_wait(pg_dsn, system, whale_id=whale, symbol=next_symbol, price="0.6", leverage=10)
        assert system.follower_refs().get(victim) is new_ref
    for uid in users:
        # 1000 USDT at 0.6: 1666.6 XRP, margin 99.996, fee 0.49998.
        assert trade(pg_dsn, client_order_id(later, uid))["status"] == "filled", uid
        assert position(pg_dsn, position_id_for(later, uid))["qty"] == D("1666.6")
        assert position(pg_dsn, position_id_for(opened, uid))["status"] == "open"
        assert usdt(pg_dsn, uid) == (START_USDT - D("90.45") - D("99.996") - D("0.49998"), D(0))


POISON = {
    "year_200000": ("detected_at", "200000-01-01 00:00:00+00"),
    "4000_bc": ("detected_at", "4000-01-01 00:00:00+00 BC"),
    "minus_infinity": ("detected_at", "-infinity"),
    "expires_infinity": ("expires_at", "infinity"),
}


def _insert_poison(dsn: str, whale: int, symbol: str, column: str, value: str) -> int:
    """A row an unconstrained database holds: the timestamp is written as text, so no Python value is involved."""
    other = "expires_at" if column == "detected_at" else "detected_at"
    signal_id: int = fetchval(
        dsn,
        f"""INSERT INTO whale_signals (external_id, whale_id, symbol, side, action, trade_type, price, size_usdt,
               leverage, priority, {column}, {other})
           VALUES ('poison-' || gen_random_uuid(), $1, $2, 'buy', 'open', 'futures', 3000, 10000, 1, 'high',
                   $3::text::timestamptz, {"now()" if other == "detected_at" else "NULL"})
           RETURNING id""",
        whale,
        symbol,
        value,
    )
    return signal_id


def _status(dsn: str, signal_id: int) -> tuple[str, str | None]:
    row = fetch(dsn, "SELECT status, error FROM whale_signals WHERE id = $1", signal_id)[0]
    return row["status"], row["error"]


def _failed(dsn: str, signal_id: int) -> tuple[str, str | None] | None:
    status = _status(dsn, signal_id)
    return status if status[0] == "failed" else None


def test_undecodable_rows_are_failed_alone_and_the_rows_behind_them_are_taken(pg_dsn: str, tmp_path: Path) -> None:
    whale, users, symbol = 4003, range(40_201, 40_203), "ETH/USDT:USDT"
    seed_simple(pg_dsn, whale, users)
    for constraint in ("whale_signals_detected_at_sane", "whale_signals_expires_at_sane"):
        execute(pg_dsn, f"ALTER TABLE whale_signals DROP CONSTRAINT IF EXISTS {constraint}")
    # At the head of the queue (priority high) before the engine starts; a good row behind them.
    poison = {name: _insert_poison(pg_dsn, whale, symbol, column, value) for name, (column, value) in POISON.items()}
    waiting = insert_signal(pg_dsn, whale_id=whale, symbol=symbol, price=3000, leverage=10)
    venue = PaperVenue(initial_marks={symbol: D(3000)})
    with capture_logs() as logs, running_engine(pg_dsn, tmp_path, venue=venue) as system:
        assert wait_signal_done(pg_dsn, waiting)["status"] == "processed"
        for name, signal_id in poison.items():
            _, error = wait_for(partial(_failed, pg_dsn, signal_id))
            column = POISON[name][0]
            assert error is not None and error.startswith(f"undecodable: {column}"), (name, error)
        # More poison while running, then a good signal: taken, copied.
        late = _insert_poison(pg_dsn, whale, symbol, "detected_at", "-infinity")
        good = signal_and_wait(pg_dsn, system, whale_id=whale, symbol=symbol, price=3000, leverage=10)
        assert _status(pg_dsn, late)[0] == "failed"
    for uid in users:
        assert trade(pg_dsn, client_order_id(waiting, uid))["status"] == "filled"
        assert trade(pg_dsn, client_order_id(good, uid))["status"] == "filled"
    undecodable = events(logs, "intake.row_undecodable")
    assert sorted(e["signal_id"] for e in undecodable) == sorted([*poison.values(), late])
    assert events(logs, "intake.error") == []


def test_a_poisoned_state_row_does_not_stop_start_up(pg_dsn: str, tmp_path: Path) -> None:
    """An open position whose ``opened_at`` Python cannot hold (year 200000): the engine starts without that
    user (``state.row_undecodable``) and copies for everyone else (was: start-up failed with OverflowError)."""
    whale, users, symbol = 4004, range(40_301, 40_304), "BNB/USDT:USDT"
    seed_simple(pg_dsn, whale, users)
    victim = users[0]
    execute(
        pg_dsn,
        "INSERT INTO positions (position_id, user_id, venue, symbol, trade_type, side, qty, entry_price, leverage,"
        " margin_usdt, status, opened_at) VALUES ('p-poison', $1, 'paper', $2, 'futures', 'long', 1, 600, 1, 600,"
        " 'open', '200000-01-01 00:00:00+00')",
        victim,
        symbol,
    )
    venue = PaperVenue(initial_marks={symbol: D(600)})
    try:
        with capture_logs() as logs, running_engine(pg_dsn, tmp_path, venue=venue) as system:
            good = signal_and_wait(pg_dsn, system, whale_id=whale, symbol=symbol, price=600, leverage=10)
            assert victim not in system.follower_refs()
    finally:
        execute(pg_dsn, "DELETE FROM positions WHERE position_id = 'p-poison'")
    for uid in users[1:]:
        assert trade(pg_dsn, client_order_id(good, uid))["status"] == "filled"
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE user_id = $1", victim) == 0
    [undecodable] = events(logs, "state.row_undecodable")
    assert (undecodable["table"], undecodable["user_id"]) == ("positions", victim)


def test_a_far_future_updated_at_does_not_stop_the_follows_poll(pg_dsn: str, tmp_path: Path) -> None:
    """A ``users`` row stamped in year 200000 (from before schema step 3): the follows watcher's poll still finds
    a new follower written without a notification (was: every poll failed decoding that row)."""
    whale, symbol = 4005, "ADA/USDT:USDT"
    seed_simple(pg_dsn, whale, range(40_401, 40_402))
    execute(pg_dsn, "ALTER TABLE users DROP CONSTRAINT IF EXISTS users_updated_at_sane")
    with HeldConnection(pg_dsn) as conn:  # no trigger: the stamp stays as written
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE users SET updated_at = '200000-01-01 00:00:00+00' WHERE id = 40401")
    slow_poll: dict[str, Any] = {"ENGINE_SIGNALS__FOLLOWS_POLL_INTERVAL_MS": "600000"}  # ** binds venues too
    try:
        with running_engine(pg_dsn, tmp_path, venue=PaperVenue(initial_marks={symbol: D(1)}), **slow_poll) as system:
            assert 40_401 in system.follower_refs()
            with HeldConnection(pg_dsn) as conn:
                conn.execute("SET session_replication_role = replica")  # no NOTIFY: only the poll can find it
                conn.execute("INSERT INTO users (id, name) VALUES (40402, 'late')")
                conn.execute(f"INSERT INTO user_whale_follows (user_id, whale_id) VALUES (40402, {whale})")
            execute(pg_dsn, "SELECT pg_notify('follows_changed', '0')")  # a poll now, not in 10 minutes
            wait_for(lambda: 40_402 in system.follower_refs(), 30)
    finally:
        execute(pg_dsn, "UPDATE users SET updated_at = now() WHERE id = 40401")
