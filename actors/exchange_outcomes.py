"""What a venue call's result means for its order: the order-outcome policy of ``engine/venue.py``, retries with
backoff, and the one reply every request gets. One ``OutcomeHandler``, composed by ``ExchangeActor``
(``actors/exchange.py``), which gives it the venue's gate (breaker and ban), its lanes and its counters.

Everything here runs on the actor's own thread, inside its handlers (results arrive as ``CallsCompleted`` from
``actors/exchange_loop.py``); replies are ``tell``s, never waits.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pykka

from actors.exchange_gate import VenueGate
from actors.exchange_lanes import Job, Lanes
from engine.backoff import backoff_s
from engine.config import VenueConfig
from engine.control import CallResult
from engine.logs import get_logger
from engine.messages import (
    CheckPositions,
    OrderOutcome,
    OrderRequest,
    PlaceOrder,
    ResolveOrder,
    TradeStatus,
    VenueOrder,
    VenuePositions,
)

log = get_logger(__name__)


def tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    """``ref.tell(message)``, unless the actor is gone."""
    with contextlib.suppress(pykka.ActorDeadError):  # shutting down: nobody is left to act on it
        ref.tell(message)


def _tell_reply(ref: Any, message: Any) -> None:
    if ref is not None:
        tell_quietly(ref, message)


class OutcomeHandler:
    """Result handling, retries and replies of one ``ExchangeActor`` (see the module docstring)."""

    def __init__(
        self,
        venue: str,
        config: VenueConfig,
        *,
        gate: VenueGate,
        lanes: Lanes,
        counters: dict[str, int],
        rng: random.Random,
    ) -> None:
        self._venue = venue
        self._gate = gate
        self._lanes = lanes
        self._counters = counters
        self._rng = rng
        self._retry_max_attempts = config.retry_max_attempts
        self._retry_base_s = config.retry_base_ms / 1000
        self._retry_max_s = config.retry_max_ms / 1000
        self._unknown_grace_s = config.unknown_grace_s
        self._unknown_since: dict[str, float] = {}  # client order id -> when it went UNKNOWN
        self._placing: dict[str, int] = {}  # client order id -> PlaceOrders taken and not yet answered

    def taken(self, message: PlaceOrder) -> None:
        """A ``PlaceOrder`` arrived: until it is answered, a resolve of its id is deferred (``still_placing``)."""
        cid = message.request.client_order_id
        self._placing[cid] = self._placing.get(cid, 0) + 1

    def is_placing(self, client_order_id: str) -> bool:
        return client_order_id in self._placing

    def prune(self, now: float) -> None:
        """Forget orders that went UNKNOWN longer ago than the grace (housekeeping)."""
        horizon = now - self._unknown_grace_s
        for cid in [c for c, since in self._unknown_since.items() if since < horizon]:
            del self._unknown_since[cid]

    # ------------------------------------------------------------------------------------------------------
    # Results
    # ------------------------------------------------------------------------------------------------------

    def on_result(self, job: Job, result: CallResult, now: float) -> None:
        """The call of ``job`` ended with ``result``: the venue's health, then the answer, retry or requeue."""
        self._gate.record(result.error, probe=job.probe, now=now, ban_s=result.ban_s)
        job.probe = False
        if isinstance(job.message, PlaceOrder):
            self._on_order_result(job, job.message, result, now)
        elif isinstance(job.message, CheckPositions):
            self._on_positions_result(job, job.message, result, now)
        else:
            self._on_resolve_result(job, job.message, result, now)

    def _on_order_result(self, job: Job, message: PlaceOrder, result: CallResult, now: float) -> None:
        request = message.request
        if result.error is None and result.order is not None:
            self._finish_with_order(message, result.order, attempts=job.attempts)
        elif result.error == "rejected":
            self.finish(message, TradeStatus.REJECTED, error=result.message)
        elif result.error == "retryable":
            self._retry_or_fail(job, result, now)
        elif result.error == "banned":
            if request.is_exit:
                job.attempts -= 1  # not the order's fault: it goes again when the ban ends
                self._lanes.push_front(job)
            else:
                self.refuse(message)
        elif result.error == "not_sent":
            self.finish(message, TradeStatus.FAILED, error=f"not_sent: {result.message}")
        else:  # sent, and no trustworthy answer: never re-send blindly, reconcile by client order id
            self._unknown_since.setdefault(request.client_order_id, now)
            self._counters["unknown"] += 1
            log.warning("order.unknown", error=result.message, attempt=job.attempts, **order_fields(request))
            self._reply(
                message,
                OrderOutcome(client_order_id=request.client_order_id, status=TradeStatus.UNKNOWN, error=result.message),
            )

    def _on_resolve_result(self, job: Job, message: ResolveOrder, result: CallResult, now: float) -> None:
        cid = message.client_order_id
        fields = {"venue": self._venue, "user_id": message.user_id, "client_order_id": cid}
        if result.error is None:
            if result.order is not None:
                self._unknown_since.pop(cid, None)
                self._counters["resolved"] += 1
                log.info("order.resolved", status=str(result.order.status), **fields)
                self._reply(message, _outcome(result.order))
                return
            since = self._unknown_since.get(cid)
            if since is not None and now - since < self._unknown_grace_s:
                # The venue may not have processed it yet: a "not found" this early proves nothing.
                self._reply(
                    message,
                    OrderOutcome(client_order_id=cid, status=TradeStatus.UNKNOWN, error="not_found_yet"),
                )
                return
            self._unknown_since.pop(cid, None)
            log.info("order.resolved", status="not_found", **fields)
            self._reply(message, OrderOutcome(client_order_id=cid, status=TradeStatus.FAILED, error="not_found"))
        elif not self._read_again(job, result, now):
            log.warning("order.resolve_failed", error=result.message, **fields)
            self._reply(message, OrderOutcome(client_order_id=cid, status=TradeStatus.UNKNOWN, error=result.message))

    def _read_again(self, job: Job, result: CallResult, now: float) -> bool:
        """A read (resolve, positions) that failed in a way worth another try: after a backoff (retryable, attempts
        left) or when a ban ends (not counted as an attempt). False: give the failure to the asker."""
        if result.error == "retryable" and job.attempts < self._retry_max_attempts:
            self._schedule_retry(job, result, now)
            return True
        if result.error == "banned":
            job.attempts -= 1
            self._lanes.push_front(job)
            return True
        return False

    def _on_positions_result(self, job: Job, message: CheckPositions, result: CallResult, now: float) -> None:
        fields = {"venue": self._venue, "user_id": message.user_id}
        if result.error is None:
            asked = set(message.symbols)
            held = tuple(p for p in result.positions or () if not asked or p.symbol in asked)
            answer = VenuePositions(venue=self._venue, user_id=message.user_id, symbols=message.symbols, positions=held)
            _tell_reply(message.reply_to, answer)
        elif not self._read_again(job, result, now):
            log.warning("positions.check_failed", error=result.message, **fields)
            error = result.message or "failed"
            answer = VenuePositions(venue=self._venue, user_id=message.user_id, symbols=message.symbols, error=error)
            _tell_reply(message.reply_to, answer)

    def _retry_or_fail(self, job: Job, result: CallResult, now: float) -> None:
        message = job.message
        assert isinstance(message, PlaceOrder)
        if job.attempts >= self._retry_max_attempts:
            error = f"retries_exhausted: {result.message}"
            log.warning("order.failed", error=error, attempt=job.attempts, **order_fields(message.request))
            self.finish(message, TradeStatus.FAILED, error=error)
            return
        self._schedule_retry(job, result, now)

    def _schedule_retry(self, job: Job, result: CallResult, now: float) -> None:
        # The one backoff rule (engine.backoff); the venue's Retry-After is a floor.
        jittered_s = backoff_s(job.attempts, base_s=self._retry_base_s, cap_s=self._retry_max_s, rng=self._rng)
        delay_s = max(jittered_s, result.retry_after_s or 0.0)
        self._lanes.delay(job, now + delay_s)
        self._counters["retries"] += 1
        fields = (
            order_fields(job.message.request)
            if isinstance(job.message, PlaceOrder)
            else {
                "venue": self._venue,
                "client_order_id": job.client_order_id,
                "user_id": job.user_id,
            }
        )
        log.info("order.retry", attempt=job.attempts, delay_s=round(delay_s, 3), error=result.message, **fields)

    # ------------------------------------------------------------------------------------------------------
    # Replies and logs
    # ------------------------------------------------------------------------------------------------------

    def _finish_with_order(self, message: PlaceOrder, order: VenueOrder, *, attempts: int) -> None:
        fields = order_fields(message.request)
        if order.status in (TradeStatus.FILLED, TradeStatus.PARTIALLY_FILLED):
            self._counters["filled"] += 1
            log.info(
                "order.filled",
                status=str(order.status),
                filled_qty=order.filled_qty,
                avg_price=order.avg_price,
                fee_usdt=order.fee_usdt,
                exchange_order_id=order.exchange_order_id,
                attempts=attempts,
                **fields,
            )
        elif order.status is TradeStatus.REJECTED:
            self._counters["rejected"] += 1
            log.info("order.rejected", exchange_order_id=order.exchange_order_id, **fields)
        else:
            log.info(
                "order.accepted",
                status=str(order.status),
                exchange_order_id=order.exchange_order_id,
                **fields,
            )
        self._reply(message, _outcome(order))

    def finish(self, message: PlaceOrder, status: TradeStatus, *, error: str) -> None:
        if status is TradeStatus.REJECTED:
            self._counters["rejected"] += 1
            log.info("order.rejected", error=error, **order_fields(message.request))
        else:
            self._counters["failed"] += 1
        cid = message.request.client_order_id
        self._reply(message, OrderOutcome(client_order_id=cid, status=status, error=error))

    def refuse(self, message: PlaceOrder | ResolveOrder | CheckPositions) -> None:
        assert isinstance(message, PlaceOrder)
        self._counters["refused"] += 1
        log.info("order.refused", reason="venue_unavailable", **order_fields(message.request))
        cid = message.request.client_order_id
        self._reply(message, OrderOutcome(client_order_id=cid, status=TradeStatus.FAILED, error="venue_unavailable"))

    def _reply(self, message: PlaceOrder | ResolveOrder, outcome: OrderOutcome) -> None:
        if isinstance(message, PlaceOrder):
            cid = message.request.client_order_id
            left = self._placing.get(cid, 0) - 1
            if left > 0:
                self._placing[cid] = left
            else:
                self._placing.pop(cid, None)
        if message.reply_to is not None:
            tell_quietly(message.reply_to, outcome)

    def still_placing(self, message: ResolveOrder) -> None:
        """A resolve for an order this actor has not sent or not heard back about yet (queued behind the rate
        budget or a ban, waiting for a retry, in flight): the venue's "not found" would prove nothing, and its
        ``PlaceOrder`` will be answered in time. SUBMITTED tells the follower to keep waiting."""
        cid = message.client_order_id
        log.info("order.resolve_deferred", venue=self._venue, user_id=message.user_id, client_order_id=cid)
        self._reply(message, OrderOutcome(client_order_id=cid, status=TradeStatus.SUBMITTED, error="still_placing"))


def order_fields(request: OrderRequest) -> dict[str, Any]:
    """Correlation fields of every order log line."""
    return {
        "venue": request.venue,
        "client_order_id": request.client_order_id,
        "user_id": request.user_id,
        "signal_id": request.signal_id,
        "symbol": request.symbol,
        "side": str(request.side),
        "qty": request.qty,
        "reduce_only": request.reduce_only,
    }


def _outcome(order: VenueOrder) -> OrderOutcome:
    return OrderOutcome(
        client_order_id=order.client_order_id,
        status=order.status,
        exchange_order_id=order.exchange_order_id,
        filled_qty=order.filled_qty,
        avg_price=order.avg_price,
        fee_usdt=order.fee_usdt,
        fee_base=order.fee_base,
    )
