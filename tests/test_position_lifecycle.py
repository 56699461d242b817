"""Position protection end to end: SL / TP, gaps, stale prices, liquidation, manual closes, restart, breaker.

Real actors on the test PostgreSQL and a paper venue the test owns (no slippage: fills happen exactly at the
mark). Prices move with ``PaperVenue.set_mark`` and reach the followers through the engine's own ``PriceFeed``:
the feed's poll interval is set far beyond a test's length, so a test drives each tick itself (``tick``).

Every expected figure is computed by hand next to the numbers. Markets are made up for this module (one base
per test, both spot and USDT futures, all at 100 USDT): futures taker fee 0.05 %, spot 0.1 %, maintenance
margin rate 0.5 %. Sizing is ``fixed_usdt`` = 100 USDT of margin, so a leverage-5 futures copy at 100 buys 5
units (notional 500, entry fee 0.25) and a spot copy buys 1 unit (entry fee 0.1).

The module engine shares one database; the restart and breaker tests start their own engines on their own
databases (two engines on one database would both run every follower).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.database import apply_schema, connect, create_database
from adapters.paper import PaperVenue
from engine import metrics
from engine.events import DomainEvent, PositionClosed, PositionLiquidated
from engine.ids import client_order_id, close_attempt_id, close_order_id, position_id_for
from engine.messages import MarketInfo, OrderRequest, PositionSide, PriceUpdate, TradeType, VenueOrder
from engine.positions import Position
from node.price_feed import PriceFeed
from node.system import EngineSystem
from tests.kit import (
    GENEROUS_S,
    TcpProxy,
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

D = Decimal
START_USDT = D(10_000)  # paper_starting_usdt: a follower without a balances row starts with this
FAR_MS = "600000"  # the feed never ticks by itself during a test

BASES = (
    "SLL", "SLS", "TPL", "TPS", "SPL", "GAP", "STL", "LQL", "LQS", "MAN", "MAA", "MAB", "RST", "BRK", "BRE", "LQR",
    "PCL", "PCR", "PCA", "PCD", "XOL", "XEX", "XSL", "HLD", "HLR", "HRS",
)  # fmt: skip


def markets(bases: tuple[str, ...] = BASES) -> list[MarketInfo]:
    out: list[MarketInfo] = []
    for base in bases:
        common: dict[str, Any] = {"base": base, "quote": "USDT", "qty_step": D("0.001"), "price_tick": D("0.01")}
        common["min_qty"] = D("0.001")
        common["min_notional"] = D(5)
        out.append(MarketInfo(symbol=f"{base}/USDT", trade_type=TradeType.SPOT, taker_fee_rate=D("0.001"), **common))
        out.append(
            MarketInfo(
                symbol=f"{base}/USDT:USDT",
                trade_type=TradeType.FUTURES,
                max_leverage=50,
                maintenance_margin_rate=D("0.005"),
                taker_fee_rate=D("0.0005"),
                **common,
            )
        )
    return out


class GatedVenue(PaperVenue):
    """The paper venue, where a test can hold the entries (orders that are not reduce-only) on one symbol at the
    venue until it opens the gate: an entry still at the venue, for as long as the test needs, no sleep. Held
    at the door (nothing executed yet), or ``after_fill``: executed, its answer held (lost if the engine stops)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gates: dict[str, tuple[threading.Event, bool]] = {}
        self.arrived: dict[str, threading.Event] = {}

    def gate(self, symbol: str, *, after_fill: bool = False) -> threading.Event:
        self.arrived[symbol] = threading.Event()
        gate = threading.Event()
        self.gates[symbol] = (gate, after_fill)
        return gate

    async def create_order(self, request: OrderRequest) -> VenueOrder:
        gate, after_fill = self.gates.get(request.symbol, (None, False))
        if gate is None or request.reduce_only:
            return await super().create_order(request)
        if after_fill:
            order = await super().create_order(request)
        self.arrived[request.symbol].set()
        await asyncio.to_thread(gate.wait, GENEROUS_S)
        return order if after_fill else await super().create_order(request)


def new_venue() -> GatedVenue:
    return GatedVenue(markets=markets(), initial_marks={b: D(100) for b in BASES}, latency_ms=0)


def engine_env(**venue: str) -> dict[str, Any]:  # Any: mypy lets a ** of dict[str, str] bind running_engine's venues
    settings = {"price_poll_interval_ms": FAR_MS, "price_stale_after_ms": FAR_MS, **venue}
    inline = ", ".join(f"{k} = {v}" for k, v in settings.items())
    return {"ENGINE_VENUES": f'[{{name = "paper", {inline}}}]', "ENGINE_PERSISTENCE__FLUSH_INTERVAL_MS": "10"}


