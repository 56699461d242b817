"""SignalRouterActor: takes signals, drops duplicates and expired entries, fans out one message per follower.

Runs as a ``pykka.ThreadingActor`` (one long-lived singleton). It keeps an in-memory index
whale_id -> follower refs (the ``FollowerDirectory``, rebuilt from the database at start and on follow changes),
orders queued signals by priority then age (never one ahead of an earlier one of the same whale and symbol: see
``_WaitingSignals``), and marks a signal PROCESSED once every follower answered (``FollowerDecision``) and
every order it sent is final (``CopyOutcome``): its counts are the venue's outcomes (``actors/router_copies.py``).
Nothing here blocks: followers answer with messages. An expired exit is fanned out all the same (an exit of any
age closes a copy); a follower holding an exit for its entry's outcome says so (``CopyHeld``), and the stale
sweep waits for it (``actors/router_holds.py``).

Back-pressure: while ``max_pending_copies`` follower copies are out (told and not yet answered; a follower
answers a copy once its order is sent), or the persistence actor's write queue is past its high-water mark
(``SetBacklog``), new signals wait here in priority order, a few structs each, instead of as millions of messages
in follower mailboxes and rows in the write queue: memory stays bounded when signals come faster than the engine
copies them (``router.backpressure``), and a high-priority signal still overtakes the waiting ones. Without a
backlog, a signal is always let through when nothing is out, however many followers it has.

Draining: the router is the one owner of "the engine is draining" (``SetDraining``, from the node). While it
drains, nothing is fanned out: waiting signals stay for a resume or the next run. Copies told before the drain
began go on (they were decided before it; a drain lets in-flight orders finish). The admin asks ``draining``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pykka

from actors.router_copies import LateOutcomes, SignalCopies
from actors.router_holds import HeldCopies
from actors.router_queue import WaitingSignals
from engine import metrics
from engine.clock import Clock
from engine.config import SignalsConfig
from engine.control import (
    CopyHeld,
    CopyOutcome,
    RemoveFollower,
    RouterDrain,
    RouteSignal,
    SetBacklog,
    SetDraining,
    SetFollowers,
    SetKnownWhales,
    SetWhalePaused,
    SweepStale,
    UpdateFollower,
)
from engine.events import SignalExpired, SignalProcessed
from engine.logs import get_logger
from engine.messages import (
    CopySignal,
    FollowerDecision,
    PersistRows,
    Signal,
    SignalStatus,
    SignalStatusRow,
)
from engine.runtime import SingletonActor
from engine.signals import EXIT_ACTIONS

log = get_logger(__name__)

# How many external ids the router remembers for in-memory de-duplication; the UNIQUE constraint on
# whale_signals.external_id is the durable guard, this one saves a round trip for bursts of repeats.
_DEDUPE_MEMORY = 100_000


# How many signals the router remembers outcomes for while they are not in flight (``LateOutcomes``).
_LATE_MEMORY = 10_000


class SignalRouterActor(SingletonActor):
    """Fans signals out to follower actors. ``persistence`` gets signal status rows and events;
    ``mark_price`` (symbol, trade_type) -> Decimal | None reads the price feeds' published marks. ``clock``
    stamps receipt, expiry and the stale sweep's ages."""

    def __init__(
        self,
        *,
        persistence: Any,
        mark_price: Any,
        publish: Any,
        config: SignalsConfig,
        clock: Clock,
    ) -> None:
        super().__init__()
        self._clock = clock
        self._max_pending_copies = config.max_pending_copies
        self._pending_copies = 0  # copies told and not yet answered, over every in-flight signal
        self._held_since_ns = 0  # when back-pressure began holding signals (0: not holding)
        self._backlog_high = False
        self._persistence = persistence
        self._mark_price = mark_price
        self._publish = publish
        self._refs: dict[int, Any] = {}
        self._by_whale: dict[int, list[Any]] = {}
        self._follows: dict[int, tuple[int, ...]] = {}
        self._known_whales: frozenset[int] = frozenset()
        self._queue = WaitingSignals()
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._in_flight: dict[int, SignalCopies] = {}
        self._late = LateOutcomes(_LATE_MEMORY)  # outcomes of signals not in flight
        self._draining = False
        self._drain_scheduled = False
        self._paused_whales: set[int] = set()
        self._held = HeldCopies()  # exits followers hold for their entry's outcome: the stale sweep waits for them

    # ---- messages ---------------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        try:
            self._dispatch(message)
        except Exception as exc:
            log.exception("router.handler_failed", message_type=type(message).__name__, error=repr(exc))

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, FollowerDecision):
            self._held.release(message.signal_id, message.user_id)
            self._on_decision(message)
        elif isinstance(message, CopyHeld):
            if message.signal_id in self._in_flight:
                self._held.hold(message.signal_id, message.user_id, self._clock.monotonic_ns())
        elif isinstance(message, CopyOutcome):
            self._held.release(message.signal_id, message.user_id)
            self._on_copy_outcome(message)
        elif isinstance(message, RouteSignal):
            self._enqueue(message)
        elif isinstance(message, RouterDrain):
            self._drain_scheduled = False
            self._drain()
        elif isinstance(message, SetFollowers):
            self._set_followers(message)
        elif isinstance(message, UpdateFollower):
            self._update_follower(message)
        elif isinstance(message, RemoveFollower):
            self._remove_follower(message.user_id)
        elif isinstance(message, SetDraining):
            self._set_draining(message.draining)
        elif isinstance(message, SetWhalePaused):
            (self._paused_whales.add if message.paused else self._paused_whales.discard)(message.whale_id)
        elif isinstance(message, SetKnownWhales):
            self._known_whales = message.whale_ids
        elif isinstance(message, SetBacklog):
            self._backlog_high = message.high
            if self._queue:
                self._schedule_drain()
        elif isinstance(message, SweepStale):
            self._sweep(message.answer_timeout_s, message.held_timeout_s)
        else:
            log.warning("router.unknown_message", message_type=type(message).__name__)

    # ---- ask-able ----------------------------------------------------------------------------------------

    def draining(self) -> bool:
        """Whether the engine is draining: this actor is the one that knows (``SetDraining``)."""
        return self._draining

    def in_flight(self) -> int:
        """Signals being copied, and the ones waiting to be (not while draining: those wait for the next run).
        Not the ones whose every follower answered and that wait only for orders at the venue (``counts``'s
        ``awaiting_outcomes``): those are the exchange actors' in-flight orders, or UNKNOWN ones left to the
        reconciliation, which no drain waits for."""
        answering = sum(1 for s in self._in_flight.values() if s.answered < s.expected)
        return answering + (0 if self._draining else len(self._queue))

    def follower_refs(self) -> dict[int, Any]:
        """Every follower's ref by user id: the router is their one owner (the supervisor tells it each start,
        restart and removal)."""
        return dict(self._refs)

    def refs_of(self, user_ids: Iterable[int]) -> dict[int, Any]:
        """The refs of these users (the ones running): one ask for a price feed's holders, not a copy of all."""
        refs = self._refs
        return {uid: ref for uid in user_ids if (ref := refs.get(uid)) is not None}

    def followers_of(self, whale_id: int) -> list[int]:
        return [uid for uid, whales in self._follows.items() if whale_id in whales]

    def known_whales(self) -> frozenset[int]:
        return self._known_whales

    def counts(self) -> dict[str, int]:
        return {
            "followers": len(self._refs),
            "whales": len(self._known_whales),
            "in_flight": self.in_flight(),
            "awaiting_outcomes": sum(1 for s in self._in_flight.values() if s.answered >= s.expected),
            "queued": len(self._queue),
            "pending_copies": self._pending_copies,
            "draining": self._draining,
        }

    # ---- index -------------------------------------------------------------------------------------------

    def _set_followers(self, message: SetFollowers) -> None:
        self._refs = dict(message.refs)
        self._follows = dict(message.follows)
        self._known_whales = message.known_whales
        self._rebuild_index()

    def _update_follower(self, message: UpdateFollower) -> None:
        old = self._refs.get(message.user_id)
        if old is not None and getattr(old, "actor_urn", old) != getattr(message.ref, "actor_urn", message.ref):
            self._held.forget_user(message.user_id)  # a restarted follower lost what it held: the sweep counts it
        self._refs[message.user_id] = message.ref
        self._follows[message.user_id] = message.whale_ids
        self._known_whales = self._known_whales | frozenset(message.whale_ids)
        self._rebuild_index()

    def _remove_follower(self, user_id: int) -> None:
        self._held.forget_user(user_id)
        self._refs.pop(user_id, None)
        self._follows.pop(user_id, None)
        self._rebuild_index()

    def _rebuild_index(self) -> None:
        by_whale: dict[int, list[Any]] = {}
        for user_id, whale_ids in self._follows.items():
            ref = self._refs.get(user_id)
            if ref is None:
                continue
            for whale_id in whale_ids:
                by_whale.setdefault(whale_id, []).append(ref)
        self._by_whale = by_whale

    # ---- intake ------------------------------------------------------------------------------------------

    def _enqueue(self, message: RouteSignal) -> None:
        signal = message.signal
        if self._is_duplicate(signal):
            metrics.incr("signals.duplicate")
            log.info("signal.duplicate", signal_id=signal.signal_id, external_id=signal.external_id)
            return
        metrics.incr("signals.received")
        if message.received_at_ns == 0:
            message = RouteSignal(signal=signal, received_at_ns=self._clock.monotonic_ns())
        self._queue.push(message)
        self._schedule_drain()  # after the mailbox's current burst, so a later high-priority signal can overtake

    def _is_duplicate(self, signal: Signal) -> bool:
        if signal.external_id in self._seen or signal.signal_id in self._in_flight:
            return True
        self._seen[signal.external_id] = signal.signal_id
        if len(self._seen) > _DEDUPE_MEMORY:
            self._seen.popitem(last=False)
        return False

    def _set_draining(self, draining: bool) -> None:
        """Draining holds back every signal not fanned out yet. Their rows stay 'processing': a resume routes
        them, and the next start puts them back to 'pending' (``REQUEUE_SQL``) and claims them again."""
        self._draining = draining
        if draining and self._queue:
            ids = self._queue.signal_ids()
            log.info("signals.held_for_next_run", signals=len(ids), signal_ids=ids[:50])
        elif not draining and self._queue:
            self._schedule_drain()

    def _drain(self) -> None:
        if self._draining:
            return
        while (waiting := self._queue.peek()) is not None:
            if not self._admissible(waiting):
                self._hold()
                return
            self._fan_out(self._queue.pop())
        self._release()

    def _admissible(self, message: RouteSignal) -> bool:
        if self._backlog_high:
            return False
        if self._pending_copies == 0:
            return True
        followers = len(self._by_whale.get(message.signal.whale_id, ()))
        return self._pending_copies + followers <= self._max_pending_copies

    def _hold(self) -> None:
        if not self._held_since_ns:
            self._held_since_ns = self._clock.monotonic_ns()
            metrics.incr("router.backpressure")
            log.warning(
                "router.backpressure",
                persistence_backlog=self._backlog_high,
                pending_copies=self._pending_copies,
                max_pending_copies=self._max_pending_copies,
                queued=len(self._queue),
            )

    def _release(self) -> None:
        if self._held_since_ns:
            held_ms = (self._clock.monotonic_ns() - self._held_since_ns) / 1e6
            self._held_since_ns = 0
            log.info("router.backpressure_released", held_ms=held_ms, pending_copies=self._pending_copies)

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.actor_ref.tell(RouterDrain())

    def _fan_out(self, message: RouteSignal) -> None:
        signal = message.signal
        now = self._clock.now()
        expired = signal.expires_at is not None and signal.expires_at <= now
        if expired and signal.action not in EXIT_ACTIONS:  # an exit of any age goes out: it closes a copy
            metrics.incr("signals.expired")
            self._finish_without_fanout(signal, SignalStatus.EXPIRED, "expired")
            self._publish(SignalExpired(signal_id=signal.signal_id, occurred_at=now, detail="expired before routing"))
            return
        if signal.whale_id not in self._known_whales:
            metrics.incr("signals.failed")
            self._finish_without_fanout(signal, SignalStatus.FAILED, "unknown_whale")
            return
        refs = self._by_whale.get(signal.whale_id, [])
        mark: Decimal | None = self._mark_price(signal.symbol, signal.trade_type)
        copy = CopySignal(signal=signal, received_at_ns=message.received_at_ns, mark_price=mark)
        state = SignalCopies(
            signal=signal,
            expected=len(refs),
            received_at_ns=message.received_at_ns,
            fanned_out_ns=self._clock.monotonic_ns(),
        )
        self._in_flight[signal.signal_id] = state
        log.info(
            "signal.routed",
            signal_id=signal.signal_id,
            whale_id=signal.whale_id,
            symbol=signal.symbol,
            action=signal.action,
            followers=len(refs),
        )
        if signal.whale_id in self._paused_whales:
            # Operator pause: answered here for every follower; nothing is sent to them.
            state.skipped = state.reasons["paused"] = state.answered = len(refs)
            metrics.incr("skips.paused", len(refs))
            self._maybe_done(state)
            return
        for ref in refs:
            try:
                ref.tell(copy)
            except pykka.ActorDeadError:
                # The supervisor is restarting that follower; it will not see this signal.
                state.answered += 1
                state.count("failed", "follower_unavailable")
        for outcome in self._late.early(signal.signal_id):  # an earlier run's copy, resolved at start-up
            state.take_outcome(outcome.user_id, outcome.outcome, outcome.reason)
        self._pending_copies += state.expected - state.answered
        self._maybe_done(state)

    def _finish_without_fanout(self, signal: Signal, status: SignalStatus, error: str) -> None:
        log.info("signal." + status.value, signal_id=signal.signal_id, whale_id=signal.whale_id, reason=error)
        self._persistence.tell(
            PersistRows(rows=(SignalStatusRow(signal_id=signal.signal_id, status=status, error=error),))
        )

    # ---- answers -----------------------------------------------------------------------------------------

    def _on_decision(self, decision: FollowerDecision) -> None:
        state = self._in_flight.get(decision.signal_id)
        if state is None or decision.user_id in state.decided:
            return  # late (after the sweep), or its outcome came first (an order that failed as it was sent)
        state.decided.add(decision.user_id)
        state.answered += 1
        self._copy_answered()
        if decision.outcome == "copied":
            state.awaiting.add(decision.user_id)  # counted when its CopyOutcome arrives
        else:
            state.count(decision.outcome, decision.reason)
        self._maybe_done(state)

    def _on_copy_outcome(self, outcome: CopyOutcome) -> None:
        state = self._in_flight.get(outcome.signal_id)
        if state is not None:
            taken = state.take_outcome(outcome.user_id, outcome.outcome, outcome.reason)
            if taken == "answered":
                self._copy_answered()
            self._maybe_done(state)
        elif (state := self._late.resolve(outcome)) is not None:
            counts = {"copied": state.copied, "skipped": state.skipped, "failed": state.failed}
            ids = {"signal_id": outcome.signal_id, "user_id": outcome.user_id, "outcome": outcome.outcome}
            log.info("signal.counts_updated", **ids, **counts, reasons=dict(state.reasons))
            self._persistence.tell(PersistRows(rows=(state.status_row(),)))

    def _copy_answered(self) -> None:
        self._pending_copies -= 1
        if self._held_since_ns and (waiting := self._queue.peek()) is not None and self._admissible(waiting):
            self._schedule_drain()

    def _sweep(self, answer_timeout_s: float, held_timeout_s: float = 900.0) -> None:
        now_ns = self._clock.monotonic_ns()
        cutoff = now_ns - int(answer_timeout_s * 1e9)
        held_cutoff = now_ns - int(held_timeout_s * 1e9)
        for state in [s for s in self._in_flight.values() if s.fanned_out_ns < cutoff]:
            # A copy its follower holds (an exit waiting for its entry's outcome) is not late while it runs.
            missing, unknown = state.give_up(held=self._held.live(state.signal.signal_id, held_cutoff))
            self._pending_copies -= missing
            if missing:
                log.warning("signal.answers_missing", signal_id=state.signal.signal_id, missing=missing)
            if unknown:
                # Orders still at the venue (UNKNOWN, resting): neither copied nor failed. The signal is processed
                # without them; each outcome, when it comes, corrects the counts (``_on_copy_outcome``).
                log.warning("signal.outcomes_unknown", signal_id=state.signal.signal_id, unknown=unknown)
            self._maybe_done(state)
        if self._queue:
            self._schedule_drain()

    def _maybe_done(self, state: SignalCopies) -> None:
        if not state.done:
            return
        signal = state.signal
        del self._in_flight[signal.signal_id]
        self._late.processed(state)
        metrics.incr("signals.processed")
        elapsed_ms = (self._clock.monotonic_ns() - state.received_at_ns) / 1e6 if state.received_at_ns else None
        reasons = dict(state.reasons)
        log.info(
            "signal.processed",
            signal_id=signal.signal_id,
            whale_id=signal.whale_id,
            copied=state.copied,
            skipped=state.skipped,
            failed=state.failed,
            reasons=reasons,
            summary=state.summary(),
            elapsed_ms=elapsed_ms,
        )
        self._persistence.tell(PersistRows(rows=(state.status_row(),)))
        self._publish(
            SignalProcessed(
                signal_id=signal.signal_id,
                copied=state.copied,
                skipped=state.skipped,
                failed=state.failed,
                skip_reasons=reasons,
                occurred_at=self._clock.now(),
            )
        )
