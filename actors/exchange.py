"""ExchangeActor: one per venue. Owns the venue's rate budget, per-account order limits, the circuit breaker,
retries and the order-outcome policy of ``engine/venue.py``.

Handlers run on the actor's own thread and never wait on the I/O loop. Each turn drains the queues (exits,
then resolves, then entries) into one batch, hands the batch to the loop as *one* coroutine that starts a task
per call, and the loop hands results back batched per loop iteration (``CallsCompleted``): two cross-thread hops
per batch instead of two per order. Timers (backoff, bans, budget refill) are the injected clock's ``call_later`` ->
``tell``, so a ``FakeClock`` drives them in tests.

This module holds the intake, the lanes, the rate budget and the sending; what a result means (the outcome
policy, retries, bans, replies) is the mixin ``ExchangeOutcomes`` in ``actors/exchange_outcomes.py``, and the
half on the I/O loop is ``actors/exchange_loop.py``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from actors.exchange_loop import LoopSide
from actors.exchange_outcomes import ExchangeOutcomes, Job, order_fields, tell_quietly
from adapters.ioloop import IoLoop
from engine.breaker import BreakerState, CircuitBreaker
from engine.clock import SYSTEM_CLOCK, Clock
from engine.control import CallResult, CallsCompleted, ExchangeDrain, ExchangeWake
from engine.logs import get_logger
from engine.messages import CheckPositions, PlaceOrder, ResolveOrder, TradeStatus
from engine.ratelimit import AccountOrderLimiter, TokenBucket
from engine.runtime import SingletonActor
from engine.venue import VenueAdapter

log = get_logger(__name__)

_TIMER_SLACK_S = 0.002  # wake a little after the deadline, so the bucket has refilled when we look
_HOUSEKEEPING_S = 10.0

# ----------------------------------------------------------------------------------------------------------
# Actor-thread bookkeeping
# ----------------------------------------------------------------------------------------------------------

_EXITS, _RESOLVES, _ENTRIES = 0, 1, 2


# ----------------------------------------------------------------------------------------------------------
# The actor
# ----------------------------------------------------------------------------------------------------------


class ExchangeActor(ExchangeOutcomes, SingletonActor):
    """Answers every ``PlaceOrder`` with exactly one ``OrderOutcome`` and every ``ResolveOrder`` with one
    ``OrderOutcome``, told to ``reply_to``. ``status()`` (via a proxy) reports the state for the admin
    socket."""

    def __init__(
        self,
        io_loop: IoLoop,
        adapter: VenueAdapter,
        *,
        weight_per_minute: int = 6000,
        weight_window_s: float = 60.0,
        orders_per_second_per_account: int = 10,
        max_in_flight: int = 512,
        retry_max_attempts: int = 5,
        retry_base_ms: float = 100.0,
        retry_max_ms: float = 5000.0,
        breaker_error_rate: float = 0.5,
        breaker_min_requests: int = 20,
        breaker_window_s: float = 30.0,
        breaker_cooldown_s: float = 15.0,
        unknown_grace_s: float = 60.0,
        call_timeout_s: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        venue: str | None = None,
    ) -> None:
        """``weight_per_minute`` is enforced over a sliding ``weight_window_s`` (the venue's own window, 60 s
        everywhere we trade; shorter in tests). ``retry_max_attempts`` counts the first attempt. ``venue`` is the
        configured venue name when it differs from the adapter's (``binance-futures`` on ``binance``)."""
        super().__init__()
        self._io = io_loop
        self._adapter = adapter
        self._venue = venue or adapter.name  # the configured name ("binance-futures"), which orders carry
        self._settings = {
            "weight_per_minute": weight_per_minute,
            "weight_window_s": weight_window_s,
            "orders_per_second_per_account": orders_per_second_per_account,
            "max_in_flight": max_in_flight,
            "retry_max_attempts": retry_max_attempts,
            "retry_base_ms": retry_base_ms,
            "retry_max_ms": retry_max_ms,
            "breaker_error_rate": breaker_error_rate,
            "breaker_min_requests": breaker_min_requests,
            "breaker_window_s": breaker_window_s,
            "breaker_cooldown_s": breaker_cooldown_s,
            "unknown_grace_s": unknown_grace_s,
            "call_timeout_s": call_timeout_s,
        }
        capacity = max(1, math.floor(weight_per_minute * weight_window_s / 60))
        self._bucket = TokenBucket(capacity=capacity, window_s=weight_window_s)
        self._accounts = AccountOrderLimiter(max_orders=orders_per_second_per_account, window_s=1.0)
        self._breaker = CircuitBreaker(
            window_s=breaker_window_s,
            min_requests=breaker_min_requests,
            error_rate_threshold=breaker_error_rate,
            cool_down_s=breaker_cooldown_s,
        )
        self._max_in_flight = max_in_flight
        self._retry_max_attempts = retry_max_attempts
        self._retry_base_s = retry_base_ms / 1000
        self._retry_max_s = retry_max_ms / 1000
        self._unknown_grace_s = unknown_grace_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._lanes: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        self._delayed: list[tuple[float, int, Job]] = []  # heap of retries waiting for their backoff
        self._in_flight: dict[int, Job] = {}
        self._unknown_since: dict[str, float] = {}  # client order id -> when it went UNKNOWN
        self._placing: dict[str, int] = {}  # client order id -> PlaceOrders taken and not yet answered
        self._job_ids = itertools.count(1)
        self._drain_pending = False
        self._timer_at: float | None = None
        self._banned_until: float | None = None
        self._housekept_at = clock.monotonic()
        self._counters = dict.fromkeys(
            ("sent", "filled", "rejected", "failed", "refused", "unknown", "retries", "resolved", "batches"),
            0,
        )
        self._loop_side = LoopSide(self._deliver, call_timeout_s)

    # ------------------------------------------------------------------------------------------------------
    # Hooks and public API (actor thread)
    # ------------------------------------------------------------------------------------------------------

    def on_start(self) -> None:
        log.info("exchange.started", venue=self._venue, **self._settings)

    def on_receive(self, message: Any) -> Any:
        try:
            if isinstance(message, CallsCompleted):
                self._on_completed(message)
            elif isinstance(message, PlaceOrder):
                self._on_place(message)
            elif isinstance(message, ResolveOrder) and message.client_order_id in self._placing:
                self._still_placing(message)
            elif isinstance(message, ResolveOrder | CheckPositions):
                self._enqueue(message, _RESOLVES)
            elif isinstance(message, ExchangeDrain):
                self._drain_pending = False
                self._drain()
            elif isinstance(message, ExchangeWake):
                if self._timer_at == message.at:
                    self._timer_at = None
                self._drain()
            else:
                log.warning("exchange.unexpected_message", venue=self._venue, type=type(message).__name__)
        except Exception:
            # The engine never dies on a bad message; what is lost is logged with its ids.
            log.exception("exchange.handler_failed", venue=self._venue, type=type(message).__name__)
        return None

    def _on_completed(self, message: CallsCompleted) -> None:
        now = self._clock.monotonic()
        for result in message.results:
            try:
                self._on_result(result, now)
            except Exception:  # one bad result must not cost the others their outcome
                log.exception("exchange.result_failed", venue=self._venue, job_id=result.job_id)
        self._schedule_drain()

    def status(self) -> dict[str, Any]:
        """For the admin socket and tests: ``actor_ref.proxy().status().get()``."""
        now = self._clock.monotonic()
        self._apply(self._breaker.poll(now))
        return {
            "venue": self._venue,
            "breaker": str(self._breaker.state),
            "weight_capacity": self._bucket.capacity,
            "weight_available": self._bucket.available(now),
            "in_flight": len(self._in_flight),
            "queued_exits": len(self._lanes[_EXITS]),
            "queued_entries": len(self._lanes[_ENTRIES]),
            "queued_resolves": len(self._lanes[_RESOLVES]),
            "waiting_retry": len(self._delayed),
            "banned_until": self._banned_until,
            "banned_for_s": max(0.0, self._banned_until - now) if self._banned_until else 0.0,
            "counters": dict(self._counters),
        }

    # ------------------------------------------------------------------------------------------------------
    # Intake
    # ------------------------------------------------------------------------------------------------------

    def _on_place(self, message: PlaceOrder) -> None:
        request = message.request
        self._placing[request.client_order_id] = self._placing.get(request.client_order_id, 0) + 1
        if request.venue != self._venue:
            self._finish(message, TradeStatus.FAILED, error="wrong_venue")
            return
        if not request.is_exit:
            self._apply(self._breaker.poll(self._clock.monotonic()))
            if self._breaker.state is BreakerState.OPEN:
                self._refuse(message)
                return
        self._enqueue(message, _EXITS if request.is_exit else _ENTRIES)

    def _enqueue(self, message: PlaceOrder | ResolveOrder | CheckPositions, lane: int) -> None:
        operation = (
            "create_order"
            if isinstance(message, PlaceOrder)
            else "fetch_positions"
            if isinstance(message, CheckPositions)
            else "fetch_order"
        )
        # A first futures order also sets leverage: the adapter says what the order costs.
        if isinstance(message, PlaceOrder):
            weight = self._adapter.order_weight(message.request)
        else:
            weight = self._adapter.request_weight(operation)
        # A call heavier than the whole budget could never go; let it use the whole budget instead.
        weight = min(weight, self._bucket.capacity)
        self._lanes[lane].append(Job(next(self._job_ids), message, lane, weight))
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        # Every message already in the inbox is handled before the _Drain: a burst becomes one batch.
        if not self._drain_pending:
            self._drain_pending = True
            self.actor_ref.tell(ExchangeDrain())

    # ------------------------------------------------------------------------------------------------------
    # Sending
    # ------------------------------------------------------------------------------------------------------

    def _drain(self) -> None:
        now = self._clock.monotonic()
        self._apply(self._breaker.poll(now))
        if self._breaker.state is BreakerState.OPEN:
            self._refuse_queued_entries(now)
        if self._banned_until is not None:
            if now < self._banned_until:
                self._arm(self._banned_until)
                return
            self._banned_until = None
            log.info("venue.unbanned", venue=self._venue)
        self._release_due_retries(now)
        if self._breaker.state is BreakerState.OPEN:
            self._refuse_queued_entries(now)
        batch: list[Job] = []
        wake = math.inf
        for lane in self._lanes:
            blocked_accounts: list[Job] = []
            budget_left = True
            while lane and len(self._in_flight) < self._max_in_flight:
                job = lane.popleft()
                is_order = isinstance(job.message, PlaceOrder)
                if job.lane == _ENTRIES and not self._breaker.allows(is_exit=False):
                    lane.appendleft(job)  # half-open: wait for the probe's verdict
                    break
                account_wait = self._accounts.wait_time(job.user_id, now) if is_order else 0.0
                if account_wait > 0:
                    blocked_accounts.append(job)
                    wake = min(wake, now + account_wait)
                    continue
                # Weight 0: a call the adapter answers without a request (spot positions): no budget to take.
                if job.weight and not self._bucket.try_acquire(job.weight, now, hold=True):
                    lane.appendleft(job)
                    wake = min(wake, now + self._bucket.wait_time(job.weight, now))
                    budget_left = False
                    break
                if is_order:
                    self._accounts.try_acquire(job.user_id, now)
                if job.lane == _ENTRIES:
                    job.probe = self._breaker.try_pass(is_exit=False)[1]
                job.attempts += 1
                self._in_flight[job.job_id] = job
                batch.append(job)
            lane.extendleft(reversed(blocked_accounts))
            if not budget_left:
                log.debug("rate.queued", venue=self._venue, queued=sum(map(len, self._lanes)))
                break  # strict priority: lower lanes must not take the budget an exit is waiting for
        if batch:
            self._launch(batch)
        if self._delayed:
            wake = min(wake, self._delayed[0][0])
        if wake < math.inf:
            self._arm(wake)
        if now - self._housekept_at > _HOUSEKEEPING_S:
            self._housekeeping(now)

    def _launch(self, batch: list[Job]) -> None:
        calls: list[tuple[int, Callable[[], Awaitable[Any]]]] = []
        for job in batch:
            msg = job.message
            if isinstance(msg, PlaceOrder):
                calls.append((job.job_id, functools.partial(self._adapter.create_order, msg.request)))
                self._counters["sent"] += 1
                log.debug("order.submitted", attempt=job.attempts, **order_fields(msg.request))
            elif isinstance(msg, CheckPositions):
                fetch_positions = functools.partial(
                    self._adapter.fetch_positions, user_id=msg.user_id, symbols=list(msg.symbols)
                )
                calls.append((job.job_id, fetch_positions))
            else:
                fetch = functools.partial(
                    self._adapter.fetch_order_by_client_id,
                    user_id=msg.user_id,
                    symbol=msg.symbol,
                    trade_type=msg.trade_type,
                    client_order_id=msg.client_order_id,
                )
                calls.append((job.job_id, fetch))
        self._counters["batches"] += 1
        try:
            self._io.submit(self._loop_side.start(calls), self._on_start_done)
        except RuntimeError as exc:  # the loop is closed: nothing was sent
            results = tuple(CallResult(job_id=job.job_id, error="not_sent", message=str(exc)) for job in batch)
            self.on_receive(CallsCompleted(results))

    def _on_start_done(self, future: concurrent.futures.Future[None]) -> None:
        # Loop thread. ``start`` only creates tasks; it fails only when the loop is going away.
        if not future.cancelled() and future.exception() is not None:
            log.error("exchange.launch_failed", venue=self._venue, error=str(future.exception()))

    def _deliver(self, results: tuple[CallResult, ...]) -> None:
        tell_quietly(self.actor_ref, CallsCompleted(results))  # loop thread

    def _arm(self, at: float) -> None:
        if self._timer_at is not None and self._timer_at <= at:
            return
        self._timer_at = at
        delay_s = max(0.0, at - self._clock.monotonic()) + _TIMER_SLACK_S
        ref, wake = self.actor_ref, ExchangeWake(at)
        self._clock.call_later(delay_s, lambda: tell_quietly(ref, wake))

    def _refuse_queued_entries(self, now: float) -> None:
        """The breaker is open: entries waiting here (or for a retry) will not go; tell their owners now."""
        entries = self._lanes[_ENTRIES]
        while entries:
            self._refuse(entries.popleft().message)
        waiting = [item for item in self._delayed if item[2].lane == _ENTRIES]
        if waiting:
            self._delayed = [item for item in self._delayed if item[2].lane != _ENTRIES]
            heapq.heapify(self._delayed)
            for _, _, job in sorted(waiting):
                self._refuse(job.message)

    def _release_due_retries(self, now: float) -> None:
        due: list[Job] = []
        while self._delayed and self._delayed[0][0] <= now:
            due.append(heapq.heappop(self._delayed)[2])
        for job in reversed(due):  # oldest at the front of its lane
            self._lanes[job.lane].appendleft(job)

    def _housekeeping(self, now: float) -> None:
        self._housekept_at = now
        self._accounts.prune(now)
        horizon = now - self._unknown_grace_s
        for cid in [c for c, since in self._unknown_since.items() if since < horizon]:
            del self._unknown_since[cid]