class Events:
    """Every domain event the engine publishes (subscribers are called from pool workers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[DomainEvent] = []

    def __call__(self, event: DomainEvent) -> None:
        with self._lock:
            self.items.append(event)

    def of(self, kind: type[DomainEvent], position_id: str) -> list[Any]:
        with self._lock:
            return [e for e in self.items if isinstance(e, kind) and getattr(e, "position_id", None) == position_id]


@pytest.fixture(scope="module")
def venue() -> GatedVenue:
    return new_venue()


@pytest.fixture(scope="module")
def events() -> Events:
    return Events()


@pytest.fixture(scope="module")
def engine(
    pg_dsn: str, tmp_path_factory: pytest.TempPathFactory, venue: PaperVenue, events: Events
) -> Iterator[EngineSystem]:
    with running_engine(pg_dsn, tmp_path_factory.mktemp("lifecycle"), venue=venue, **engine_env()) as system:
        system.subscribe(events)
        yield system


@pytest.fixture
def private_dsn(pg_server: str) -> str:
    """A database of its own, for a test that starts (and restarts) its own engine."""

    async def make() -> str:
        dsn = await create_database(pg_server, f"t_lifecycle_{uuid.uuid4().hex[:10]}")
        conn = await connect(dsn)
        try:
            await apply_schema(conn)
        finally:
            await conn.close()
        return dsn

    return asyncio.run(make())


# ---- helpers -----------------------------------------------------------------------------------------------


def feed_of(system: EngineSystem) -> PriceFeed:
    return next(s for s in system.services if isinstance(s, PriceFeed))


def tick(system: EngineSystem) -> int:
    """One price-feed round, as the feed's timer runs it: holdings from the positions table, then the tick."""
    system.persistence.proxy().flush(30).get(timeout=60)  # every position row queued so far is written
    feed = feed_of(system)
    system.io.run(feed._refresh_holdings(), 30)
    return system.io.run(feed.tick(), 30)


def follow(user_ids: list[int], whale_id: int, dsn: str, system: EngineSystem | None = None, **settings: Any) -> None:
    """Users following ``whale_id``; a running ``system`` picks them up at once (admin ``reload``)."""
    seed_whale(dsn, whale_id)
    cols = {"max_leverage": 20, "max_slippage_pct": D(5), **settings}
    seed_followers(dsn, whale_id=whale_id, user_ids=user_ids, user={"max_leverage": 20}, follow=cols)
    if system is not None and system.supervisor is not None:
        system.io.run(system.supervisor.reload(user_ids), 30)


def open_copy(
    system: EngineSystem, dsn: str, *, whale_id: int, symbol: str, side: str = "buy", leverage: int = 5
) -> int:
    """A whale opens ``symbol``; returns the signal id once every follower has its position open in the DB."""
    signal_id = insert_signal(dsn, whale_id=whale_id, symbol=symbol, side=side, price=100, leverage=leverage)
    row = wait_signal_done(dsn, signal_id)
    assert row["status"] == "processed" and row["copied"] >= 1, row
    settle(system)
    return signal_id


def position(dsn: str, position_id: str) -> dict[str, Any]:
    rows = fetch(dsn, "SELECT * FROM positions WHERE position_id = $1", position_id)
    return dict(rows[0]) if rows else {}


def wait_position(dsn: str, position_id: str, status: str) -> dict[str, Any]:
    return wait_for(lambda: (row := position(dsn, position_id)) and row["status"] == status and row)


def usdt(dsn: str, user_id: int) -> tuple[Decimal, Decimal]:
    rows = fetch(dsn, "SELECT free, reserved FROM balances WHERE user_id = $1 AND asset = 'USDT'", user_id)
    return rows[0]["free"], rows[0]["reserved"]


def ref(system: EngineSystem, user_id: int) -> Any:
    assert system.supervisor is not None
    return system.follower_refs().get(user_id)


def in_flight(system: EngineSystem, user_id: int) -> list[str]:
    described = ref(system, user_id).proxy().describe().get(timeout=30)
    return [o["client_order_id"] for o in described["orders_in_flight"]]


# ---- SL / TP ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "side", "mark", "reason", "realised"),
    [
        # long 5 @ 100, SL 90: close at 89 → (89 - 100) × 5 = -55, fees 0.25 + 5 × 89 × 0.0005 = 0.2225
        ("SLL", "buy", "89", "stop_loss", "-55.4725"),
        # short 5 @ 100, SL 110: close at 111 → (100 - 111) × 5 = -55, fees 0.25 + 0.2775
        ("SLS", "sell", "111", "stop_loss", "-55.5275"),
        # long 5 @ 100, TP 120: close at 121 → +105, fees 0.25 + 0.3025
        ("TPL", "buy", "121", "take_profit", "104.4475"),
        # short 5 @ 100, TP 80: close at 79 → +105, fees 0.25 + 0.1975
        ("TPS", "sell", "79", "take_profit", "104.5525"),
    ],
)
def test_futures_sl_tp_with_leverage(
    engine: EngineSystem,
    pg_dsn: str,
    venue: PaperVenue,
    events: Events,
    base: str,
    side: str,
    mark: str,
    reason: str,
    realised: str,
) -> None:
    whale, user = 100 + BASES.index(base), 1000 + BASES.index(base)
    symbol = f"{base}/USDT:USDT"
    follow([user], whale, pg_dsn, engine, stop_loss_pct=D(10), take_profit_pct=D(20))
    signal_id = open_copy(engine, pg_dsn, whale_id=whale, symbol=symbol, side=side, leverage=5)
    pid = position_id_for(signal_id, user)
    opened = wait_position(pg_dsn, pid, "open")
    long = side == "buy"
    assert (opened["qty"], opened["leverage"], opened["margin_usdt"]) == (D(5), 5, D(100))
    assert opened["stop_loss_price"] == (D(90) if long else D(110))
    assert opened["take_profit_price"] == (D(120) if long else D(80))
    assert opened["liquidation_price"] == (D("80.5") if long else D("119.5"))  # 100 × (1 ∓ 1/5 ± 0.005)

    venue.set_mark(symbol, D(mark))
    assert tick(engine) >= 1

    closed = wait_position(pg_dsn, pid, "closed")
    cid = close_order_id(pid)
    assert closed["close_reason"] == reason
    assert closed["realized_pnl_usdt"] == D(realised)
    assert closed["qty"] == 0 and closed["margin_usdt"] == 0
    assert venue.order_count(cid) == 1 and venue.create_calls(cid) == 1
    (close_trade,) = fetch(pg_dsn, "SELECT * FROM trades WHERE position_id = $1 AND reduce_only", pid)
    assert (close_trade["client_order_id"], close_trade["status"]) == (cid, "filled")
    assert (close_trade["executed_qty"], close_trade["executed_price"]) == (D(5), D(mark))
    settle(engine)
    assert usdt(pg_dsn, user) == (START_USDT + D(realised), D(0))  # flat again: start + everything realised
    assert venue.position_qty(user, symbol) == 0
    (event,) = events.of(PositionClosed, pid)
    assert (event.reason, event.realized_pnl_usdt) == (reason, D(realised))


