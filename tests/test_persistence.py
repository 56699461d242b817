"""PersistenceActor against a real PostgreSQL: group commit, idempotent batches, outages, poison rows."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pytest

from actors.persistence import PersistenceActor
from actors.persistence_io import PersistenceIo, PreviousBatchFailed
from adapters.database import apply_schema, connect, create_database
from adapters.embedded_pg import EmbeddedPostgres
from adapters.ioloop import IoLoop
from engine.clock import SYSTEM_CLOCK
from engine.config import DatabaseConfig, PersistenceConfig
from engine.control import BatchDone
from engine.messages import (
    BalanceRow,
    DomainEventRow,
    IntentAck,
    PersistIntent,
    PersistRows,
    PositionRow,
    PositionSide,
    PositionStatus,
    Side,
    SignalStatus,
    SignalStatusRow,
    SnapshotRow,
    TradeRow,
    TradeStatus,
    TradeType,
)
from node.persistence_writes import run_write
from tests.kit import TcpProxy, capture_logs, fetch, fetchval, wait_for


class Replies:
    """A stand-in ``reply_to``: records every IntentAck, from any thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.acks: list[IntentAck] = []

    def tell(self, message: IntentAck) -> None:
        with self._cond:
            self.acks.append(message)
            self._cond.notify_all()

    def wait(self, count: int, timeout_s: float = 60) -> list[IntentAck]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.acks) >= count, timeout_s), len(self.acks)
            return list(self.acks)


def trade(cid: str, *, version: int = 1, status: Any = TradeStatus.PENDING, **kw: Any) -> TradeRow:
    fields: dict[str, Any] = {
        "client_order_id": cid,
        "user_id": 7,
        "venue": "paper",
        "symbol": "BTC/USDT",
        "trade_type": TradeType.SPOT,
        "side": Side.BUY,
        "qty": Decimal("0.001"),
        "price": Decimal("65000.5"),
        "status": status,
        "version": version,
    }
    return TradeRow(**(fields | kw))


def position(pid: str, *, version: int = 1, qty: str = "1") -> PositionRow:
    return PositionRow(
        position_id=pid,
        user_id=7,
        venue="paper",
        symbol="ETH/USDT:USDT",
        trade_type=TradeType.FUTURES,
        side=PositionSide.LONG,
        qty=Decimal(qty),
        entry_price=Decimal("3000"),
        leverage=3,
        margin_usdt=Decimal("1000"),
        status=PositionStatus.OPEN,
        opened_at=datetime.now(UTC),
        version=version,
    )


def uid() -> str:
    return uuid.uuid4().hex[:12]


# The timings these tests were written against (the actor's own defaults before it took its config whole): a
# group commit fails after 1 s, not engine.config's 5 s, so the outage tests see durable=False soon.
_TEST_PERSISTENCE = msgspec.structs.replace(PersistenceConfig(), durable_timeout_ms=1000.0)
_TEST_DATABASE = msgspec.structs.replace(DatabaseConfig(), pool_max_size=4)
_ACTOR_ARGS = {"on_backlog", "write_method", "retry_initial_ms", "retry_max_ms", "stop_flush_timeout_s"}


def start_persistence(io_loop: IoLoop, *, dsn: str, **kw: Any) -> pykka.ActorRef[PersistenceActor]:
    """A persistence actor on ``_TEST_PERSISTENCE``, with the test's deviations (config fields or actor args)."""
    args = {k: v for k, v in kw.items() if k in _ACTOR_ARGS}
    config = msgspec.structs.replace(_TEST_PERSISTENCE, **{k: v for k, v in kw.items() if k not in _ACTOR_ARGS})
    return PersistenceActor.start(
        io_loop=io_loop, dsn=dsn, config=config, database=_TEST_DATABASE, clock=SYSTEM_CLOCK, **args
    )


@pytest.fixture
def start_actor(io_loop: IoLoop) -> Iterator[Callable[..., pykka.ActorProxy[PersistenceActor]]]:
    refs: list[pykka.ActorRef[PersistenceActor]] = []

    def start(**kw: Any) -> pykka.ActorProxy[PersistenceActor]:
        ref = start_persistence(io_loop, **kw)
        refs.append(ref)
        return ref.proxy()

    yield start
    for ref in refs:
        ref.stop()


