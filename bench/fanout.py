"""Scenario 1, fan-out: one signal -> N followers with mixed settings -> every order request at the exchange
actor, no database.

The engine side is the real thing minus I/O: ``SignalRouterActor`` tells ``CopySignal`` to N ``FollowerActor``
(pooled runtime); each one runs ``engine.sizing.decide``, reserves funds and asks for a durable intent; the
persistence actor is a tiny one that acks every ``PersistIntent`` at once (``durable=True``); the exchange
actor is one that counts ``PlaceOrder``. The clock runs from ``RouteSignal`` to the last expected order at
the exchange actor.

Baselines, same run, same followers and signals:

* **plain loop**: ``Portfolio.account_view`` + ``decide`` + ``reserve`` for each follower in a for-loop (the
  sizing and limits without actors); it also says how many orders the engine must deliver;
* **ThreadingActor per follower** (N = 2,000): the same loop body in one ``pykka.ThreadingActor`` per
  follower, answering the router and telling the counting exchange. It does less than a ``FollowerActor``
  (no intent round trip), so the ratio is conservative.

    .venv/bin/python -m bench fanout [--quick]
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pykka

from actors.follower import FollowerActor
from actors.router import SignalRouterActor
from adapters.paper_markets import DEFAULT_MARKS, default_markets
from bench import configure_logs
from bench._engine import AckingPersistence, CountingExchange, make_signal, mixed_settings
from bench._report import row
from engine import runtime
from engine.clock import SYSTEM_CLOCK
from engine.config import RuntimeConfig, SignalsConfig
from engine.control import CopyOutcome, RouteSignal, SetFollowers
from engine.events import EventBus, log_event
from engine.follower_state import FollowerContext, FollowerState
from engine.messages import BalanceRow, CopySignal, FollowerDecision, PersistRows, PlaceOrder, Signal
from engine.portfolio import Portfolio
from engine.sizing import EntryPlan, decide
from engine.trades import Trade

SCENARIO = "1 fan-out"
VENUE = "paper"
WHALE_ID = 1
_TIMEOUT_S = 600.0
MARKETS = {m.symbol: m for m in default_markets()}
# Symbols a repeat copies (a new one each time: an order still "in flight" at the counting exchange keeps
# its symbol busy for that follower).
SYMBOLS = [
    *(f"{b}/USDT:USDT" for b in ("ETH", "SOL", "BNB", "XRP", "LINK", "LTC", "AVAX", "ADA", "DOGE", "BTC")),
    *(f"{b}/USDT" for b in ("ETH", "SOL", "BNB", "XRP", "LINK", "LTC", "AVAX", "ADA", "DOGE", "BTC")),
]


def mark_price(symbol: str, _trade_type: Any = None) -> Decimal:
    return DEFAULT_MARKS[symbol.split("/", maxsplit=1)[0]]


class Followers:
    """N followers' settings, plus the plain-loop mirror of their books (it reserves what they reserve)."""

    def __init__(self, n: int) -> None:
        self.states: list[FollowerState] = []
        self.books: list[tuple[Any, Any, Portfolio, set[str]]] = []
        now = datetime.now(UTC)
        for uid in range(1, n + 1):
            user, follow, usdt = mixed_settings(uid, WHALE_ID)
            balance = BalanceRow(user_id=uid, venue=VENUE, asset="USDT", free=usdt, reserved=Decimal(0))
            self.states.append(FollowerState(user=user, follows=(follow,), balances=(balance,)))
            portfolio = Portfolio(uid, now=now)
            portfolio.balance(VENUE).free = usdt
            self.books.append((user, follow, portfolio, set()))

    def plain_loop(self, signal: Signal, *, release: bool = True) -> tuple[float, int]:
        """Seconds for sizing + limits of every follower, and how many orders that makes. ``release``: then
        (untimed) give the reservations back, as the engine's followers do when their orders are answered."""
        mark = mark_price(signal.symbol)
        market = MARKETS[signal.symbol]
        reserved: list[tuple[Portfolio, Decimal]] = []
        started = time.perf_counter()
        orders = 0
        now = datetime.now(UTC)
        for user, follow, portfolio, busy in self.books:
            account = portfolio.account_view(venue=VENUE, symbol=signal.symbol, now=now, busy=signal.symbol in busy)
            plan = decide(signal, user=user, follow=follow, market=market, mark=mark, now=now, account=account)
            if isinstance(plan, EntryPlan) and portfolio.reserve(VENUE, plan.reserve_usdt):
                busy.add(signal.symbol)
                orders += 1
                reserved.append((portfolio, plan.reserve_usdt))
        elapsed = time.perf_counter() - started
        if release:
            for portfolio, amount in reserved:
                portfolio.release(VENUE, amount)
        return elapsed, orders


