"""ExchangeActor against the real I/O loop and the paper venue (no mocks).

Other test runs share this 2-core machine: nothing here asserts on elapsed time. Tests wait for conditions
with generous timeouts and assert on what the venue observed (calls, order counts, concurrency). Windows
(breaker cool-down, bans, backoff, the rate budget's refill) run on a ``FakeClock`` that the test advances.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pykka
import pytest

from actors.exchange import CALL_TIMEOUT_S, ExchangeActor
from adapters.ioloop import IoLoop
from adapters.paper import PaperVenue
from engine.breaker import BreakerState
from engine.clock import SYSTEM_CLOCK, Clock, FakeClock
from engine.config import VenueConfig
from engine.control import SubscribeHealth, VenueHealth
from engine.messages import (
    CheckPositions,
    OrderOutcome,
    OrderRequest,
    PlaceOrder,
    PositionSide,
    ResolveOrder,
    Side,
    TradeStatus,
    TradeType,
    VenuePositions,
)
from tests.kit import LogEntries, events, wait_for

WAIT_S = 60.0


class Inbox:
    """A ``reply_to`` that records what it is told (thread-safe)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[OrderOutcome] = []

    def tell(self, message: OrderOutcome) -> None:
        with self._cond:
            self.items.append(message)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout_s: float = WAIT_S) -> list[OrderOutcome]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.items) >= count, timeout_s)
            assert ok, f"got {len(self.items)} outcomes, expected {count}"
            return list(self.items)

    def by_id(self) -> dict[str, OrderOutcome]:
        with self._cond:
            return {o.client_order_id: o for o in self.items}


def at_rest(ref: pykka.ActorRef[Any]) -> None:
    """Return once the actor is at rest: nothing in flight, and no batch sent between two status answers in a
    row (a drain told before the first answer has run by the second). From then on only a timer of its clock
    makes it send again, so the test may move the clock: no call still on its way is stamped by the venue
    later than the time the actor sent it at (that made one window hold 7 orders of an account limited to 5)."""
    previous: int | None = None

    def rested() -> bool:
        nonlocal previous
        answer = status(ref)
        batches = answer["counters"]["batches"] if answer["in_flight"] == 0 else None
        done, previous = batches is not None and batches == previous, batches
        return done

    wait_for(rested, timeout_s=WAIT_S, interval_s=0.01, message="the exchange actor at rest")


def drive(clock: FakeClock, ref: pykka.ActorRef[Any], condition: Callable[[], bool]) -> None:
    """Wait for ``condition``, moving ``clock`` on to each timer the actor arms meanwhile (backoff, refill,
    cool-down), each time the actor is at rest: what the venue sees happens at the clock's time, whatever
    the machine's load."""
    while True:
        at_rest(ref)
        if condition():
            return
        clock.advance(clock.wait_for_timer(timeout_s=WAIT_S))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timed_venue(clock: FakeClock) -> PaperVenue:
    """The paper venue on the test's clock (bans, call times), funded like ``venue``."""
    paper = funded_venue(200, clock=clock)
    for user_id in range(1, 201):
        paper.deposit(user_id, "BTC", Decimal(100))
    return paper


@pytest.fixture
def venue() -> PaperVenue:
    paper = PaperVenue()
    for user_id in range(1, 201):
        paper.deposit(user_id, "USDT", Decimal(1_000_000))
        paper.deposit(user_id, "BTC", Decimal(100))
    return paper


@pytest.fixture
def start_actor(io_loop: IoLoop, venue: PaperVenue) -> Iterator[Callable[..., pykka.ActorRef[Any]]]:
    refs: list[pykka.ActorRef[Any]] = []

    def start(
        *,
        adapter: PaperVenue | None = None,
        clock: Clock = SYSTEM_CLOCK,
        call_timeout_s: float = CALL_TIMEOUT_S,
        **config_fields: Any,
    ) -> pykka.ActorRef[Any]:
        # engine.config's defaults, with this module's deviations (a generous budget, fast retries) and the test's.
        settings: dict[str, Any] = {
            "weight_per_minute": 600_000,
            "orders_per_second_per_account": 1000,
            "retry_base_ms": 10.0,
            "retry_max_ms": 50.0,
        }
        config = msgspec.structs.replace(VenueConfig(name="paper"), **{**settings, **config_fields})
        ref = ExchangeActor.start(
            io_loop,
            adapter or venue,
            config,
            weight_per_minute=config.weight_per_minute,
            call_timeout_s=call_timeout_s,
            clock=clock,
        )
        refs.append(ref)
        return ref

    yield start
    for ref in refs:
        ref.stop(timeout=WAIT_S)