def insert_signal(dsn: str) -> int:
    value = fetchval(
        dsn,
        "INSERT INTO whale_signals (external_id, whale_id, symbol, side, action, trade_type, price,"
        " size_usdt,"
        " detected_at) VALUES ($1, 1, 'BTC/USDT', 'buy', 'open', 'spot', 100, 1000, now()) RETURNING id",
        f"ext-{uid()}",
    )
    assert isinstance(value, int)
    return value


# -- durable lane --------------------------------------------------------------------------------------------


def test_group_commit_many_threads(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    actor = start_actor(dsn=pg_dsn, durable_window_ms=20, durable_max_rows=500)
    ref = actor.actor_ref
    replies = Replies()
    prefix = f"gc{uid()}"
    threads_n, per_thread = 20, 100

    def send(t: int) -> None:
        for i in range(per_thread):
            ref.tell(PersistIntent(row=trade(f"{prefix}-{t}-{i}"), reply_to=replies))

    threads = [threading.Thread(target=send, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acks = replies.wait(threads_n * per_thread)
    # The actor answers this after everything it had to do for the groups already answered: a duplicate
    # answer to any of them would be in by now.
    assert actor.flush().get(timeout=60)

    counts = collections.Counter(a.client_order_id for a in replies.acks)
    assert len(counts) == 2000 and set(counts.values()) == {1}  # each requester answered exactly once
    assert all(a.durable for a in acks)
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1", prefix + "%") == 2000
    # Rows committed by one transaction share its xmin: the number of distinct xmins is the commit count.
    commits = fetchval(
        pg_dsn, "SELECT count(DISTINCT xmin::text) FROM trades WHERE client_order_id LIKE $1", prefix + "%"
    )
    stats = actor.stats().get()
    assert commits == stats["durable_commits"]
    assert commits <= 200, commits  # grouped: far fewer transactions than intents
    assert stats["durable_pending"] == 0


class Follower(pykka.ThreadingActor):
    """Sends intents with itself as ``reply_to``, like a real follower."""

    def __init__(self, persistence: pykka.ActorRef[Any], prefix: str) -> None:
        super().__init__()
        self.persistence, self.prefix = persistence, prefix
        self.acks: list[IntentAck] = []

    def send(self, n: int) -> None:
        for i in range(n):
            self.persistence.tell(PersistIntent(row=trade(f"{self.prefix}-{i}"), reply_to=self.actor_ref))

    def on_receive(self, message: Any) -> None:
        if isinstance(message, IntentAck):
            self.acks.append(message)

    def ack_count(self) -> int:
        return len(self.acks)


def test_acks_reach_actor_refs_and_a_replayed_intent_is_a_duplicate(
    pg_dsn: str, start_actor: Callable[..., Any]
) -> None:
    actor = start_actor(dsn=pg_dsn)
    prefix = f"fa{uid()}"
    followers = [Follower.start(actor.actor_ref, f"{prefix}{n}").proxy() for n in range(10)]
    try:
        for f in followers:
            f.send(20)
        wait_for(lambda: all(f.ack_count().get() == 20 for f in followers))
        # The same intents again (a replay: the durable lane never retries and followers never resend, so an
        # existing row means this order was decided before): answered duplicate, not durable, row untouched.
        followers[0].send(20)
        wait_for(lambda: followers[0].ack_count().get() == 40)
        first, again = followers[0].acks.get()[:20], followers[0].acks.get()[20:]
        assert all(a.durable and not a.duplicate for a in first)
        assert all(a.duplicate and not a.durable for a in again)
    finally:
        for f in followers:
            f.actor_ref.stop()
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1", prefix + "%") == 200


def test_intent_does_not_overwrite_newer_state(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    actor = start_actor(dsn=pg_dsn)
    cid = f"in{uid()}"
    actor.actor_ref.tell(PersistRows(rows=(trade(cid, version=2, status=TradeStatus.FILLED),)))
    assert actor.flush().get()
    replies = Replies()
    actor.actor_ref.tell(PersistIntent(row=trade(cid), reply_to=replies))
    ack = replies.wait(1)[0]
    assert ack.duplicate and not ack.durable  # acting on it again could send a second order
    row = fetch(pg_dsn, "SELECT status, version FROM trades WHERE client_order_id = $1", cid)[0]
    assert (row["status"], row["version"]) == ("filled", 2)


# -- batched lane --------------------------------------------------------------------------------------------


def _state(dsn: str, tag: str) -> list[Any]:
    queries = [
        "SELECT * FROM trades WHERE client_order_id LIKE $1 ORDER BY client_order_id",
        "SELECT * FROM positions WHERE position_id LIKE $1 ORDER BY position_id",
        "SELECT * FROM balances WHERE venue LIKE $1 ORDER BY asset",
        "SELECT * FROM domain_events WHERE event_id LIKE $1 ORDER BY event_id",
        "SELECT * FROM portfolio_snapshots WHERE user_id = 424242 ORDER BY taken_at",
    ]
    skip = {"updated_at", "created_at"}
    out = []
    for q in queries:
        for r in fetch(dsn, q, tag + "%") if "$1" in q else fetch(dsn, q):
            out.append({k: v for k, v in dict(r).items() if k not in skip})
    return out


def test_batched_lane_is_idempotent_and_never_regresses(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    actor = start_actor(dsn=pg_dsn, flush_max_rows=7)  # several batches per send
    tag = f"b{uid()}"
    taken = datetime(2026, 1, 1, tzinfo=UTC)
    rows: list[Any] = [trade(f"{tag}-t{i}", version=2, status=TradeStatus.FILLED) for i in range(20)]
    rows += [position(f"{tag}-p{i}", version=3) for i in range(5)]
    rows += [
        BalanceRow(user_id=7, venue=tag, asset=f"A{i}", free=Decimal(10), reserved=Decimal(1), version=2)
        for i in range(3)
    ]
    rows += [
        DomainEventRow(event_id=f"{tag}-e{i}", event_type="trade.filled", payload={"qty": Decimal("0.1")})
        for i in range(3)
    ]
    rows += [
        SnapshotRow(
            user_id=424242,
            taken_at=taken,
            equity_usdt=Decimal(1),
            free_usdt=Decimal(1),
            reserved_usdt=Decimal(0),
            unrealized_pnl_usdt=Decimal(0),
            realized_pnl_usdt=Decimal(0),
            open_positions=0,
            trades_today=1,
        )
    ]
    ref = actor.actor_ref
    ref.tell(PersistRows(rows=tuple(rows)))
    assert actor.flush().get()
    first = _state(pg_dsn, tag)
    assert len(first) == 32

    ref.tell(PersistRows(rows=tuple(rows)))  # the same batch again (a retry after an unknown outcome)
    assert actor.flush().get()
    assert _state(pg_dsn, tag) == first

    # Older versions after newer ones: ignored.
    ref.tell(
        PersistRows(
            rows=(
                trade(f"{tag}-t0", version=1, status=TradeStatus.PENDING),
                position(f"{tag}-p0", version=2, qty="9"),
            )
        )
    )
    assert actor.flush().get()
    assert _state(pg_dsn, tag) == first

    # Several versions of one key in one batch collapse to the newest, whatever their order.
    ref.tell(
        PersistRows(
            rows=(
                position(f"{tag}-p1", version=5, qty="5"),
                position(f"{tag}-p1", version=4, qty="4"),
                trade(f"{tag}-t1", version=3, status=TradeStatus.CANCELLED),
                trade(f"{tag}-t1", version=3, status=TradeStatus.FAILED),
            )
        )
    )
    assert actor.flush().get()
    p1 = fetch(pg_dsn, "SELECT qty, version FROM positions WHERE position_id = $1", f"{tag}-p1")[0]
    assert (p1["qty"], p1["version"]) == (Decimal(5), 5)
    t1 = fetch(pg_dsn, "SELECT status FROM trades WHERE client_order_id = $1", f"{tag}-t1")[0]
    assert t1["status"] == "failed"  # same version: the later one wins
    assert actor.stats().get()["queue_depth"] == 0


def test_signal_status_moves_forward_only(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    actor = start_actor(dsn=pg_dsn)
    sid = insert_signal(pg_dsn)
    done = SignalStatusRow(
        signal_id=sid, status=SignalStatus.PROCESSED, copied=3, skipped=1, skip_reasons={"paused": 1}
    )
    actor.actor_ref.tell(PersistRows(rows=(done,)))
    assert actor.flush().get()
    actor.actor_ref.tell(PersistRows(rows=(SignalStatusRow(signal_id=sid, status=SignalStatus.PROCESSING),)))
    assert actor.flush().get()
    row = fetch(pg_dsn, "SELECT * FROM whale_signals WHERE id = $1", sid)[0]
    assert (row["status"], row["copied"], row["skip_reasons"]) == ("processed", 3, {"paused": 1})
    assert row["processed_at"] is not None and row["claimed_at"] is not None


def test_stop_flushes_everything(pg_dsn: str, io_loop: IoLoop) -> None:
    tag = f"s{uid()}"
    ref = start_persistence(io_loop, dsn=pg_dsn, flush_interval_ms=60_000)
    ref.tell(PersistRows(rows=tuple(trade(f"{tag}-{i}") for i in range(300))))
    ref.stop()
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1", tag + "%") == 300


# -- poison rows ---------------------------------------------------------------------------------------------


def test_poison_rows_bisected_to_dead_letters(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    actor = start_actor(dsn=pg_dsn)
    tag = f"x{uid()}"
    rows: list[Any] = [trade(f"{tag}-{i}") for i in range(100)]
    rows[17] = trade(f"{tag}-17", status="bogus")  # violates the status CHECK
    rows[60] = trade(f"{tag}-60", qty=Decimal(-1))  # violates qty >= 0
    rows.append(BalanceRow(user_id=7, venue=tag, asset="USDT", free=Decimal(-5), reserved=Decimal(0)))
    with capture_logs() as logs:
        actor.actor_ref.tell(PersistRows(rows=tuple(rows)))
        assert actor.flush().get()
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1", tag + "%") == 98
    letters = fetch(pg_dsn, "SELECT kind, payload, error FROM dead_letters WHERE payload::text LIKE $1", f"%{tag}%")
    assert sorted(r["kind"] for r in letters) == ["BalanceRow", "TradeRow", "TradeRow"]
    assert all("23514" in r["error"] for r in letters)  # check_violation
    assert {r["payload"].get("client_order_id") for r in letters} >= {f"{tag}-17", f"{tag}-60"}
    assert actor.stats().get()["dead_letters"] == 3
    assert [e["event"] for e in logs].count("persistence.dead_letter") == 3

    # The same poison again: written once more to nothing (dead letters are idempotent too).
    actor.actor_ref.tell(PersistRows(rows=(rows[17],)))
    assert actor.flush().get()
    assert fetchval(pg_dsn, "SELECT count(*) FROM dead_letters WHERE payload::text LIKE $1", f"%{tag}-17%") == 1

    # In the durable lane the poison intent alone is refused.
    replies = Replies()
    for i in range(9):
        actor.actor_ref.tell(PersistIntent(row=trade(f"{tag}-i{i}"), reply_to=replies))
    actor.actor_ref.tell(PersistIntent(row=trade(f"{tag}-ibad", status="bogus"), reply_to=replies))
    acks = {a.client_order_id: a for a in replies.wait(10)}
    assert not acks[f"{tag}-ibad"].durable and acks[f"{tag}-ibad"].error
    assert all(a.durable for c, a in acks.items() if c != f"{tag}-ibad")


def test_a_nul_character_in_a_row_is_dead_lettered_and_the_lane_goes_on(
    pg_dsn: str, start_actor: Callable[..., Any]
) -> None:
    """A venue's error text with a NUL in it: PostgreSQL text and jsonb refuse U+0000, so the trade row is
    bisected out, and its dead letter must still be storable (a failed dead-letter write failed the batch,
    which was then retried forever and every later batch with it)."""
    actor = start_actor(dsn=pg_dsn)
    tag = f"n{uid()}"
    rows = [trade(f"{tag}-{i}") for i in range(10)]
    rows[3] = msgspec.structs.replace(rows[3], error="venue said \x00 nothing")
    actor.actor_ref.tell(PersistRows(rows=tuple(rows)))
    assert actor.flush(20).get()
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1", tag + "%") == 9
    letter = fetch(pg_dsn, "SELECT payload, error FROM dead_letters WHERE payload::text LIKE $1", f"%{tag}-3%")
    assert len(letter) == 1 and letter[0]["payload"]["error"] == "venue said \\x00 nothing"
    actor.actor_ref.tell(PersistRows(rows=(trade(f"{tag}-after"),)))  # the lane is not stuck
    assert actor.flush(20).get()
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id = $1", f"{tag}-after") == 1


# -- outages -------------------------------------------------------------------------------------------------


def test_connection_cut_mid_batch_loses_nothing(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    proxy = TcpProxy.for_dsn(pg_dsn)
    try:
        backlog: list[bool] = []
        actor = start_actor(
            dsn=proxy.dsn(pg_dsn),
            retry_initial_ms=20,
            retry_max_ms=200,
            high_water_rows=1000,
            on_backlog=backlog.append,
        )
        tag = f"c{uid()}"
        ref = actor.actor_ref
        ref.tell(PersistRows(rows=(trade(f"{tag}-warm"),)))
        assert actor.flush().get()

        with capture_logs() as logs:
            proxy.cut_after(50_000)  # well inside the 5,000-row COPY below
            ref.tell(PersistRows(rows=tuple(trade(f"{tag}-{i}", version=2) for i in range(5000))))
            wait_for(lambda: not actor.stats().get()["db_reachable"])

            replies = Replies()  # while down, intents fail fast: no order may be sent
            for i in range(5):
                ref.tell(PersistIntent(row=trade(f"{tag}-down{i}"), reply_to=replies))
            acks = replies.wait(5)
            assert not any(a.durable for a in acks) and all(a.error for a in acks)
            ref.tell(PersistRows(rows=tuple(trade(f"{tag}-late{i}") for i in range(100))))

            proxy.resume()
            assert actor.flush(timeout_s=60).get()
        stats = actor.stats().get()
        assert stats["db_reachable"] and stats["queue_depth"] == 0 and stats["retries"] >= 1
        events = [e["event"] for e in logs]
        assert events.count("database.unreachable") == 1 and events.count("database.recovered") == 1
        assert events.count("backlog.high_water") == 1 and events.count("backlog.recovered") == 1
        assert backlog == [True, False]  # the router was told to hold signals, then to go on
        n = fetchval(
            pg_dsn,
            "SELECT count(*) FROM trades WHERE client_order_id LIKE $1 AND client_order_id NOT LIKE $2",
            tag + "%",
            tag + "-down%",
        )
        assert n == 1 + 5000 + 100
        assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1", tag + "-down%") == 0
    finally:
        proxy.close()


def test_server_stopped_and_restarted_loses_nothing(pg_data_dir: Path, start_actor: Callable[..., Any]) -> None:
    server = EmbeddedPostgres(pg_data_dir, durable=False)
    server_dsn = server.start()
    try:
        dsn = asyncio.run(_fresh_db(server_dsn))
        proxy = TcpProxy.for_dsn(dsn)  # keeps the actor's DSN valid even if the restart changes the port
        actor = start_actor(dsn=proxy.dsn(dsn), retry_initial_ms=20, retry_max_ms=200)
        ref = actor.actor_ref
        ref.tell(PersistRows(rows=tuple(trade(f"r-{i}") for i in range(100))))
        assert actor.flush().get()

        server.stop()
        ref.tell(PersistRows(rows=tuple(trade(f"r-{i}", version=2, status=TradeStatus.FILLED) for i in range(1000))))
        wait_for(lambda: not actor.stats().get()["db_reachable"])
        replies = Replies()
        ref.tell(PersistIntent(row=trade("r-intent"), reply_to=replies))
        assert replies.wait(1)[0].durable is False

        new_dsn = server.start()
        proxy.target = TcpProxy.for_dsn(new_dsn).target
        assert actor.flush(timeout_s=60).get()
        assert fetchval(dsn, "SELECT count(*) FROM trades WHERE status = 'filled' AND version = 2") == 1000
        proxy.close()
    finally:
        server.stop()


async def _fresh_db(server_dsn: str) -> str:
    dsn = await create_database(server_dsn, "engine")
    conn = await connect(dsn)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
    return dsn


def test_stats_shape(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    stats = start_actor(dsn=pg_dsn).stats().get()
    assert {
        "queue_depth",
        "durable_pending",
        "rows_written",
        "flushes",
        "last_flush_ms",
        "avg_flush_ms",
        "dead_letters",
        "db_reachable",
    } <= set(stats)


def test_remainder_after_a_size_triggered_batch_is_flushed(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    # One message larger than flush_max_rows starts a batch at once; the remainder must still be written within
    # the flush interval even though no further rows ever arrive (it used to wait forever: a fan-out's tail of
    # fills stayed SUBMITTED in the table while the engine sat idle).
    actor = start_actor(dsn=pg_dsn, flush_max_rows=100, flush_interval_ms=20)
    tag = f"r{uid()}"
    actor.actor_ref.tell(PersistRows(rows=tuple(trade(f"{tag}-{i}") for i in range(250))))
    wait_for(
        lambda: fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1", tag + "-%") == 250,
        timeout_s=30,
    )
    assert actor.stats().get()["queue_depth"] == 0


# -- the JSON writer and batches in flight --------------------------------------------------------------------


def test_insert_only_events_dead_letter_a_bad_row(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    # domain_events are facts (INSERT … ON CONFLICT DO NOTHING, no staging): a row the schema rejects and a
    # payload JSON cannot carry are bisected out; the rest of the batch is written, and the lane goes on.
    actor = start_actor(dsn=pg_dsn)
    tag = f"ev{uid()}"
    rows: list[Any] = [
        DomainEventRow(event_id=f"{tag}-{i}", event_type="trade.filled", payload={"qty": Decimal("0.1")})
        for i in range(50)
    ]
    rows[10] = DomainEventRow(event_id=f"{tag}-10", event_type=None, payload={})  # type: ignore[arg-type]
    rows[30] = DomainEventRow(event_id=f"{tag}-30", event_type="trade.filled", payload={"x": object()})
    actor.actor_ref.tell(PersistRows(rows=tuple(rows)))
    assert actor.flush().get()
    assert fetchval(pg_dsn, "SELECT count(*) FROM domain_events WHERE event_id LIKE $1", tag + "-%") == 48
    letters = fetch(pg_dsn, "SELECT payload, error FROM dead_letters WHERE payload->>'event_id' LIKE $1", tag + "%")
    assert sorted(r["payload"]["event_id"] for r in letters) == [f"{tag}-10", f"{tag}-30"]
    assert any("23502" in r["error"] for r in letters)  # not_null_violation
    assert any("TypeError" in r["error"] for r in letters)  # not JSON
    assert fetch(pg_dsn, "SELECT payload FROM domain_events WHERE event_id = $1", f"{tag}-0")[0]["payload"] == {
        "qty": "0.1"
    }

    # A timeless fact gets the time it is stored; the same facts again change nothing.
    actor.actor_ref.tell(PersistRows(rows=(*rows[:5], DomainEventRow(event_id=f"{tag}-t", event_type="x", payload={}))))
    assert actor.flush().get()
    assert fetchval(pg_dsn, "SELECT occurred_at IS NOT NULL FROM domain_events WHERE event_id = $1", f"{tag}-t")
    assert fetchval(pg_dsn, "SELECT count(*) FROM domain_events WHERE event_id LIKE $1", tag + "-%") == 49
    assert actor.stats().get()["dead_letters"] == 2


def waiting_in_transaction(dsn: str) -> bool:
    """Whether a session has written to ``trades`` and sits in its open transaction (the batch's hook waits)."""
    value = fetchval(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'idle in transaction' AND query ILIKE '%trades%'",
    )
    return bool(value)


def test_a_batch_commits_only_after_the_one_before(pg_dsn: str, io_loop: IoLoop) -> None:
    writer = PersistenceIo(dsn=pg_dsn, pool_max_size=3, write_method="json", durable_timeout_s=5, clock=SYSTEM_CLOCK)
    tag = f"o{uid()}"

    def count(part: str) -> int:
        value = fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1", f"{tag}-{part}-%")
        assert isinstance(value, int)
        return value

    try:
        for part, outcome in (("a", None), ("b", RuntimeError("connection cut"))):
            previous: concurrent.futures.Future[BatchDone] = concurrent.futures.Future()
            rows = [trade(f"{tag}-{part}-{i}") for i in range(20)]
            future = io_loop.submit(writer.write_batch(1, rows, previous))
            wait_for(lambda: waiting_in_transaction(pg_dsn), message="the batch written, waiting to commit")
            assert not future.done() and count(part) == 0  # written, waiting inside its transaction
            previous.set_result(BatchDone(0, 0, error=outcome))
            done = future.result(10)
            if outcome is None:
                assert done.error is None and count(part) == 20
            else:
                assert isinstance(done.error, PreviousBatchFailed) and count(part) == 0  # rolled back
    finally:
        io_loop.run(writer.close(), timeout_s=10)


def test_batches_in_flight_keep_the_newest_version(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    # Every message is a batch; consecutive batches share keys (so they must not run at once) or not (so they
    # may). Whatever ran concurrently, each key ends at its newest version, and on a tie the later row wins.
    actor = start_actor(dsn=pg_dsn, flush_max_rows=10, batches_in_flight=2)
    tag = f"p{uid()}"
    ref = actor.actor_ref
    statuses = [TradeStatus.SUBMITTED, TradeStatus.FILLED]
    for v in range(1, 41):
        shared = tuple(trade(f"{tag}-k{k}", version=v, status=statuses[v % 2]) for k in range(3))
        fresh = tuple(trade(f"{tag}-n{v}-{i}") for i in range(7))
        rows = shared + fresh if v % 3 else (*fresh, position(f"{tag}-p", version=v))
        ref.tell(PersistRows(rows=rows))
    ref.tell(PersistRows(rows=(trade(f"{tag}-k0", version=40, status=TradeStatus.CANCELLED),)))  # a tie, later
    assert actor.flush().get()
    got = {
        r["client_order_id"]: (r["version"], r["status"])
        for r in fetch(
            pg_dsn, "SELECT client_order_id, version, status FROM trades WHERE client_order_id LIKE $1", f"{tag}-k%"
        )
    }
    assert got == {f"{tag}-k0": (40, "cancelled"), f"{tag}-k1": (40, "submitted"), f"{tag}-k2": (40, "submitted")}
    assert fetchval(pg_dsn, "SELECT version FROM positions WHERE position_id = $1", f"{tag}-p") == 39
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1", f"{tag}-n%") == 280
    stats = actor.stats().get()
    assert stats["queue_depth"] == 0 and stats["batches_in_flight"] == 0


def test_connection_cut_with_batches_in_flight_loses_nothing(pg_dsn: str, start_actor: Callable[..., Any]) -> None:
    proxy = TcpProxy.for_dsn(pg_dsn)
    try:
        actor = start_actor(
            dsn=proxy.dsn(pg_dsn), flush_max_rows=500, batches_in_flight=3, retry_initial_ms=20, retry_max_ms=200
        )
        tag = f"q{uid()}"
        ref = actor.actor_ref
        ref.tell(PersistRows(rows=(trade(f"{tag}-warm"),)))
        assert actor.flush().get()
        proxy.cut_after(200_000)
        for v in (1, 2):  # version 2 of every row lands in later batches than version 1
            ref.tell(PersistRows(rows=tuple(trade(f"{tag}-{i}", version=v) for i in range(3000))))
        wait_for(lambda: not actor.stats().get()["db_reachable"])
        proxy.resume()
        assert actor.flush(timeout_s=60).get()
        assert actor.stats().get()["retries"] >= 1
        assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1", f"{tag}-%") == 3001
        assert (
            fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE client_order_id LIKE $1 AND version = 2", f"{tag}-%")
            == 3000
        )
    finally:
        proxy.close()


# -- writes that need an answer (run_write) -------------------------------------------------------------------


def test_a_write_that_outlasts_the_timeout_is_waited_for_not_lost(
    pg_dsn: str, start_actor: Callable[..., pykka.ActorProxy[PersistenceActor]], io_loop: IoLoop
) -> None:
    """A claim that runs past ``run_write``'s timeout still commits. Giving up on it lost the claimed rows:
    'processing', and nobody routing them until the next restart. Once started, its result is waited for."""
    actor = start_actor(dsn=pg_dsn)
    external_id = f"slow-{uid()}"

    async def slow_insert(conn: Any) -> int:
        await asyncio.sleep(0.5)  # the timeout below is 0.05 s
        signal_id: int = await conn.fetchval(
            "INSERT INTO whale_signals (external_id, whale_id, symbol, side, action, trade_type, price, size_usdt,"
            " detected_at) VALUES ($1, 1, 'BTC/USDT', 'buy', 'open', 'spot', 100, 1000, now()) RETURNING id",
            external_id,
        )
        return signal_id

    signal_id = io_loop.run(run_write(actor.actor_ref, slow_insert, timeout_s=0.05), 30)
    assert fetchval(pg_dsn, "SELECT id FROM whale_signals WHERE external_id = $1", external_id) == signal_id