def test_spot_long_stop_loss(engine: EngineSystem, pg_dsn: str, venue: PaperVenue) -> None:
    whale, user, symbol = 121, 1021, "SPL/USDT"
    follow([user], whale, pg_dsn, engine, stop_loss_pct=D(10), take_profit_pct=D(20))
    signal_id = open_copy(engine, pg_dsn, whale_id=whale, symbol=symbol, leverage=1)
    pid = position_id_for(signal_id, user)
    opened = wait_position(pg_dsn, pid, "open")
    assert (opened["qty"], opened["leverage"], opened["liquidation_price"]) == (D(1), 1, None)
    venue.set_mark(symbol, D(85))
    tick(engine)
    closed = wait_position(pg_dsn, pid, "closed")
    # 1 @ 100 → 85: -15, fees 0.1 (entry) + 0.085 (exit, 0.1 % of 85)
    assert (closed["close_reason"], closed["realized_pnl_usdt"]) == ("stop_loss", D("-15.185"))
    assert venue.order_count(close_order_id(pid)) == 1
    assert venue.balance(user, "SPL") == 0


# ---- gaps -----------------------------------------------------------------------------------------------------


def test_gap_through_sl_then_tp_closes_once(
    engine: EngineSystem, pg_dsn: str, venue: PaperVenue, events: Events
) -> None:
    """The mark gaps far below the SL; while that close is in flight the next ticks cross the TP (and the SL
    again): still one close order, one PositionClosed, reason stop_loss."""
    whale, user, symbol = 122, 1022, "GAP/USDT:USDT"
    follow([user], whale, pg_dsn, engine, stop_loss_pct=D(10), take_profit_pct=D(20))
    signal_id = open_copy(engine, pg_dsn, whale_id=whale, symbol=symbol, leverage=5)
    pid = position_id_for(signal_id, user)
    cid = close_order_id(pid)
    wait_position(pg_dsn, pid, "open")
    venue.inject("latency", client_order_id=cid, delay_ms=3000)  # keep the close in flight for a while

    venue.set_mark(symbol, D(82))  # 100 → 82 in one tick: through the SL at 90 (liquidation is at 80.5)
    tick(engine)
    wait_for(lambda: cid in in_flight(engine, user))
    for mark in (D(130), D(85), D(125)):  # past the TP, past the SL, past the TP
        venue.set_mark(symbol, mark)
        tick(engine)
    assert in_flight(engine, user) == [cid]
    venue.set_mark(symbol, D(82))

    closed = wait_position(pg_dsn, pid, "closed")
    assert closed["close_reason"] == "stop_loss"
    assert venue.order_count(cid) == 1 and venue.create_calls(cid) == 1
    assert fetchval(pg_dsn, "SELECT count(*) FROM trades WHERE position_id = $1 AND reduce_only", pid) == 1
    price = fetchval(pg_dsn, "SELECT executed_price FROM trades WHERE client_order_id = $1", cid)
    # A market order fills at the mark when it reaches the venue: 5 units, fees 0.25 + 5 × price × 0.0005.
    assert closed["realized_pnl_usdt"] == (price - 100) * 5 - D("0.25") - 5 * price * D("0.0005")
    tick(engine)  # nothing left to close
    assert len(events.of(PositionClosed, pid)) == 1
    assert venue.order_count(cid) == 1


# ---- stale prices ------------------------------------------------------------------------------------------


def test_stale_price_takes_no_action(engine: EngineSystem, pg_dsn: str, venue: PaperVenue) -> None:
    whale, user, symbol = 123, 1023, "STL/USDT:USDT"
    follow([user], whale, pg_dsn, engine, stop_loss_pct=D(10), take_profit_pct=D(20))
    signal_id = open_copy(engine, pg_dsn, whale_id=whale, symbol=symbol, leverage=5)
    pid = position_id_for(signal_id, user)
    cid = close_order_id(pid)
    wait_position(pg_dsn, pid, "open")
    follower = ref(engine, user)

    # Beyond the SL, the TP and the liquidation price in turn, each flagged stale: nothing happens.
    for mark in (D(85), D(130), D(70)):
        follower.tell(PriceUpdate(venue="paper", marks={symbol: mark}, stale_symbols=frozenset({symbol})))
    described = follower.proxy().describe().get(timeout=30)  # the mailbox is FIFO: the updates are handled
    (row,) = described["open_positions"]
    assert (row["status"], row["close_reason"]) == ("open", None)
    assert described["orders_in_flight"] == []
    settle(engine)
    assert position(pg_dsn, pid)["status"] == "open"
    assert venue.create_calls(cid) == 0

    # The same price, fresh: the SL acts (so it was the staleness that held it back).
    follower.tell(PriceUpdate(venue="paper", marks={symbol: D(85)}))
    closed = wait_position(pg_dsn, pid, "closed")
    assert closed["close_reason"] == "stop_loss" and venue.order_count(cid) == 1


