"""Every admin command against a real engine: ``EngineSystem`` on the embedded PostgreSQL, a paper venue, and
the real admin socket, driven through the CLI (``adapters.admin_cli.main``) in-process.

One engine for the module (starting one takes a second or two); tests use distinct symbols so they do not
trade on each other's positions, and they run in file order: ``drain`` and ``shutdown`` come last. Nothing
asserts on timing: effects are polled for with a generous guard.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest

from adapters.admin_cli import EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE, main
from engine import logs
from engine.config import load_config
from engine.ids import close_order_id
from node import admin_handler
from node.persistence_writes import run_write as real_run_write
from node.system import EngineSystem
from tests.kit import execute, fetch, fetchval, fresh_database, running_engine, wait_for

T = TypeVar("T")
GUARD_S = 60.0  # an upper bound for an effect to show, never a measurement

W1, W2, W3 = 11, 12, 13  # whales
ALICE, BOB, CAROL, DAVE = 101, 102, 103, 104  # alice -> W1; bob -> W1, W2; carol -> W2; dave (added later) -> W3

SEED_SQL = f"""
INSERT INTO whales (id, name) VALUES ({W1}, 'w1'), ({W2}, 'w2'), ({W3}, 'w3');
INSERT INTO users (id, name) VALUES ({ALICE}, 'alice'), ({BOB}, 'bob'), ({CAROL}, 'carol');
INSERT INTO user_whale_follows (user_id, whale_id, max_slippage_pct) VALUES
    ({ALICE}, {W1}, 5), ({BOB}, {W1}, 5), ({BOB}, {W2}, 5), ({CAROL}, {W2}, 5);
"""


@pytest.fixture(scope="module")
def engine(pg_dsn: str) -> Iterator[EngineSystem]:
    execute(pg_dsn, SEED_SQL)
    base = Path(tempfile.mkdtemp(prefix="adme-"))  # short: a Unix socket path has at most 107 bytes
    log_file = (base / "engine.log").open("ab")  # stays open: cached loggers keep writing to it
    logs.configure("info", log_file)
    config = load_config(
        env={
            "ENGINE_DATABASE_URL": pg_dsn,
            "ENGINE_DATA_DIR": str(base / "data"),
            "ENGINE_STATS_INTERVAL_S": "2",
            "ENGINE_SIGNALS__POLL_INTERVAL_MS": "200",
            "ENGINE_PERSISTENCE__FLUSH_INTERVAL_MS": "10",
            "ENGINE_SHUTDOWN_GRACE_S": "5",
        }
    )
    system = EngineSystem(config)
    system.start()
    try:
        yield system
    finally:
        system.stop()
        logs.configure("info", log_file)
        shutil.rmtree(base, ignore_errors=True)


# ---- helpers -------------------------------------------------------------------------------------------------


def admin(system: EngineSystem, *argv: str) -> tuple[int, dict[str, Any]]:
    """Run ``admin ARGV --json`` in-process; the exit code and the reply object."""
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--json"], socket_path=system.config.admin_socket_path, stdout=out, stderr=err)
    text = out.getvalue().strip()
    reply = orjson.loads(text) if text else {"ok": False, "error": err.getvalue().strip()}
    return code, reply


def ok(system: EngineSystem, *argv: str) -> dict[str, Any]:
    code, reply = admin(system, *argv)
    assert code == EXIT_OK and reply["ok"], reply
    return reply


def refused(system: EngineSystem, *argv: str) -> str:
    code, reply = admin(system, *argv)
    assert code == EXIT_ERROR and not reply["ok"], reply
    return str(reply["error"])


def signal_json(whale_id: int, base: str, **extra: Any) -> str:
    payload = {
        "whale_id": whale_id,
        "symbol": f"{base}/USDT:USDT",
        "side": "buy",
        "action": "open",
        "price": str(_mark(base)),
        "size_usdt": "1000",
        "leverage": 2,
        **extra,
    }
    return orjson.dumps(payload).decode()


def _mark(base: str) -> Decimal:
    return {"BTC": Decimal(60000), "ETH": Decimal(3000), "SOL": Decimal(150), "LINK": Decimal(14),
            "AVAX": Decimal(30), "LTC": Decimal(80), "BNB": Decimal(580), "ADA": Decimal("0.45")}[base]  # fmt: skip


def processed(pg_dsn: str, signal_id: int) -> dict[str, Any]:
    """The signal's row once the router marked it processed (or failed / expired)."""

    def probe() -> dict[str, Any] | None:
        rows = fetch(pg_dsn, "SELECT * FROM whale_signals WHERE id = $1", signal_id)
        return dict(rows[0]) if rows and rows[0]["status"] not in ("pending", "processing") else None

    return wait_for(probe, message=f"signal {signal_id} to be processed")