_seq = iter(range(1, 10**9))


def request(
    *,
    user_id: int = 1,
    side: Side = Side.BUY,
    qty: str = "0.001",
    reduce_only: bool = False,
    symbol: str = "BTC/USDT",
    trade_type: TradeType = TradeType.SPOT,
    client_order_id: str | None = None,
) -> OrderRequest:
    return OrderRequest(
        client_order_id=client_order_id or f"t{next(_seq)}u{user_id}",
        user_id=user_id,
        venue="paper",
        symbol=symbol,
        trade_type=trade_type,
        side=side,
        qty=Decimal(qty),
        price_hint=Decimal(60000),
        reduce_only=reduce_only,
        signal_id=7,
    )


def exit_request(user_id: int = 1, **kwargs: Any) -> OrderRequest:
    return request(user_id=user_id, side=Side.SELL, reduce_only=True, **kwargs)


def place(ref: pykka.ActorRef[Any], inbox: Inbox, *requests: OrderRequest) -> None:
    for req in requests:
        ref.tell(PlaceOrder(request=req, reply_to=inbox))


def resolve(req: OrderRequest, inbox: Inbox) -> ResolveOrder:
    return ResolveOrder(
        user_id=req.user_id,
        symbol=req.symbol,
        trade_type=req.trade_type,
        client_order_id=req.client_order_id,
        reply_to=inbox,
    )


def status(ref: pykka.ActorRef[Any]) -> dict[str, Any]:
    result: dict[str, Any] = ref.proxy().status().get(timeout=WAIT_S)
    return result


# ----------------------------------------------------------------------------------------------------
# Outcomes
# ----------------------------------------------------------------------------------------------------


def test_fill_path(start_actor: Callable[..., pykka.ActorRef[Any]], venue: PaperVenue) -> None:
    ref, inbox = start_actor(), Inbox()
    req = request()
    place(ref, inbox, req)
    [outcome] = inbox.wait_for(1)
    assert outcome.status is TradeStatus.FILLED
    assert outcome.filled_qty == Decimal("0.001")
    assert outcome.avg_price == Decimal(60000)
    assert outcome.fee_usdt == Decimal("0.06")
    assert outcome.exchange_order_id is not None
    assert venue.order_count(req.client_order_id) == 1
    counters = status(ref)["counters"]
    assert counters["sent"] == 1
    assert counters["filled"] == 1


def test_reject(start_actor: Callable[..., pykka.ActorRef[Any]], venue: PaperVenue) -> None:
    ref, inbox = start_actor(), Inbox()
    injected, broke = request(), request(user_id=999)  # user 999 has no money
    venue.inject("reject", client_order_id=injected.client_order_id)
    place(ref, inbox, injected, broke)
    inbox.wait_for(2)
    outcomes = inbox.by_id()
    assert outcomes[injected.client_order_id].status is TradeStatus.REJECTED
    assert outcomes[broke.client_order_id].status is TradeStatus.REJECTED
    assert "insufficient" in (outcomes[broke.client_order_id].error or "")
    assert venue.create_calls(injected.client_order_id) == 1  # a definitive no is not retried
    assert venue.order_count(injected.client_order_id) == 0