# ---- liquidation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "side", "mark", "liq"),
    [
        ("LQL", "buy", "90", "90.5"),  # long x10: 100 × (1 - 0.1 + 0.005); gaps through the SL at 95 as well
        ("LQS", "sell", "110", "109.5"),  # short x10: 100 × (1 + 0.1 - 0.005)
    ],
)
def test_liquidation(
    engine: EngineSystem, pg_dsn: str, venue: PaperVenue, events: Events, base: str, side: str, mark: str, liq: str
) -> None:
    whale, user = 100 + BASES.index(base), 1000 + BASES.index(base)
    symbol = f"{base}/USDT:USDT"
    follow([user], whale, pg_dsn, engine, stop_loss_pct=D(5))
    signal_id = open_copy(engine, pg_dsn, whale_id=whale, symbol=symbol, side=side, leverage=10)
    pid = position_id_for(signal_id, user)
    opened = wait_position(pg_dsn, pid, "open")
    # margin 100 × 10 = notional 1000 → 10 units, entry fee 0.5
    assert (opened["qty"], opened["margin_usdt"], opened["liquidation_price"]) == (D(10), D(100), D(liq))
    assert usdt(pg_dsn, user) == (D("9899.5"), D(0))
    held = D(10) if side == "buy" else D(-10)  # the venue's signed quantity
    assert (venue.position_qty(user, symbol), venue.balance(user, "USDT")) == (held, D("9899.5"))

    venue.set_mark(symbol, D(mark))
    tick(engine)
    row = wait_position(pg_dsn, pid, "liquidated")
    # The venue liquidated it too, on the mark the same poll returned: no position there, its margin gone with it.
    assert venue.position_qty(user, symbol) == 0
    assert asyncio.run(venue.fetch_positions(user_id=user, symbols=[symbol])) == []
    assert venue.balance(user, "USDT") == D("9899.5")  # the margin left at entry and never comes back
    assert row["close_reason"] == "liquidation"
    assert row["realized_pnl_usdt"] == D("-100.5")  # the whole margin, plus the entry fee paid earlier
    assert (row["qty"], row["margin_usdt"]) == (0, 0)
    assert venue.create_calls(close_order_id(pid)) == 0  # the venue liquidates; the engine sends no close
    settle(engine)
    assert usdt(pg_dsn, user) == (D("9899.5"), D(0))  # nothing comes back
    (event,) = events.of(PositionLiquidated, pid)
    assert (event.mark_price, event.liquidation_price, event.realized_pnl_usdt) == (D(mark), D(liq), D("-100.5"))
    stored = fetchval(
        pg_dsn,
        "SELECT count(*) FROM domain_events WHERE event_type = 'position_liquidated' AND payload->>'position_id' = $1",
        pid,
    )
    assert stored == 1
    tick(engine)  # a liquidated position is gone from the books: no second liquidation
    assert len(events.of(PositionLiquidated, pid)) == 1


def test_close_refused_by_a_venue_that_liquidated_meanwhile(
    engine: EngineSystem, pg_dsn: str, venue: PaperVenue, events: Events
) -> None:
    """The SL close is in flight when the venue liquidates the position; the mark comes back; the close is then
    refused (nothing to reduce). The follower asks the venue instead of trying again with a new close id on
    every tick: flat there, so the position is booked LIQUIDATED, once, and the books match the venue."""
    whale, user, symbol = 100 + BASES.index("LQR"), 1000 + BASES.index("LQR"), "LQR/USDT:USDT"
    follow([user], whale, pg_dsn, engine, stop_loss_pct=D(5))
    signal_id = open_copy(engine, pg_dsn, whale_id=whale, symbol=symbol, leverage=10)
    pid = position_id_for(signal_id, user)
    cid = close_order_id(pid)
    opened = wait_position(pg_dsn, pid, "open")
    assert (opened["stop_loss_price"], opened["liquidation_price"]) == (D(95), D("90.5"))
    venue.inject("latency", client_order_id=cid, delay_ms=1500)  # the close reaches the venue late

    venue.set_mark(symbol, D(94))  # through the SL (95), not the liquidation (90.5)
    tick(engine)
    wait_for(lambda: cid in in_flight(engine, user))
    venue.set_mark(symbol, D(90))  # the venue liquidates on this poll; the engine waits for its close
    tick(engine)
    assert venue.position_qty(user, symbol) == 0
    venue.set_mark(symbol, D(94))  # back above the liquidation price, still below the SL
    tick(engine)

    row = wait_position(pg_dsn, pid, "liquidated")
    assert fetchval(pg_dsn, "SELECT status FROM trades WHERE client_order_id = $1", cid) == "rejected"
    assert row["realized_pnl_usdt"] == D("-100.5")  # the margin, plus the entry fee
    tick(engine)  # gone from the books: no new close, no second liquidation
    assert venue.create_calls(close_attempt_id(pid, 1)) == 0
    assert len(events.of(PositionLiquidated, pid)) == 1
    settle(engine)
    assert usdt(pg_dsn, user) == (venue.balance(user, "USDT"), D(0))


