"""Bad input and broken followers never stop the engine.

* Bad ``whale_signals`` rows are marked with a reason and never copied: an unknown whale (failed,
  ``unknown_whale``), past ``expires_at`` (expired), ``detected_at`` older than ``signals.max_signal_age_s``
  (expired, stale), a reduce without a fraction (failed, ``bad_fraction``); a symbol the follower's venue does not
  list is skipped by every follower (``unknown_symbol``). A good signal afterwards is still copied.
* A follower actor whose handler raises is restarted by the supervisor from its persisted state; the others keep
  running untouched, and the restarted one copies the next signal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.paper import PaperVenue
from engine.ids import client_order_id, position_id_for
from engine.messages import PriceUpdate
from tests.kit import fetchval, insert_signal, running_engine, wait_for, wait_signal_done
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