@pytest.mark.parametrize("fault", ["rate_limit", "server_error"])
def test_retryable_error_is_retried_with_the_same_client_order_id(
    start_actor: Callable[..., pykka.ActorRef[Any]], timed_venue: PaperVenue, clock: FakeClock, fault: str
) -> None:
    venue = timed_venue
    ref, inbox = start_actor(adapter=venue, clock=clock), Inbox()
    req = request()
    venue.inject(fault, count=2, client_order_id=req.client_order_id, retry_after_s=0.02)
    place(ref, inbox, req)
    drive(clock, ref, lambda: len(inbox.items) >= 1)  # each retry waits out its backoff on the clock
    [outcome] = inbox.wait_for(1)
    assert outcome.status is TradeStatus.FILLED
    assert venue.create_calls(req.client_order_id) == 3
    assert venue.order_count(req.client_order_id) == 1
    assert status(ref)["counters"]["retries"] == 2


def test_retries_exhausted_is_failed(
    start_actor: Callable[..., pykka.ActorRef[Any]], timed_venue: PaperVenue, clock: FakeClock
) -> None:
    venue = timed_venue
    ref, inbox = start_actor(adapter=venue, clock=clock, retry_max_attempts=3), Inbox()
    req = request()
    venue.inject("server_error", count=10, client_order_id=req.client_order_id)
    place(ref, inbox, req)
    drive(clock, ref, lambda: len(inbox.items) >= 1)
    [outcome] = inbox.wait_for(1)
    assert outcome.status is TradeStatus.FAILED
    assert (outcome.error or "").startswith("retries_exhausted")
    assert venue.create_calls(req.client_order_id) == 3
    assert venue.order_count(req.client_order_id) == 0


def test_timeout_after_accept_is_unknown_then_resolved_never_resent(
    start_actor: Callable[..., pykka.ActorRef[Any]], venue: PaperVenue
) -> None:
    ref, inbox = start_actor(), Inbox()
    req = request()
    venue.inject("timeout_after_accept", client_order_id=req.client_order_id)
    place(ref, inbox, req)
    [outcome] = inbox.wait_for(1)
    assert outcome.status is TradeStatus.UNKNOWN
    ref.tell(resolve(req, inbox))
    resolved = inbox.wait_for(2)[1]
    assert resolved.status is TradeStatus.FILLED
    assert resolved.filled_qty == req.qty
    assert venue.create_calls(req.client_order_id) == 1
    assert venue.order_count(req.client_order_id) == 1
    assert status(ref)["counters"]["unknown"] == 1


@pytest.mark.parametrize(("grace_s", "expected"), [(600.0, TradeStatus.UNKNOWN), (0.0, TradeStatus.FAILED)])
def test_call_timeout_before_the_venue_saw_it_resolves_by_grace(
    start_actor: Callable[..., pykka.ActorRef[Any]], venue: PaperVenue, grace_s: float, expected: TradeStatus
) -> None:
    # The call times out on our side before the venue created anything: UNKNOWN, and "not found" only becomes
    # FAILED once the grace period is over.
    venue.latency_ms = 2000
    ref, inbox = start_actor(call_timeout_s=0.05, unknown_grace_s=grace_s), Inbox()
    req = request()
    place(ref, inbox, req)
    assert inbox.wait_for(1)[0].status is TradeStatus.UNKNOWN
    venue.latency_ms = 0
    ref.tell(resolve(req, inbox))
    resolved = inbox.wait_for(2)[1]
    assert resolved.status is expected
    assert venue.order_count(req.client_order_id) == 0


def test_resolve_of_an_order_the_venue_never_saw_is_not_found(
    start_actor: Callable[..., pykka.ActorRef[Any]],
) -> None:
    ref, inbox = start_actor(), Inbox()
    ref.tell(resolve(request(client_order_id="nope"), inbox))
    [outcome] = inbox.wait_for(1)
    assert outcome.status is TradeStatus.FAILED
    assert outcome.error == "not_found"


def test_partial_fill(start_actor: Callable[..., pykka.ActorRef[Any]], venue: PaperVenue) -> None:
    ref, inbox = start_actor(), Inbox()
    req = request(qty="0.01")
    venue.inject("partial_fill", client_order_id=req.client_order_id, fill_fraction=Decimal("0.3"))
    place(ref, inbox, req)
    [outcome] = inbox.wait_for(1)
    assert outcome.status is TradeStatus.PARTIALLY_FILLED
    assert outcome.filled_qty == Decimal("0.003")
    assert venue.order_count(req.client_order_id) == 1


