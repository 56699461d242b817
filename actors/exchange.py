"""ExchangeActor: one per venue. Owns the venue's rate budget, per-account order limits, the circuit breaker,
retries and the order-outcome policy of ``engine/venue.py``.

Handlers run on the actor's own thread and never wait on the I/O loop. Each turn drains the lanes (exits,
then resolves, then entries) into one batch, hands the batch to the loop as *one* coroutine that starts a task
per call, and the loop hands results back batched per loop iteration (``CallsCompleted``): two cross-thread hops
per batch instead of two per order. Timers (backoff, bans, budget refill, the breaker's cool-down) are the
injected clock's ``call_later`` -> ``tell``, so a ``FakeClock`` drives them in tests.

This module holds the intake, the rate budget and the sending. The actor composes: ``Lanes``
(``actors/exchange_lanes.py``, what waits and what is in flight), ``VenueGate`` (``actors/exchange_gate.py``,
breaker and ban, told to subscribers as ``VenueHealth``), ``OutcomeHandler`` (``actors/exchange_outcomes.py``,
what a result means, retries, replies) and ``LoopSide`` (``actors/exchange_loop.py``, its half on the I/O loop).
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

from actors.exchange_gate import VenueGate
from actors.exchange_lanes import ENTRIES, EXITS, RESOLVES, Job, Lanes
from actors.exchange_loop import LoopSide
from actors.exchange_outcomes import OutcomeHandler, order_fields, tell_quietly
from adapters.ioloop import IoLoop
from engine.clock import Clock
from engine.config import VenueConfig
from engine.control import CallResult, CallsCompleted, ExchangeDrain, ExchangeWake, SubscribeHealth
from engine.logs import get_logger
from engine.messages import CheckPositions, PlaceOrder, ResolveOrder, TradeStatus
from engine.ratelimit import AccountOrderLimiter, TokenBucket
from engine.runtime import SingletonActor
from engine.venue import VenueAdapter

log = get_logger(__name__)

_TIMER_SLACK_S = 0.002  # wake a little after the deadline, so the bucket has refilled when we look
_HOUSEKEEPING_S = 10.0
CALL_TIMEOUT_S = 30.0  # a venue call with no answer by then is UNKNOWN


class ExchangeActor(SingletonActor):
    """Answers every ``PlaceOrder`` with exactly one ``OrderOutcome`` and every ``ResolveOrder`` with one
    ``OrderOutcome``, told to ``reply_to``. Tells every ``SubscribeHealth`` subscriber each ``VenueHealth``
    change. ``status()`` (via a proxy) reports the state for the admin socket and the stats line."""

    def __init__(
        self,
        io_loop: IoLoop,
        adapter: VenueAdapter,
        config: VenueConfig,
        *,
        weight_per_minute: int,
        clock: Clock,
        call_timeout_s: float = CALL_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        """``config`` is the venue's, whole; ``weight_per_minute`` what is left of its budget for this actor (the
        price feed takes its share first, ``node.venues.order_weight_per_minute``), enforced over a sliding
        ``config.weight_window_s``. Orders carry ``config.name`` (``binance-futures`` on ``binance``)."""
        super().__init__()
        self._io = io_loop
        self._adapter = adapter
        self._venue = config.name
        self._config = config
        self._weight_per_minute = weight_per_minute
        self._call_timeout_s = call_timeout_s
        capacity = max(1, math.floor(weight_per_minute * config.weight_window_s / 60))
        self._bucket = TokenBucket(capacity=capacity, window_s=config.weight_window_s)
        self._accounts = AccountOrderLimiter(max_orders=config.orders_per_second_per_account, window_s=1.0)
        self._max_in_flight = config.max_in_flight
        self._clock = clock
        self._lanes = Lanes()
        self._gate = VenueGate(self._venue, config)
        self._counters = dict.fromkeys(
            ("sent", "filled", "rejected", "failed", "refused", "unknown", "retries", "resolved", "batches"),
            0,
        )
        self._outcomes = OutcomeHandler(
            self._venue, config, gate=self._gate, lanes=self._lanes, counters=self._counters, rng=rng or random.Random()
        )
        self._job_ids = itertools.count(1)
        self._drain_pending = False
        self._timer_at: float | None = None
        self._housekept_at = clock.monotonic()
        self._loop_side = LoopSide(self._deliver, call_timeout_s)

    # ------------------------------------------------------------------------------------------------------
    # Hooks and public API (actor thread)
    # ------------------------------------------------------------------------------------------------------

    def on_start(self) -> None:
        log.info(
            "exchange.started",
            venue=self._venue,
            weight_per_minute=self._weight_per_minute,
            call_timeout_s=self._call_timeout_s,
            **self._config_fields(),
        )

    def on_receive(self, message: Any) -> Any:
        try:
            if isinstance(message, CallsCompleted):
                self._on_completed(message)
            elif isinstance(message, PlaceOrder):
                self._on_place(message)
            elif isinstance(message, ResolveOrder) and self._outcomes.is_placing(message.client_order_id):
                self._outcomes.still_placing(message)
            elif isinstance(message, ResolveOrder | CheckPositions):
                self._enqueue(message, RESOLVES)
            elif isinstance(message, ExchangeDrain):
                self._drain_pending = False
                self._drain()
            elif isinstance(message, ExchangeWake):
                if self._timer_at == message.at:
                    self._timer_at = None
                self._drain()
            elif isinstance(message, SubscribeHealth):
                self._gate.subscribe(message.subscriber)
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
                job = self._lanes.in_flight.pop(result.job_id, None)
                if job is None:
                    continue
                if job.weight:
                    self._bucket.settle(job.weight, now)
                self._outcomes.on_result(job, result, now)
            except Exception:  # one bad result must not cost the others their outcome
                log.exception("exchange.result_failed", venue=self._venue, job_id=result.job_id)
        self._arm_reopen()
        self._schedule_drain()

    def status(self) -> dict[str, Any]:
        """For the admin socket, the stats line and tests: ``actor_ref.proxy().status().get()``."""
        now = self._clock.monotonic()
        self._gate.poll(now)
        lanes, banned_until = self._lanes, self._gate.banned_until
        return {
            "venue": self._venue,
            "breaker": str(self._gate.breaker.state),
            "weight_capacity": self._bucket.capacity,
            "weight_available": self._bucket.available(now),
            "in_flight": len(lanes.in_flight),
            "queued_exits": len(lanes.queues[EXITS]),
            "queued_entries": len(lanes.queues[ENTRIES]),
            "queued_resolves": len(lanes.queues[RESOLVES]),
            "waiting_retry": len(lanes.delayed),
            "banned_until": banned_until,
            "banned_for_s": max(0.0, banned_until - now) if banned_until else 0.0,
            "counters": dict(self._counters),
        }

    def _config_fields(self) -> dict[str, Any]:
        c = self._config
        return {
            "weight_window_s": c.weight_window_s,
            "orders_per_second_per_account": c.orders_per_second_per_account,
            "max_in_flight": c.max_in_flight,
            "retry_max_attempts": c.retry_max_attempts,
            "retry_base_ms": c.retry_base_ms,
            "retry_max_ms": c.retry_max_ms,
            "breaker_error_rate": c.breaker_error_rate,
            "breaker_min_requests": c.breaker_min_requests,
            "breaker_window_s": c.breaker_window_s,
            "breaker_cooldown_s": c.breaker_cooldown_s,
            "unknown_grace_s": c.unknown_grace_s,
        }

    # ------------------------------------------------------------------------------------------------------
    # Intake
    # ------------------------------------------------------------------------------------------------------

    def _on_place(self, message: PlaceOrder) -> None:
        request = message.request
        self._outcomes.taken(message)
        if request.venue != self._venue:
            self._outcomes.finish(message, TradeStatus.FAILED, error="wrong_venue")
            return
        if not request.is_exit:
            self._gate.poll(self._clock.monotonic())
            if self._gate.entries_refused:
                self._outcomes.refuse(message)
                return
        self._enqueue(message, EXITS if request.is_exit else ENTRIES)

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
        self._lanes.push(Job(next(self._job_ids), message, lane, weight))
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        # Every message already in the inbox is handled before the ExchangeDrain: a burst becomes one batch.
        if not self._drain_pending:
            self._drain_pending = True
            self.actor_ref.tell(ExchangeDrain())

    # ------------------------------------------------------------------------------------------------------
    # Sending
    # ------------------------------------------------------------------------------------------------------

    def _drain(self) -> None:
        now = self._clock.monotonic()
        gate = self._gate
        gate.poll(now)
        if gate.entries_refused:
            self._refuse_queued_entries()
        if gate.banned(now):
            self._arm_reopen()
            return
        self._lanes.release_due(now)
        if gate.entries_refused:
            self._refuse_queued_entries()
        batch, wake = self._take_batch(now)
        if batch:
            self._launch(batch)
        retry_at = self._lanes.next_retry_at()
        if retry_at is not None:
            wake = min(wake, retry_at)
        if wake < math.inf:
            self._arm(wake)
        self._arm_reopen()
        if now - self._housekept_at > _HOUSEKEEPING_S:
            self._housekeeping(now)

    def _take_batch(self, now: float) -> tuple[list[Job], float]:
        """The jobs that may go now, lane by lane in strict priority, and when to look again (``inf``: no need)."""
        batch: list[Job] = []
        wake = math.inf
        in_flight = self._lanes.in_flight
        for lane in self._lanes.queues:
            blocked_accounts: list[Job] = []
            budget_left = True
            while lane and len(in_flight) < self._max_in_flight:
                job = lane.popleft()
                is_order = isinstance(job.message, PlaceOrder)
                if job.lane == ENTRIES and not self._gate.breaker.allows(is_exit=False):
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
                if job.lane == ENTRIES:
                    job.probe = self._gate.breaker.try_pass(is_exit=False)[1]
                job.attempts += 1
                in_flight[job.job_id] = job
                batch.append(job)
            lane.extendleft(reversed(blocked_accounts))
            if not budget_left:
                log.debug("rate.queued", venue=self._venue, queued=self._lanes.queued())
                break  # strict priority: lower lanes must not take the budget an exit is waiting for
        return batch, wake

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

    def _arm_reopen(self) -> None:
        """Wake when the ban or the open breaker's cool-down ends, so the change is told then, unpolled."""
        at = self._gate.reopens_at()
        if at is not None:
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self._timer_at is not None and self._timer_at <= at:
            return
        self._timer_at = at
        delay_s = max(0.0, at - self._clock.monotonic()) + _TIMER_SLACK_S
        ref, wake = self.actor_ref, ExchangeWake(at)
        self._clock.call_later(delay_s, lambda: tell_quietly(ref, wake))

    def _refuse_queued_entries(self) -> None:
        """The breaker is open: entries waiting here (or for a retry) will not go; tell their owners now."""
        for job in self._lanes.take_entries():
            self._outcomes.refuse(job.message)

    def _housekeeping(self, now: float) -> None:
        self._housekept_at = now
        self._accounts.prune(now)
        self._outcomes.prune(now)