class ThreadFollower(pykka.ThreadingActor):
    """The loop body as one thread actor per follower (the ThreadingActor baseline)."""

    def __init__(self, book: tuple[Any, Any, Portfolio, set[str]], router: Any, exchange: Any) -> None:
        super().__init__()
        self.user, self.follow, self.portfolio, self.busy = book
        self.router, self.exchange = router, exchange

    def on_receive(self, message: Any) -> None:
        if not isinstance(message, CopySignal):
            return
        signal, now = message.signal, datetime.now(UTC)
        account = self.portfolio.account_view(
            venue=VENUE, symbol=signal.symbol, now=now, busy=signal.symbol in self.busy
        )
        plan = decide(
            signal, user=self.user, follow=self.follow, market=MARKETS[signal.symbol], mark=message.mark_price,
            now=now, account=account,
        )  # fmt: skip
        outcome = "skipped"
        if isinstance(plan, EntryPlan) and self.portfolio.reserve(VENUE, plan.reserve_usdt):
            self.busy.add(signal.symbol)
            trade = Trade.for_plan(plan, signal=signal, user_id=self.user.user_id, venue=VENUE)
            self.exchange.tell(PlaceOrder(request=trade.to_order_request(), reply_to=self.actor_ref))
            outcome = "copied"
        self.router.tell(FollowerDecision(signal_id=signal.signal_id, user_id=self.user.user_id, outcome=outcome))
        if outcome == "copied":  # the engine's follower tells the order's outcome when it is final: filled here
            self.router.tell(CopyOutcome(signal_id=signal.signal_id, user_id=self.user.user_id, outcome="filled"))


class Bench:
    """The singletons of one fan-out set-up: router, acking persistence, counting exchange."""

    def __init__(self) -> None:
        self.persistence = AckingPersistence.start()
        self.exchange = CountingExchange.start()
        # As the engine's: the event row to persistence (the acking actor drops it) and the log line.
        self.events = EventBus(write=lambda row: self.persistence.tell(PersistRows(rows=(row,))))
        self.events.subscribe(log_event)
        self.publish = self.events.publish
        self.router = SignalRouterActor.start(
            persistence=self.persistence,
            mark_price=mark_price,
            publish=self.publish,
            config=SignalsConfig(),
            clock=SYSTEM_CLOCK,
        )
        self._signal_ids = iter(range(1, 10**9))

    def context(self) -> FollowerContext:
        return FollowerContext(
            persistence=self.persistence,
            router=self.router,
            exchanges={VENUE: self.exchange},
            markets={VENUE: MARKETS},
            clock=SYSTEM_CLOCK,
            publish=self.publish,
            venue_available=lambda _venue: True,
            needs_reconcile=lambda _uid: None,
            on_failure=lambda *_args: None,
        )

    def route(self, refs: dict[int, Any], symbol: str, expected_orders: int) -> float:
        """Seconds from ``RouteSignal`` to the last expected order at the exchange actor."""
        self.router.tell(SetFollowers(refs=refs, follows={u: (WHALE_ID,) for u in refs}, known_whales=frozenset({1})))
        self.router.proxy().in_flight().get()  # the index is in place before the clock starts
        exchange = self.exchange.proxy()
        before = exchange.count.get()
        done: threading.Event = exchange.done.get()
        done.clear()
        exchange.expect(before + expected_orders).get()
        signal = make_signal(next(self._signal_ids), whale_id=WHALE_ID, symbol=symbol, price=mark_price(symbol))
        started = time.perf_counter()
        self.router.tell(RouteSignal(signal=signal, received_at_ns=time.monotonic_ns()))
        if not done.wait(_TIMEOUT_S):
            msg = f"fan-out stalled: {exchange.count.get() - before} of {expected_orders} orders arrived"
            raise RuntimeError(msg)
        done_at: float = exchange.done_at.get()
        elapsed = done_at - started  # when the last order arrived, not when we woke up
        self.settle()
        # Untimed: answer the orders, so the next repeat meets followers with nothing in flight (unanswered,
        # each repeat carried every earlier repeat's orders: at N = 100,000, 91,000 more objects per repeat for
        # the garbage collector to walk, a cost of the bench, not of one signal).
        exchange.cancel_all().get()
        self.settle()
        return elapsed

    def settle(self) -> None:
        """Untimed: wait until the router has every decision and the pool is idle."""
        deadline = time.monotonic() + _TIMEOUT_S
        while time.monotonic() < deadline:
            stats = runtime.pool_stats()
            if self.router.proxy().in_flight().get() == 0 and stats.mailbox_depth_total == 0:
                return
            time.sleep(0.01)

    def stop(self) -> None:
        for ref in (self.router, self.exchange, self.persistence):
            ref.stop()