def test_wrong_venue_fails_without_a_call(start_actor: Callable[..., pykka.ActorRef[Any]], venue: PaperVenue) -> None:
    ref, inbox = start_actor(), Inbox()
    req = msgspec.structs.replace(request(), venue="binance")
    place(ref, inbox, req)
    assert inbox.wait_for(1)[0].error == "wrong_venue"
    assert venue.create_calls(req.client_order_id) == 0


# ----------------------------------------------------------------------------------------------------
# Circuit breaker and bans
# ----------------------------------------------------------------------------------------------------


def open_breaker(ref: pykka.ActorRef[Any], venue: PaperVenue, inbox: Inbox, failures: int) -> None:
    venue.inject("server_error", count=failures)
    place(ref, inbox, *(request(user_id=u) for u in range(1, failures + 1)))
    inbox.wait_for(failures)
    venue.clear_faults()
    wait_for(lambda: status(ref)["breaker"] == "open")


def test_breaker_opens_on_errors_refuses_entries_and_lets_exits_through(
    start_actor: Callable[..., pykka.ActorRef[Any]], venue: PaperVenue, captured_logs: LogEntries
) -> None:
    ref = start_actor(retry_max_attempts=1, breaker_min_requests=5, breaker_error_rate=0.5, breaker_cooldown_s=600.0)
    inbox = Inbox()
    open_breaker(ref, venue, inbox, failures=5)
    assert all(o.status is TradeStatus.FAILED for o in inbox.items)

    entry, exit_ = request(user_id=50), exit_request(user_id=51)
    place(ref, inbox, entry, exit_)
    inbox.wait_for(7)
    outcomes = inbox.by_id()
    assert outcomes[entry.client_order_id].status is TradeStatus.FAILED
    assert outcomes[entry.client_order_id].error == "venue_unavailable"
    assert venue.create_calls(entry.client_order_id) == 0  # refused without calling the venue
    assert outcomes[exit_.client_order_id].status is TradeStatus.FILLED
    assert len(events(captured_logs, "breaker.opened")) == 1
    assert status(ref)["counters"]["refused"] == 1


def test_half_open_probe_closes_the_breaker(
    start_actor: Callable[..., pykka.ActorRef[Any]],
    timed_venue: PaperVenue,
    clock: FakeClock,
    captured_logs: LogEntries,
) -> None:
    venue = timed_venue
    ref = start_actor(adapter=venue, clock=clock, retry_max_attempts=1, breaker_min_requests=3, breaker_cooldown_s=0.2)
    inbox = Inbox()
    open_breaker(ref, venue, inbox, failures=3)
    clock.advance(0.2)  # the cool-down
    assert status(ref)["breaker"] == "half_open"
    probe, follower = request(user_id=60), request(user_id=61)
    place(ref, inbox, probe, follower)
    inbox.wait_for(5)
    outcomes = inbox.by_id()
    assert outcomes[probe.client_order_id].status is TradeStatus.FILLED
    assert outcomes[follower.client_order_id].status is TradeStatus.FILLED
    assert status(ref)["breaker"] == "closed"
    # Each state change logged exactly once.
    assert [e["event"] for e in captured_logs if e["event"].startswith("breaker.")] == [
        "breaker.opened",
        "breaker.half_open",
        "breaker.closed",
    ]


def test_breaker_changes_are_told_to_subscribers_without_polling(
    start_actor: Callable[..., pykka.ActorRef[Any]], timed_venue: PaperVenue, clock: FakeClock
) -> None:
    venue = timed_venue
    ref = start_actor(adapter=venue, clock=clock, retry_max_attempts=1, breaker_min_requests=3, breaker_cooldown_s=0.2)
    told: list[VenueHealth] = []
    ref.tell(SubscribeHealth(told.append))
    inbox = Inbox()
    venue.inject("server_error", count=3)
    place(ref, inbox, *(request(user_id=u) for u in range(1, 4)))
    inbox.wait_for(3)
    venue.clear_faults()
    wait_for(lambda: len(told) >= 2)
    # Nobody asks for the status: the cool-down's end is told by the actor's own timer.
    drive(clock, ref, lambda: len(told) >= 3)
    assert [(h.breaker, h.entries_open) for h in told[:3]] == [
        (BreakerState.CLOSED, True),  # the state on subscribing
        (BreakerState.OPEN, False),
        (BreakerState.HALF_OPEN, True),
    ]