def test_partly_filled_close_is_followed_by_a_close_of_the_rest(
    engine: EngineSystem, pg_dsn: str, venue: PaperVenue
) -> None:
    """The SL close fills 2 of 5 and the venue expires the rest. That close id is spent: the next tick past the
    SL closes the other 3 under the next attempt id, instead of the spent id again (which left the position
    CLOSING for good, with SL, TP and manual closes all refused)."""
    whale, user, symbol = 100 + BASES.index("PCL"), 1000 + BASES.index("PCL"), "PCL/USDT:USDT"
    follow([user], whale, pg_dsn, engine, stop_loss_pct=D(5))
    signal_id = open_copy(engine, pg_dsn, whale_id=whale, symbol=symbol, leverage=5)
    pid = position_id_for(signal_id, user)
    cid, second = close_order_id(pid), close_attempt_id(pid, 1)
    venue.inject("partial_fill", client_order_id=cid, fill_fraction=D("0.4"))

    venue.set_mark(symbol, D(94))  # through the SL (95)
    tick(engine)
    wait_for(lambda: (row := position(pg_dsn, pid)) and row["qty"] == D(3) and row["status"] == "open")
    tick(engine)  # still past the SL: the rest goes, under a new id
    closed = wait_position(pg_dsn, pid, "closed")
    assert venue.create_calls(cid) == 1 and venue.create_calls(second) == 1
    assert venue.position_qty(user, symbol) == 0
    closes = fetch(pg_dsn, "SELECT client_order_id, status FROM trades WHERE position_id = $1 AND reduce_only", pid)
    statuses = {r["client_order_id"]: r["status"] for r in closes}
    assert statuses == {cid: "partially_filled", second: "filled"}
    # 5 @ 100 → 94: -30; fees 0.25 entry, 2 × 94 × 0.0005 = 0.094 and 3 × 94 × 0.0005 = 0.141 on the way out
    assert closed["realized_pnl_usdt"] == D("-30.485")
    settle(engine)
    assert usdt(pg_dsn, user) == (venue.balance(user, "USDT"), D(0))


def own_case(base: str, dsn: str) -> tuple[PaperVenue, int, int, str]:
    """A venue of its own and one follower (SL 5 %) of a whale of its own on ``base``'s perpetual, for a test
    that starts its own engines on its own database."""
    whale, user = 100 + BASES.index(base), 1000 + BASES.index(base)
    follow([user], whale, dsn, stop_loss_pct=D(5))
    return new_venue(), whale, user, f"{base}/USDT:USDT"


def test_restart_after_a_partly_filled_close_uses_the_next_attempt_id(private_dsn: str, tmp_path: Path) -> None:
    """The engine stops after a close filled in part. The next engine counts that attempt as spent (from the
    trades table) and closes the rest on its first tick past the SL with the next attempt id."""
    venue, whale, user, symbol = own_case("PCR", private_dsn)
    env = engine_env()
    with running_engine(private_dsn, tmp_path / "a", venue=venue, **env) as system:
        signal_id = open_copy(system, private_dsn, whale_id=whale, symbol=symbol, leverage=5)
        pid = position_id_for(signal_id, user)
        venue.inject("partial_fill", client_order_id=close_order_id(pid), fill_fraction=D("0.4"))
        venue.set_mark(symbol, D(94))
        tick(system)
        wait_for(lambda: (row := position(private_dsn, pid)) and row["qty"] == D(3) and row["status"] == "open")

    with running_engine(private_dsn, tmp_path / "b", venue=venue, **env) as system:
        tick(system)
        wait_position(private_dsn, pid, "closed")
        assert venue.create_calls(close_attempt_id(pid, 1)) == 1
        assert venue.position_qty(user, symbol) == 0


def test_restart_reopens_a_close_that_never_became_durable(private_dsn: str, tmp_path: Path) -> None:
    """The batched lane wrote the CLOSING row, and the engine stopped before the close's intent was durable: no
    order went out. The next engine finds the position CLOSING with no close on its way, opens it again, and
    its first tick past the SL closes it (left CLOSING, nothing would ever have closed it)."""
    venue, whale, user, symbol = own_case("PCA", private_dsn)
    env = engine_env()
    with running_engine(private_dsn, tmp_path / "a", venue=venue, **env) as system:
        signal_id = open_copy(system, private_dsn, whale_id=whale, symbol=symbol, leverage=5)
        pid = position_id_for(signal_id, user)
        wait_position(private_dsn, pid, "open")
    closing_sql = "UPDATE positions SET status = 'closing', close_reason = 'stop_loss' WHERE position_id = $1"
    execute(private_dsn, closing_sql, pid)
    venue.set_mark(symbol, D(94))

    with running_engine(private_dsn, tmp_path / "b", venue=venue, **env) as system:
        tick(system)
        closed = wait_position(private_dsn, pid, "closed")
        assert closed["close_reason"] == "stop_loss"
        assert venue.create_calls(close_order_id(pid)) == 1
        assert venue.position_qty(user, symbol) == 0


def test_a_close_that_was_never_durable_spends_its_id(private_dsn: str, tmp_path: Path) -> None:
    """The database is away when the SL close's intent is group-committed: not durable, no order, the trade
    FAILED. That id is spent too: the next tick (database back) closes under the next attempt id at once. Reusing
    it found the FAILED row (a duplicate: no close on that tick), or, had that row still been on its way, let it
    overwrite the new intent of an order that was being sent."""
    venue, whale, user, symbol = own_case("PCD", private_dsn)
    proxy = TcpProxy.for_dsn(private_dsn)
    env = {**engine_env(), "ENGINE_PERSISTENCE__DURABLE_TIMEOUT_MS": "2000"}
    try:
        with running_engine(proxy.dsn(private_dsn), tmp_path, venue=venue, **env) as system:
            signal_id = open_copy(system, private_dsn, whale_id=whale, symbol=symbol, leverage=5)
            pid = position_id_for(signal_id, user)
            tick(system)  # the feed knows the holder
            failed_before = metrics.counters().get("copies.failed", 0)
            proxy.refuse()
            proxy.cut()
            venue.set_mark(symbol, D(94))  # through the SL (95)
            system.io.run(feed_of(system).tick(), 30)  # no holdings read: the database is away
            wait_for(lambda: metrics.counters().get("copies.failed", 0) > failed_before, 30)
            wait_for(lambda: not in_flight(system, user), 30)
            proxy.resume()
            tick(system)  # flushes the FAILED row first, then the next tick past the SL
            wait_position(private_dsn, pid, "closed")
            assert venue.create_calls(close_order_id(pid)) == 0
            assert venue.create_calls(close_attempt_id(pid, 1)) == 1
            status_sql = "SELECT status FROM trades WHERE client_order_id = $1"
            assert fetchval(private_dsn, status_sql, close_order_id(pid)) == "failed"
    finally:
        proxy.close()