def engine_fanout(bench: Bench, n: int, repeats: int) -> tuple[list[float], list[float], int]:
    """(engine seconds, plain-loop seconds, orders per run) for N followers; the first run is a warm-up."""
    followers = Followers(n)
    ctx = bench.context()
    with runtime.long_lived_allocations():  # as EngineSystem.start does
        refs = {s.user.user_id: FollowerActor.start(s, ctx) for s in followers.states}
    engine_s: list[float] = []
    loop_s: list[float] = []
    orders = 0
    try:
        for i, symbol in enumerate(SYMBOLS[: repeats + 1]):
            probe = make_signal(0, whale_id=WHALE_ID, symbol=symbol, price=mark_price(symbol))
            loop_time, orders = followers.plain_loop(probe)
            engine_time = bench.route(refs, symbol, orders)
            if i > 0:
                engine_s.append(engine_time)
                loop_s.append(loop_time)
    finally:
        runtime.stop_actors(list(refs.values()), timeout_s=_TIMEOUT_S)
    return engine_s, loop_s, orders


def threading_fanout(bench: Bench, n: int, repeats: int) -> list[float]:
    followers = Followers(n)
    refs = {book[2].user_id: ThreadFollower.start(book, bench.router, bench.exchange) for book in followers.books}
    times: list[float] = []
    try:
        for i, symbol in enumerate(SYMBOLS[: repeats + 1]):
            probe = make_signal(0, whale_id=WHALE_ID, symbol=symbol, price=mark_price(symbol))
            _, orders = Followers.plain_loop(_Dry(followers), probe, release=False)  # type: ignore[arg-type]
            elapsed = bench.route(refs, symbol, orders)
            if i > 0:
                times.append(elapsed)
    finally:
        runtime.stop_actors(list(refs.values()), timeout_s=_TIMEOUT_S)
    return times


class _Dry:
    """The plain loop on copies of the books, to learn how many orders a run makes without reserving twice."""

    def __init__(self, followers: Followers) -> None:
        self.books = []
        for user, follow, portfolio, busy in followers.books:
            copy = Portfolio(portfolio.user_id, now=datetime.now(UTC))
            bal = portfolio.balance(VENUE)
            copy.balance(VENUE).free, copy.balance(VENUE).reserved = bal.free, bal.reserved
            self.books.append((user, follow, copy, set(busy)))


def run(*, quick: bool = False, logs_on: bool = False) -> list[dict[str, Any]]:

    configure_logs(on=logs_on)
    runtime.configure_pool()
    runtime.tune_gc(gen0_threshold=RuntimeConfig().gc_gen0_threshold)  # the engine's default, as at its start
    sizes = (1_000, 2_000, 10_000) if quick else (1_000, 2_000, 10_000, 100_000)
    repeats = {1_000: 7, 2_000: 5, 10_000: 5, 100_000: 3} if not quick else {1_000: 3, 2_000: 3, 10_000: 3}
    bench = Bench()
    rows: list[dict[str, Any]] = []
    try:
        engine_at: dict[int, list[float]] = {}
        for n in sizes:
            engine_s, loop_s, orders = engine_fanout(bench, n, repeats[n])
            engine_at[n] = engine_s
            ratio = _median(engine_s) / _median(loop_s)
            rows.append(row(SCENARIO, f"plain loop N={n:,}", loop_s, unit="s", note=""))
            rows.append(
                row(
                    SCENARIO, f"engine N={n:,} ({orders:,} orders)", engine_s, unit="s", ratio=ratio,
                    ratio_label="engine / plain loop", target="≤ 3x plain loop", ok=ratio <= 3,
                )
            )  # fmt: skip
        thread_s = threading_fanout(bench, 2_000, 3)
        speedup = _median(thread_s) / _median(engine_at[2_000])
        rows.append(
            row(
                SCENARIO, "ThreadingActor per follower N=2,000", thread_s, unit="s", ratio=speedup,
                ratio_label="ThreadingActor / engine", target="engine ≥ 50x faster", ok=speedup >= 50,
                note="same loop body as the plain loop, one thread actor per follower, answering the router; "
                "no intent round trip, so the ratio favours the ThreadingActor",
            )
        )  # fmt: skip
    finally:
        bench.stop()
    return rows


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