def test_failed_probe_reopens(
    start_actor: Callable[..., pykka.ActorRef[Any]],
    timed_venue: PaperVenue,
    clock: FakeClock,
    captured_logs: LogEntries,
) -> None:
    venue = timed_venue
    ref = start_actor(adapter=venue, clock=clock, retry_max_attempts=1, breaker_min_requests=3, breaker_cooldown_s=0.2)
    inbox = Inbox()
    open_breaker(ref, venue, inbox, failures=3)
    clock.advance(0.2)  # the cool-down
    assert status(ref)["breaker"] == "half_open"
    venue.inject("server_error")
    probe = request(user_id=70)
    place(ref, inbox, probe)
    assert inbox.wait_for(4)[3].status is TradeStatus.FAILED
    assert [(e["event"], e["reason"]) for e in captured_logs if e["event"].startswith("breaker.")][:3] == [
        ("breaker.opened", "error_rate"),
        ("breaker.half_open", "cool_down"),
        ("breaker.opened", "probe_failed"),
    ]


def test_ban_stops_all_traffic_until_it_ends(
    start_actor: Callable[..., pykka.ActorRef[Any]],
    timed_venue: PaperVenue,
    clock: FakeClock,
    captured_logs: LogEntries,
) -> None:
    venue = timed_venue
    ref, inbox = start_actor(adapter=venue, clock=clock, breaker_cooldown_s=0.1), Inbox()
    trigger = request(user_id=1)
    venue.inject("ban", client_order_id=trigger.client_order_id, ban_s=1.0)
    place(ref, inbox, trigger)
    assert inbox.wait_for(1)[0].error == "venue_unavailable"
    banned = status(ref)
    assert banned["banned_until"] is not None
    ban_ends_at = banned["banned_until"]

    exits = [exit_request(user_id=u) for u in range(2, 7)]
    entry = request(user_id=8)
    place(ref, inbox, *exits, entry)
    assert inbox.wait_for(2)[1].client_order_id == entry.client_order_id  # refused at once: breaker open
    wait_for(lambda: status(ref)["queued_exits"] == 5)  # held for the ban, nothing sent
    assert len(inbox.items) == 2
    clock.advance(1.0 + 0.01)  # past the ban (and the timer's slack)
    inbox.wait_for(7)
    outcomes = inbox.by_id()
    assert outcomes[entry.client_order_id].error == "venue_unavailable"  # breaker open on the ban
    assert all(outcomes[e.client_order_id].status is TradeStatus.FILLED for e in exits)
    assert venue.calls_while_banned == 0  # nothing was sent during the ban
    exit_ids = {e.client_order_id for e in exits}
    assert all(at >= ban_ends_at for at, _, _, cid in venue.calls() if cid in exit_ids)
    assert len(events(captured_logs, "venue.banned")) == 1
    assert len(events(captured_logs, "venue.unbanned")) == 1
    assert status(ref)["banned_until"] is None


# ----------------------------------------------------------------------------------------------------
# Rate limits and concurrency
# ----------------------------------------------------------------------------------------------------