def test_close_attempt_ids_are_distinct_and_fit_every_venue() -> None:
    longest = position_id_for(2**64 - 1, 2**64 - 1)
    ids = {close_attempt_id(longest, n) for n in (0, 1, 35, 36, 37, 1295, 1296, 36**4 - 1)}
    assert len(ids) == 8
    assert all(len(cid) <= 32 and cid.isalnum() and cid.islower() for cid in ids)
    with pytest.raises(ValueError, match="close attempt out of range"):
        close_attempt_id(longest, 36**4)


@pytest.mark.parametrize(
    ("side", "entry", "leverage", "mmr", "expected"),
    [
        (PositionSide.LONG, "60000", 20, "0.004", "57240"),  # 60,000 × (1 - 0.05 + 0.004)
        (PositionSide.SHORT, "60000", 20, "0.004", "62760"),  # 60,000 × (1 + 0.05 - 0.004)
        (PositionSide.LONG, "60000", 125, "0.004", "59760"),  # 60,000 × (1 - 0.008 + 0.004)
        (PositionSide.SHORT, "60000", 125, "0.004", "60240"),  # 60,000 × (1 + 0.008 - 0.004)
        (PositionSide.LONG, "3000", 1, "0.005", "15"),  # 3,000 × (1 - 1 + 0.005): x1 long barely liquidates
        (PositionSide.SHORT, "3000", 1, "0.005", "5985"),  # 3,000 × (1 + 1 - 0.005)
        (PositionSide.LONG, "0.6", 3, "0.01", "0.406"),  # 0.6 × (1 - 1/3 + 0.01)
    ],
)
def test_liquidation_price_worked_examples(
    side: PositionSide, entry: str, leverage: int, mmr: str, expected: str
) -> None:
    pos = Position(
        position_id="p0000000000001u1",
        user_id=1,
        venue="paper",
        symbol="BTC/USDT:USDT",
        trade_type=TradeType.FUTURES,
        side=side,
        qty=D(1),
        entry_price=D(entry),
        leverage=leverage,
        margin_usdt=D(entry) / leverage,
        maintenance_margin_rate=D(mmr),
    )
    liq = pos.liquidation_price
    assert liq is not None
    assert abs(liq - D(expected)) < D("1e-20")
    step = D(entry) / 10_000
    beyond = liq - step if side is PositionSide.LONG else liq + step
    before = liq + step if side is PositionSide.LONG else liq - step
    assert pos.check_triggers(liq) == "liquidation"  # touching it is enough
    assert pos.check_triggers(beyond) == "liquidation"
    assert pos.check_triggers(before) is None


# ---- manual closes -----------------------------------------------------------------------------------------


def test_manual_close_and_already_closing(engine: EngineSystem, pg_dsn: str, venue: PaperVenue) -> None:
    whale, user, symbol = 130, 1030, "MAN/USDT:USDT"
    follow([user], whale, pg_dsn, engine, stop_loss_pct=D(10))
    signal_id = open_copy(engine, pg_dsn, whale_id=whale, symbol=symbol, leverage=5)
    pid = position_id_for(signal_id, user)
    cid = close_order_id(pid)
    wait_position(pg_dsn, pid, "open")
    venue.inject("latency", client_order_id=cid, delay_ms=2000)
    venue.set_mark(symbol, D(102))

    proxy = ref(engine, user).proxy()
    first = proxy.close_position(pid).get(timeout=30)
    assert first == {"position_id": pid, "closing": True, "client_order_id": cid, "reason": "manual"}
    second = proxy.close_position(pid).get(timeout=30)
    assert second == {"position_id": pid, "closing": False, "detail": "already closing"}
    venue.set_mark(symbol, D(85))  # past the SL while closing: no second close either
    tick(engine)

    closed = wait_position(pg_dsn, pid, "closed")
    assert closed["close_reason"] == "manual"
    assert venue.order_count(cid) == 1 and venue.create_calls(cid) == 1
    after = proxy.close_position(pid).get(timeout=30)
    assert after == {"position_id": pid, "closing": False, "detail": "no such open position"}


def test_close_all(engine: EngineSystem, pg_dsn: str, venue: PaperVenue) -> None:
    whale, user = 131, 1031
    follow([user], whale, pg_dsn, engine)
    pids = [
        position_id_for(open_copy(engine, pg_dsn, whale_id=whale, symbol=symbol, side=side), user)
        for symbol, side in (("MAA/USDT:USDT", "buy"), ("MAB/USDT:USDT", "sell"), ("MAA/USDT", "buy"))
    ]
    replies = ref(engine, user).proxy().close_all().get(timeout=30)
    assert sorted(r["position_id"] for r in replies) == sorted(pids)
    assert all(r["closing"] and r["reason"] == "manual" for r in replies)
    for pid in pids:
        row = wait_position(pg_dsn, pid, "closed")
        assert row["close_reason"] == "manual"
        # closed at the entry price: only the fees are lost
        assert row["realized_pnl_usdt"] == (D("-0.2") if row["trade_type"] == "spot" else D("-0.5"))
        assert venue.order_count(close_order_id(pid)) == 1
    assert ref(engine, user).proxy().close_all().get(timeout=30) == []