def inject(system: EngineSystem, pg_dsn: str, whale_id: int, base: str) -> dict[str, Any]:
    reply = ok(system, "signal", signal_json(whale_id, base))
    return processed(pg_dsn, reply["signal_id"])


def open_positions(pg_dsn: str, user_id: int, base: str) -> list[dict[str, Any]]:
    rows = fetch(
        pg_dsn,
        "SELECT * FROM positions WHERE user_id = $1 AND symbol = $2 AND status = 'open'",
        user_id,
        f"{base}/USDT:USDT",
    )
    return [dict(r) for r in rows]


# ---- without the intake (runs before the module's engine starts) ------------------------------------------------


def test_signal_without_intake_is_claimed_and_routed_by_the_handler(pg_server: str) -> None:
    """``signals.listen`` off: nothing claims 'pending' rows, so the handler claims its own signal and routes it."""
    dsn = asyncio.run(fresh_database(pg_server, f"t_admin_nolisten_{uuid.uuid4().hex[:8]}"))
    execute(dsn, SEED_SQL)
    base = Path(tempfile.mkdtemp(prefix="adml-"))
    try:
        env: dict[str, Any] = {"ENGINE_ADMIN__ENABLED": "true", "ENGINE_SIGNALS__LISTEN": "false"}
        with running_engine(dsn, base, **env) as system:
            reply = ok(system, "signal", signal_json(W1, "ETH", external_id="ext-eth-nolisten"))
            assert (reply["already_existed"], reply["status"]) == (False, "processing")
            row = processed(dsn, reply["signal_id"])
            assert (row["status"], row["copied"]) == ("processed", 2)
            again = ok(system, "signal", signal_json(W1, "ETH", external_id="ext-eth-nolisten"))
            assert (again["signal_id"], again["already_existed"]) == (reply["signal_id"], True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---- read-only ---------------------------------------------------------------------------------------------------


def test_status(engine: EngineSystem) -> None:
    reply = ok(engine, "status")
    assert reply["database_reachable"] is True
    assert reply["followers"] == 3
    assert reply["whales"] >= 2
    assert reply["draining"] is False
    assert reply["uptime_s"] >= 0
    assert reply["version"]
    assert reply["venues"]["paper"]["breaker"] == "closed"
    assert reply["venues"]["paper"]["entries_open"] is True
    assert "weight_available" in reply["venues"]["paper"]
    assert {"queue_depth", "db_reachable"} <= set(reply["persistence"])
    assert reply["actors"] >= 3
    assert reply["paused"] == {"all": False, "users": [], "whales": [], "exchanges": []}


def test_stats(engine: EngineSystem) -> None:
    reply = ok(engine, "stats")
    for key in ("uptime_s", "version", "signals_received", "orders_sent", "skips", "venues", "followers"):
        assert key in reply, key
    assert reply["database_reachable"] is True


def test_users_and_user(engine: EngineSystem) -> None:
    users = {u["user_id"]: u for u in ok(engine, "users")["users"]}
    assert set(users) == {ALICE, BOB, CAROL}
    assert users[BOB]["follows"] == 2
    assert all(u["running"] for u in users.values())

    reply = ok(engine, "user", str(BOB))
    assert reply["running"] is True
    assert reply["live"]["follows"] == [W1, W2]
    assert reply["live"]["paused"] is False
    assert reply["settings"]["name"] == "bob"
    assert [f["whale_id"] for f in reply["follows"]] == [W1, W2]
    assert {"win_rate", "realized_pnl_usdt", "realized_pnl_by_day", "max_drawdown_usdt"} <= set(reply["performance"])
    assert "no user 99999" in refused(engine, "user", "99999")


_CLOSED_SQL = """INSERT INTO positions (position_id, user_id, venue, symbol, trade_type, side, qty, entry_price,
    leverage, margin_usdt, status, realized_pnl_usdt, opened_at, closed_at, close_reason)
    VALUES ($1, $2, 'paper', 'HIS/USDT:USDT', 'futures', 'long', 1, 100, 2, 50, $3, $4, $5, $6, $7)"""
_SNAPSHOT_SQL = """INSERT INTO portfolio_snapshots (user_id, taken_at, equity_usdt, free_usdt, reserved_usdt,
    unrealized_pnl_usdt, realized_pnl_usdt, open_positions, trades_today) VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8)"""


def test_user_reports_latest_snapshot_and_performance(engine: EngineSystem, pg_dsn: str) -> None:
    # Carol has no closed position and no snapshot yet (file order): history as the engine writes it.
    day = [datetime(2024, 5, d, tzinfo=UTC) for d in (1, 2, 3)]
    closed = [  # (status, realised PnL, closed at): wins are PnL > 0, so the break-even one is a loss
        ("closed", "30", day[0] + timedelta(hours=9)),
        ("closed", "-10", day[0] + timedelta(hours=23, minutes=59)),
        ("closed", "5", day[1] + timedelta(minutes=1)),  # UTC day 2, though 1 minute after day 1 ended
        ("liquidated", "-100", day[1] + timedelta(hours=12)),
        ("closed", "0", day[2] + timedelta(hours=1)),
        ("closed", "15", day[2] + timedelta(hours=2)),
    ]
    for i, (status, pnl, at) in enumerate(closed):
        reason = "liquidation" if status == "liquidated" else "signal"
        execute(pg_dsn, _CLOSED_SQL, f"his-{i}", CAROL, status, Decimal(pnl), at - timedelta(hours=1), at, reason)
    # Equity 1000 -> 900 (-100, 10 %) -> 1600 -> 1200 (-400, 25 %: the deepest fall, not the lowest point) -> 1300
    for hour, equity in enumerate((1000, 900, 1600, 1200, 1300)):
        taken_at = day[2] + timedelta(hours=hour)
        execute(pg_dsn, _SNAPSHOT_SQL, CAROL, taken_at, equity, equity - 50, -10 + hour, -60, 1, hour)

    reply = ok(engine, "user", str(CAROL))
    latest = reply["latest_snapshot"]
    assert datetime.fromisoformat(latest.pop("taken_at")) == day[2] + timedelta(hours=4)
    assert {k: v if isinstance(v, int) else Decimal(v) for k, v in latest.items()} == {
        "user_id": CAROL,
        "equity_usdt": Decimal(1300),
        "free_usdt": Decimal(1250),
        "reserved_usdt": Decimal(0),
        "unrealized_pnl_usdt": Decimal(-6),
        "realized_pnl_usdt": Decimal(-60),
        "open_positions": 1,
        "trades_today": 4,
    }
    perf = reply["performance"]
    assert (perf["closed_positions"], perf["wins"], perf["losses"]) == (6, 3, 3)
    assert Decimal(perf["win_rate"]) == Decimal("0.5")
    assert Decimal(perf["realized_pnl_usdt"]) == Decimal(-60)  # 30 - 10 + 5 - 100 + 0 + 15
    assert {d: Decimal(v) for d, v in perf["realized_pnl_by_day"].items()} == {
        "2024-05-01": Decimal(20),
        "2024-05-02": Decimal(-95),
        "2024-05-03": Decimal(15),
    }
    assert (Decimal(perf["max_drawdown_usdt"]), Decimal(perf["max_drawdown_pct"])) == (Decimal(400), Decimal(25))


def test_dry_run_places_nothing(engine: EngineSystem, pg_dsn: str) -> None:
    trades_before = fetchval(pg_dsn, "SELECT count(*) FROM trades")
    reply = ok(engine, "dry-run", signal_json(W1, "BNB"))
    assert reply["followers"] == 2
    assert reply["actions"] == {"entry": 2}
    assert reply["capped"] is False
    assert {r["user_id"] for r in reply["results"]} == {ALICE, BOB}
    assert all(Decimal(r["qty"]) > 0 for r in reply["results"])
    reply = ok(engine, "dry-run", signal_json(W1, "BNB", action="close", side="sell"))
    assert reply["skip_reasons"] == {"no_position": 2}
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades") == trades_before
    assert "signal rejected: non_positive_price" in refused(engine, "dry-run", signal_json(W1, "BNB", price="0"))


# ---- signals -------------------------------------------------------------------------------------------------


def test_signal_is_copied(engine: EngineSystem, pg_dsn: str) -> None:
    reply = ok(engine, "signal", signal_json(W1, "BTC", external_id="ext-btc-1"))
    row = processed(pg_dsn, reply["signal_id"])
    assert (row["status"], row["copied"], row["skipped"]) == ("processed", 2, 0)

    def filled() -> list[dict[str, Any]] | None:
        trades = ok(engine, "trades", "--signal", str(reply["signal_id"]), "--status", "filled")["trades"]
        return trades if len(trades) == 2 else None

    trades = wait_for(filled, message="both copies to fill")
    assert {t["user_id"] for t in trades} == {ALICE, BOB}
    wait_for(lambda: open_positions(pg_dsn, ALICE, "BTC"), message="alice's BTC position")
    wait_for(lambda: open_positions(pg_dsn, BOB, "BTC"), message="bob's BTC position")
    positions = ok(engine, "positions", "--user", str(ALICE), "--open")["positions"]
    assert [p["symbol"] for p in positions] == ["BTC/USDT:USDT"]
    assert ok(engine, "trades", "--user", str(BOB))["count"] >= 1

    assert "signal rejected: missing_field" in refused(engine, "signal", '{"whale_id": 11}')
    assert "unknown whale 999" in refused(engine, "signal", signal_json(999, "BTC"))


def test_signal_retry_gets_the_same_id(engine: EngineSystem, pg_dsn: str) -> None:
    """Idempotent on external_id: a retry is answered with the stored signal's id, never 'duplicate'."""
    first = ok(engine, "signal", signal_json(W1, "LTC", external_id="ext-ltc-retry"))
    again = ok(engine, "signal", signal_json(W1, "LTC", external_id="ext-ltc-retry"))
    assert again["signal_id"] == first["signal_id"]
    assert first["already_existed"] is False
    assert again["already_existed"] is True
    assert "differs_from_request" not in again
    other = ok(engine, "signal", signal_json(W1, "LTC", external_id="ext-ltc-retry", side="sell"))
    assert other["signal_id"] == first["signal_id"]
    assert other["differs_from_request"] == ["side"]  # told, not stored a second time
    assert processed(pg_dsn, first["signal_id"])["status"] == "processed"
    assert fetchval(pg_dsn, "SELECT count(*) FROM whale_signals WHERE external_id = 'ext-ltc-retry'") == 1


LostAnswer = Callable[..., Awaitable[Any]]


def _lose_first_answer(*, after_commit: bool) -> LostAnswer:
    """``run_write`` whose first call loses its answer the way a dropped connection does: after the write
    committed (``after_commit``), or before it ran at all."""
    calls = 0

    async def write(persistence: Any, fn: Any, timeout_s: float = 30.0) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            return await real_run_write(persistence, fn, timeout_s)
        if after_commit:
            await real_run_write(persistence, fn, timeout_s)
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    return write


def test_signal_committed_but_answer_lost_reports_its_id_and_is_routed(
    engine: EngineSystem, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The INSERT committed, its answer never came back: the reply has the stored id (read back by
    external_id), and the row is routed, not left 'processing' until the next restart."""
    monkeypatch.setattr(admin_handler, "run_write", _lose_first_answer(after_commit=True))
    reply = ok(engine, "signal", signal_json(W1, "AVAX", external_id="ext-avax-lost"))
    stored = fetchval(pg_dsn, "SELECT id FROM whale_signals WHERE external_id = 'ext-avax-lost'")
    assert reply["signal_id"] == stored
    row = processed(pg_dsn, stored)
    assert (row["status"], row["copied"]) == ("processed", 2)
    again = ok(engine, "signal", signal_json(W1, "AVAX", external_id="ext-avax-lost"))
    assert (again["signal_id"], again["already_existed"]) == (stored, True)


def test_signal_not_stored_says_a_retry_is_safe(
    engine: EngineSystem, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_handler, "run_write", _lose_first_answer(after_commit=False))
    error = refused(engine, "signal", signal_json(W1, "ADA", external_id="ext-ada-lost"))
    assert "signal not stored" in error
    assert "'ext-ada-lost' is safe" in error
    assert "internal error" not in error
    assert fetchval(pg_dsn, "SELECT count(*) FROM whale_signals WHERE external_id = 'ext-ada-lost'") == 0
    reply = ok(engine, "signal", signal_json(W1, "ADA", external_id="ext-ada-lost"))
    assert reply["already_existed"] is False
    assert processed(pg_dsn, reply["signal_id"])["status"] == "processed"


def test_signal_outcome_unknown_says_so(engine: EngineSystem, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The INSERT's answer is lost and the read-back fails too: the reply says the outcome is unknown and a
    retry is safe; the retry then stores it once."""
    with monkeypatch.context() as patched:
        patched.setattr(admin_handler, "run_write", _lose_first_answer(after_commit=False))
        patched.setattr(admin_handler, "STORED_SIGNAL_SQL", "SELECT no_such_column FROM whale_signals WHERE $1")
        error = refused(engine, "signal", signal_json(W1, "SOL", external_id="ext-sol-unknown"))
    assert "signal outcome unknown" in error
    assert "'ext-sol-unknown' is safe" in error
    reply = ok(engine, "signal", signal_json(W1, "SOL", external_id="ext-sol-unknown"))
    assert processed(pg_dsn, reply["signal_id"])["status"] == "processed"


# ---- pause / resume ----------------------------------------------------------------------------------------------


def test_pause_and_resume_user(engine: EngineSystem, pg_dsn: str) -> None:
    assert ok(engine, "pause", "user", str(ALICE))["paused"] is True
    assert ok(engine, "user", str(ALICE))["live"]["paused"] is True
    row = inject(engine, pg_dsn, W1, "ETH")
    assert (row["copied"], row["skip_reasons"]) == (1, {"paused": 1})
    assert ok(engine, "status")["paused"]["users"] == [ALICE]

    assert ok(engine, "resume", "user", str(ALICE))["paused"] is False
    assert ok(engine, "user", str(ALICE))["live"]["paused"] is False
    assert "no running follower for user 99999" in refused(engine, "pause", "user", "99999")


def test_pause_and_resume_whale(engine: EngineSystem, pg_dsn: str) -> None:
    ok(engine, "pause", "whale", str(W2))
    row = inject(engine, pg_dsn, W2, "SOL")
    assert (row["copied"], row["skip_reasons"]) == (0, {"paused": 2})
    row = inject(engine, pg_dsn, W1, "SOL")  # the other whale still copies
    assert row["copied"] == 2
    ok(engine, "resume", "whale", str(W2))
    assert inject(engine, pg_dsn, W2, "LINK")["copied"] == 2
    assert "unknown whale 999" in refused(engine, "pause", "whale", "999")


def test_pause_and_resume_exchange(engine: EngineSystem, pg_dsn: str) -> None:
    assert ok(engine, "pause", "exchange", "paper")["entries_open"] is False
    row = inject(engine, pg_dsn, W1, "AVAX")
    assert (row["copied"], row["skip_reasons"]) == (0, {"venue_unavailable": 2})
    ok(engine, "resume", "exchange", "paper")
    assert ok(engine, "status")["venues"]["paper"]["entries_open"] is True
    assert "unknown exchange 'nope'" in refused(engine, "pause", "exchange", "nope")


def test_pause_and_resume_all(engine: EngineSystem, pg_dsn: str) -> None:
    ok(engine, "pause", "user", str(CAROL))
    assert ok(engine, "pause", "all")["followers"] == 3
    row = inject(engine, pg_dsn, W1, "LTC")
    assert (row["copied"], row["skip_reasons"]) == (0, {"paused": 2})
    ok(engine, "resume", "all")
    # `resume all` undoes `pause all` only: carol stays paused until resumed herself.
    assert ok(engine, "user", str(CAROL))["live"]["paused"] is True
    assert ok(engine, "user", str(BOB))["live"]["paused"] is False
    ok(engine, "resume", "user", str(CAROL))
    assert ok(engine, "status")["paused"] == {"all": False, "users": [], "whales": [], "exchanges": []}


# ---- positions, prices ---------------------------------------------------------------------------------------


def test_close_and_close_all(engine: EngineSystem, pg_dsn: str) -> None:
    assert inject(engine, pg_dsn, W1, "ADA")["copied"] == 2
    (position,) = wait_for(lambda: open_positions(pg_dsn, ALICE, "ADA"), message="alice's ADA position")
    paper = engine.venues["paper"].adapter
    paper.inject("latency", client_order_id=close_order_id(position["position_id"]), delay_ms=1000)
    reply = ok(engine, "close", position["position_id"])
    assert (reply["user_id"], reply["closing"]) == (ALICE, True)
    again = ok(engine, "close", position["position_id"])  # its close is still on the way: a no-op, said so
    assert (again["closing"], again["detail"]) == (False, "already closing")

    def closed() -> bool:
        status = fetchval(pg_dsn, "SELECT status FROM positions WHERE position_id = $1", position["position_id"])
        return bool(status == "closed")

    wait_for(closed, message="alice's ADA position to close")
    assert "is not open" in refused(engine, "close", position["position_id"])
    assert "no position 'nope'" in refused(engine, "close", "nope")

    wait_for(lambda: open_positions(pg_dsn, BOB, "ADA"), message="bob's ADA position")
    reply = ok(engine, "close-all", str(BOB))
    assert reply["closing"] >= 1

    def bob_flat() -> bool:
        left = fetchval(pg_dsn, "SELECT count(*) FROM positions WHERE user_id = $1 AND status <> 'closed'", BOB)
        return bool(left == 0)

    wait_for(bob_flat, message="every bob position to close")


def test_price(engine: EngineSystem) -> None:
    reply = ok(engine, "price", "BTC", "61000")
    assert (reply["venues"], reply["feeds_poked"]) == (["paper"], 1)
    assert engine.mark_price("BTC/USDT:USDT", None) == Decimal(61000)
    assert ok(engine, "dry-run", signal_json(W2, "BTC"))["mark"] == "61000"
    ok(engine, "price", "BTC/USDT:USDT", "60000")
    assert engine.mark_price("BTC/USDT:USDT", None) == Decimal(60000)
    assert "unknown symbol 'NOPE/USDT'" in refused(engine, "price", "NOPE/USDT", "1")


# ---- operations ------------------------------------------------------------------------------------------------


def test_reconcile(engine: EngineSystem) -> None:
    assert ok(engine, "reconcile")["followers_asked"] == 3


def test_reload_picks_up_a_new_user(engine: EngineSystem, pg_dsn: str) -> None:
    execute(pg_dsn, f"INSERT INTO users (id, name) VALUES ({DAVE}, 'dave')")
    execute(pg_dsn, f"INSERT INTO user_whale_follows (user_id, whale_id) VALUES ({DAVE}, {W3})")
    reply = ok(engine, "reload")
    assert {"added", "updated", "removed"} <= set(reply)
    users = {u["user_id"]: u for u in ok(engine, "users")["users"]}
    assert users[DAVE]["running"] is True
    assert ok(engine, "user", str(DAVE))["live"]["follows"] == [W3]


def test_log_level(engine: EngineSystem) -> None:
    assert ok(engine, "log-level", "debug")["level"] == "debug"
    assert logs.current_level() == "debug"
    ok(engine, "log-level", "info")
    assert logs.current_level() == "info"
    refused(engine, "log-level", "loud")  # refused by the CLI before sending


def test_exit_codes(engine: EngineSystem) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["status"], socket_path=engine.config.admin_socket_path, stdout=out, stderr=err) == EXIT_OK
    assert "uptime_s:" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert main(["user", "99999"], socket_path=engine.config.admin_socket_path, stdout=out, stderr=err) == EXIT_ERROR
    assert "error: no user 99999" in err.getvalue()
    missing = engine.config.admin_socket_path.with_name("missing.sock")
    assert main(["status"], socket_path=missing, stdout=out, stderr=err) == EXIT_UNREACHABLE


def test_drain(engine: EngineSystem, pg_dsn: str) -> None:
    assert ok(engine, "drain")["draining"] is True
    assert ok(engine, "status")["draining"] is True
    assert "draining" in refused(engine, "signal", signal_json(W1, "ETH"))
    assert ok(engine, "dry-run", signal_json(W1, "ETH"))["skip_reasons"] == {"draining": 2}


def test_shutdown_sets_the_flag(engine: EngineSystem) -> None:
    assert ok(engine, "shutdown")["shutting_down"] is True
    assert engine.shutdown_requested is True