def test_exits_go_before_entries_under_a_saturated_budget(
    start_actor: Callable[..., pykka.ActorRef[Any]], timed_venue: PaperVenue, clock: FakeClock
) -> None:
    venue = timed_venue
    # 5 per 3 s: the first 5 entries use the budget up; the exits, queued after the rest of the entries,
    # must all reach the venue before any of those.
    ref, inbox = start_actor(adapter=venue, clock=clock, weight_per_minute=100, weight_window_s=3.0), Inbox()
    entries = [request(user_id=u) for u in range(1, 11)]
    place(ref, inbox, *entries)
    wait_for(lambda: status(ref)["queued_entries"] == 5)
    exits = [exit_request(user_id=u) for u in range(11, 16)]
    place(ref, inbox, *exits)
    wait_for(lambda: status(ref)["queued_exits"] == 5)
    drive(clock, ref, lambda: len(inbox.items) >= 15)  # each refill of the budget is a window on the clock
    order = [cid for _, op, _, cid in venue.calls() if op == "create_order"]
    exit_ids = {e.client_order_id for e in exits}
    late_entries = [e.client_order_id for e in entries if order.index(e.client_order_id) >= 5]
    assert len(late_entries) == 5
    assert max(order.index(cid) for cid in exit_ids) < min(order.index(cid) for cid in late_entries)
    assert all(o.status is TradeStatus.FILLED for o in inbox.items)


def test_resolve_of_an_order_still_queued_waits_for_its_own_outcome(
    start_actor: Callable[..., pykka.ActorRef[Any]], timed_venue: PaperVenue, clock: FakeClock
) -> None:
    """A reconciliation asks about an entry that still waits behind the rate budget. The venue has never seen
    it, but that proves nothing: the answer is SUBMITTED ("still placing"), not FAILED "not found" (which
    released the funds of an order that was then sent and filled, a position missing from the books)."""
    venue = timed_venue
    ref = start_actor(adapter=venue, clock=clock, weight_per_minute=100, weight_window_s=3.0, unknown_grace_s=0.0)
    inbox = Inbox()
    entries = [request(user_id=u) for u in range(1, 8)]
    place(ref, inbox, *entries)
    wait_for(lambda: status(ref)["queued_entries"] == 2)
    queued = entries[-1]
    ref.tell(resolve(queued, inbox))
    drive(clock, ref, lambda: len(inbox.items) >= 8)
    answers = [o for o in inbox.items if o.client_order_id == queued.client_order_id]
    assert [(o.status, o.error) for o in answers] == [
        (TradeStatus.SUBMITTED, "still_placing"),
        (TradeStatus.FILLED, None),
    ]
    assert venue.order_count(queued.client_order_id) == 1
    # Answered: a resolve now asks the venue, which has the order.
    ref.tell(resolve(queued, inbox))
    assert inbox.wait_for(9)[-1].status is TradeStatus.FILLED


class NoRequestPositions(PaperVenue):
    """A venue whose position look-up makes no request (weight 0), as spot accounts on the ccxt venues."""

    def request_weight(self, operation: str) -> int:
        return 0 if operation == "fetch_positions" else super().request_weight(operation)


def test_a_call_of_weight_zero_is_answered(start_actor: Callable[..., pykka.ActorRef[Any]]) -> None:
    """A zero-weight job must not reach the rate budget (which refuses weight 0): it used to raise inside the
    drain loop and lose the question (never answered) with every job popped in the same round."""
    ref, inbox = start_actor(adapter=NoRequestPositions()), Inbox()
    ref.tell(CheckPositions(user_id=3, symbols=("BTC/USDT:USDT",), reply_to=inbox))
    answer = inbox.wait_for(1)[0]
    assert isinstance(answer, VenuePositions) and answer.error is None and answer.positions == ()
    assert status(ref)["weight_available"] == status(ref)["weight_capacity"]


def funded_venue(users: int, **kwargs: Any) -> PaperVenue:
    paper = PaperVenue(**kwargs)
    for user_id in range(1, users + 1):
        paper.deposit(user_id, "USDT", Decimal(1_000_000))
    return paper


def test_weight_budget_never_exceeded_under_a_burst(start_actor: Callable[..., pykka.ActorRef[Any]]) -> None:
    # The venue counts weight on arrival over a sliding 0.5 s window and answers 429 past 200.
    window_s, capacity, orders = 0.5, 200, 2000
    strict = funded_venue(100, weight_limit=capacity, weight_window_s=window_s)
    ref = start_actor(adapter=strict, weight_per_minute=int(capacity * 60 / window_s), weight_window_s=window_s)
    inbox = Inbox()
    place(ref, inbox, *(request(user_id=1 + n % 100) for n in range(orders)))
    outcomes = inbox.wait_for(orders, timeout_s=120)
    assert all(o.status is TradeStatus.FILLED for o in outcomes)
    assert strict.rate_limited_calls == 0
    assert strict.max_weight_in_window(window_s) <= capacity
    assert status(ref)["counters"]["retries"] == 0