# ---- restart in the middle of a close ------------------------------------------------------------------------


def test_restart_during_close_sends_exactly_one_close(private_dsn: str, tmp_path: Path) -> None:
    """The close reaches the venue and fills, but the answer is lost (UNKNOWN); the engine stops. A new engine
    on the same database and venue resolves it by client order id: one close order, position CLOSED."""
    venue = new_venue()
    whale, user, symbol = 140, 1040, "RST/USDT:USDT"
    follow([user], whale, private_dsn, stop_loss_pct=D(10))
    env = engine_env()
    with running_engine(private_dsn, tmp_path / "a", venue=venue, **env) as system:
        signal_id = open_copy(system, private_dsn, whale_id=whale, symbol=symbol, leverage=5)
        pid = position_id_for(signal_id, user)
        cid = close_order_id(pid)
        venue.inject("timeout_after_accept", client_order_id=cid)
        venue.set_mark(symbol, D(88))
        tick(system)
        trade_sql = "SELECT status FROM trades WHERE client_order_id = $1"
        wait_for(lambda: fetchval(private_dsn, trade_sql, cid) == "unknown")
        assert position(private_dsn, pid)["status"] == "closing"
        assert venue.order_count(cid) == 1  # filled at the venue; the engine does not know yet

    with running_engine(private_dsn, tmp_path / "b", venue=venue, **env) as system:
        tick(system)  # the mark is still past the SL: the recovered CLOSING position must not close again
        closed = wait_position(private_dsn, pid, "closed")
        assert closed["close_reason"] == "stop_loss"
        # 5 @ 100 → 88: -60, fees 0.25 + 5 × 88 × 0.0005 = 0.22
        assert closed["realized_pnl_usdt"] == D("-60.47")
        assert fetchval(private_dsn, "SELECT status FROM trades WHERE client_order_id = $1", cid) == "filled"
        tick(system)
        settle(system)
        assert venue.order_count(cid) == 1 and venue.create_calls(cid) == 1
        assert fetchval(private_dsn, "SELECT count(*) FROM trades WHERE position_id = $1 AND reduce_only", pid) == 1
        assert usdt(private_dsn, user) == (START_USDT - D("60.47"), D(0))


# ---- exits pass an open breaker -----------------------------------------------------------------------------


def test_close_goes_through_an_open_breaker(private_dsn: str, tmp_path: Path) -> None:
    venue = new_venue()
    whale, user = 150, 1050
    follow([user], whale, private_dsn, stop_loss_pct=D(10))
    env = engine_env(
        breaker_min_requests="4", breaker_error_rate="0.5", breaker_cooldown_s="600", retry_max_attempts="4",
        retry_base_ms="10", retry_max_ms="20",
    )  # fmt: skip
    with running_engine(private_dsn, tmp_path, venue=venue, **env) as system:
        exchange = system.venues["paper"].exchange
        signal_id = open_copy(system, private_dsn, whale_id=whale, symbol="BRK/USDT:USDT", leverage=5)
        pid = position_id_for(signal_id, user)
        wait_position(private_dsn, pid, "open")

        # An entry whose every attempt meets a 503: the failures open the breaker.
        venue.inject("server_error", count=4)
        failing = insert_signal(private_dsn, whale_id=whale, symbol="BRE/USDT:USDT", price=100, leverage=5)
        wait_signal_done(private_dsn, failing)
        wait_for(lambda: exchange.proxy().status().get(timeout=10)["breaker"] == "open")
        venue.clear_faults()
        settle(system)
        entry = fetch(private_dsn, "SELECT status FROM trades WHERE signal_id = $1", failing)
        assert [r["status"] for r in entry] == ["failed"]

        # The SL close goes through the open breaker.
        venue.set_mark("BRK/USDT:USDT", D(89))
        tick(system)
        closed = wait_position(private_dsn, pid, "closed")
        assert closed["close_reason"] == "stop_loss"
        assert venue.order_count(close_order_id(pid)) == 1
        assert exchange.proxy().status().get(timeout=10)["breaker"] == "open"

        # New entries are not even sent while it is open (the exchange actor told the venue so).
        calls_before = len(venue.calls())
        skipped = insert_signal(private_dsn, whale_id=whale, symbol="BRE/USDT:USDT", price=100, leverage=5)
        row = wait_signal_done(private_dsn, skipped)
        assert (row["copied"], row["skip_reasons"]) == (0, {"venue_unavailable": 1})
        assert [c for c in venue.calls()[calls_before:] if c[1] == "create_order"] == []