def test_per_account_order_limit(
    start_actor: Callable[..., pykka.ActorRef[Any]], timed_venue: PaperVenue, clock: FakeClock
) -> None:
    venue = timed_venue  # arrival times on the actor's clock: no loop lag between sending and arriving
    ref, inbox = start_actor(adapter=venue, clock=clock, orders_per_second_per_account=5), Inbox()
    place(ref, inbox, *(request(user_id=1) for _ in range(12)), *(request(user_id=2) for _ in range(3)))
    drive(clock, ref, lambda: len(inbox.items) >= 15)
    arrivals = [at for at, op, _, cid in venue.calls() if op == "create_order" and cid and cid.endswith("u1")]
    assert len(arrivals) == 12
    for i, at in enumerate(arrivals):
        assert sum(1 for other in arrivals[i:] if other < at + 1.0) <= 5


def test_many_orders_in_flight_at_once(start_actor: Callable[..., pykka.ActorRef[Any]]) -> None:
    slow = funded_venue(100, latency_ms=50)
    ref, inbox = start_actor(adapter=slow, max_in_flight=256), Inbox()
    place(ref, inbox, *(request(user_id=1 + n % 100) for n in range(500)))
    outcomes = inbox.wait_for(500, timeout_s=120)
    assert all(o.status is TradeStatus.FILLED for o in outcomes)
    # Serial sending would never have more than one call open at the venue.
    assert slow.max_in_flight_seen >= 50
    assert slow.max_in_flight_seen <= 256


def test_status_reports_the_documented_keys(start_actor: Callable[..., pykka.ActorRef[Any]]) -> None:
    report = status(start_actor())
    assert set(report) >= {
        "venue",
        "breaker",
        "weight_capacity",
        "weight_available",
        "in_flight",
        "queued_exits",
        "queued_entries",
        "queued_resolves",
        "waiting_retry",
        "banned_until",
        "banned_for_s",
        "counters",
    }
    assert set(report["counters"]) >= {
        "sent",
        "filled",
        "rejected",
        "unknown",
        "retries",
        "failed",
        "refused",
    }
    assert report["venue"] == "paper"
    assert report["breaker"] == "closed"


# ----------------------------------------------------------------------------------------------------
# Venue positions (liquidation checks)
# ----------------------------------------------------------------------------------------------------


def test_check_positions_answers_what_the_venue_holds(
    start_actor: Callable[..., pykka.ActorRef[Any]], venue: PaperVenue
) -> None:
    ref, inbox = start_actor(), Inbox()
    place(ref, inbox, request(user_id=3, symbol="BTC/USDT:USDT", trade_type=TradeType.FUTURES, qty="0.01"))
    assert inbox.wait_for(1)[0].status is TradeStatus.FILLED
    ask = CheckPositions(user_id=3, symbols=("BTC/USDT:USDT", "ETH/USDT:USDT"), reply_to=inbox)
    ref.tell(ask)
    answer = inbox.wait_for(2)[1]
    assert isinstance(answer, VenuePositions) and answer.error is None
    assert answer.venue == "paper" and answer.user_id == 3 and answer.symbols == ask.symbols
    (held,) = answer.positions  # ETH is flat: left out
    assert held.symbol == "BTC/USDT:USDT" and held.side is PositionSide.LONG and held.qty == Decimal("0.01")
    assert held.entry_price is not None and held.liquidation_price is not None
    assert held.liquidation_price < held.entry_price
    venue.liquidate(3, "BTC/USDT:USDT")
    ref.tell(ask)
    after = inbox.wait_for(3)[2]
    assert isinstance(after, VenuePositions) and after.positions == () and after.error is None
    assert [c[1] for c in venue.calls()].count("fetch_positions") == 2  # each question is one venue call