# ---- whale exits always follow -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "late"),
    [
        # detected an hour ago: past signals.max_signal_age_s (300 s) and the follow's max_signal_age_s
        ("XOL", {"detected_at": timedelta(hours=-1)}),
        # expires_at in the past
        ("XEX", {"detected_at": timedelta(minutes=-2), "expires_at": timedelta(minutes=-1)}),
        # the whale's price 50 % from the mark: past the follow's max_slippage_pct (5 %)
        ("XSL", {"price": 150}),
    ],
)
def test_a_late_whale_exit_still_closes_the_copy(
    engine: EngineSystem, pg_dsn: str, venue: PaperVenue, base: str, late: dict[str, Any]
) -> None:
    """Age, expiry and slippage limit entries; an exit of any age, or far from the whale's price, closes (a few
    minutes of downtime must not leave the follower holding what the whale closed)."""
    whale, user = 100 + BASES.index(base), 1000 + BASES.index(base)
    symbol = f"{base}/USDT:USDT"
    follow([user], whale, pg_dsn, engine, max_signal_age_s=30)
    pid = position_id_for(open_copy(engine, pg_dsn, whale_id=whale, symbol=symbol, leverage=5), user)
    wait_position(pg_dsn, pid, "open")

    now = datetime.now(UTC)
    detected, expires = late.get("detected_at"), late.get("expires_at")
    close = insert_signal(
        pg_dsn, whale_id=whale, symbol=symbol, action="close", price=late.get("price", 100), leverage=5,
        detected_at=now + detected if detected else None, expires_at=now + expires if expires else None,
    )  # fmt: skip
    row = wait_signal_done(pg_dsn, close)
    assert (row["status"], row["copied"], row["skipped"]) == ("processed", 1, 0), row
    closed = wait_position(pg_dsn, pid, "closed")
    assert closed["qty"] == 0
    assert venue.position_qty(user, symbol) == 0


def held_exits(system: EngineSystem, user_id: int) -> list[int]:
    return list(ref(system, user_id).proxy().describe().get(timeout=30).get("held_exits", []))


@pytest.mark.parametrize("entry", ["filled", "rejected"])
def test_a_close_while_the_entry_is_at_the_venue_waits_for_it(
    engine: EngineSystem, pg_dsn: str, venue: GatedVenue, entry: str
) -> None:
    """The whale opens and closes while the follower's entry is still at the venue: the close waits for the
    entry's outcome, then closes what filled (the signal counts it copied); nothing filled → ``no_position``."""
    base = "HLD" if entry == "filled" else "HLR"
    whale, user = 100 + BASES.index(base), 1000 + BASES.index(base)
    symbol = f"{base}/USDT:USDT"
    follow([user], whale, pg_dsn, engine)
    gate = venue.gate(symbol)
    try:
        opened = insert_signal(pg_dsn, whale_id=whale, symbol=symbol, price=100, leverage=5)
        assert venue.arrived[symbol].wait(GENEROUS_S), "the entry never reached the venue"
        if entry == "rejected":
            venue.inject("reject", client_order_id=client_order_id(opened, user))
        close = insert_signal(pg_dsn, whale_id=whale, symbol=symbol, action="close", price=100, leverage=5)
        # The follower has the close: held (or, before this was built, skipped 'position_busy' at once).
        wait_for(lambda: held_exits(engine, user) == [close] or signal_row(pg_dsn, close)["status"] == "processed")
    finally:
        gate.set()
        venue.gates.pop(symbol)
    row = wait_signal_done(pg_dsn, close)
    settle(engine)
    pid = position_id_for(opened, user)
    if entry == "filled":
        assert (row["status"], row["copied"], row["skipped"], row["failed"]) == ("processed", 1, 0, 0), row
        closed = wait_position(pg_dsn, pid, "closed")
        assert closed["qty"] == 0
        assert venue.position_qty(user, symbol) == 0
        assert venue.order_count(client_order_id(close, user)) == 1
    else:
        assert (row["status"], row["copied"], row["skipped"]) == ("processed", 0, 1), row
        assert row["skip_reasons"] == {"no_position": 1}
        assert position(pg_dsn, pid) == {}
        assert venue.order_count(client_order_id(close, user)) == 0
    assert held_exits(engine, user) == []


def test_a_held_close_is_decided_again_after_a_restart(private_dsn: str, tmp_path: Path) -> None:
    """The entry filled at the venue, its answer never came back, and the whale's close waits for it in the
    follower when the engine stops: the close lived only in memory. The next engine resolves the entry by its
    client order id and routes the close again (its row is still 'processing'): the copy is closed."""
    venue = new_venue()
    base = "HRS"
    whale, user = 100 + BASES.index(base), 1000 + BASES.index(base)
    symbol = f"{base}/USDT:USDT"
    follow([user], whale, private_dsn)
    gate = venue.gate(symbol, after_fill=True)
    try:
        with running_engine(private_dsn, tmp_path / "a", venue=venue, **engine_env()) as system:
            opened = insert_signal(private_dsn, whale_id=whale, symbol=symbol, price=100, leverage=5)
            assert venue.arrived[symbol].wait(GENEROUS_S), "the entry never reached the venue"
            close = insert_signal(private_dsn, whale_id=whale, symbol=symbol, action="close", price=100)

            def done() -> bool:
                return bool(signal_row(private_dsn, close)["status"] == "processed")

            wait_for(lambda: held_exits(system, user) == [close] or done())
            assert not done()
    finally:
        gate.set()
        venue.gates.pop(symbol)
    pid = position_id_for(opened, user)
    assert venue.position_qty(user, symbol) == 5  # filled at the venue; the engine never heard
    with running_engine(private_dsn, tmp_path / "b", venue=venue, **engine_env()) as system:
        row = wait_signal_done(private_dsn, close)
        assert (row["status"], row["copied"], row["skipped"]) == ("processed", 1, 0), row
        closed = wait_position(private_dsn, pid, "closed")
        assert closed["qty"] == 0
        settle(system)
    assert venue.position_qty(user, symbol) == 0
    assert venue.order_count(client_order_id(opened, user)) == 1
    assert venue.order_count(client_order_id(close, user)) == 1
