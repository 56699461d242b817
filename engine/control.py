"""Control messages: what the node, the operator and timers tell actors, as opposed to the copy flow's data
(``engine/messages.py``). Frozen msgspec Structs like every message between actors; grouped by the actor that
receives them. Private timer ticks an actor sends itself live here too, so every message type is in ``engine/``.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import msgspec
import pykka

from engine.breaker import BreakerState
from engine.follower_state import FollowerState
from engine.messages import Signal, VenueOrder, VenuePosition

# ---- signal router --------------------------------------------------------------------------------------------


class RouteSignal(msgspec.Struct, frozen=True, kw_only=True):
    """Route this (already validated and stored) signal to the whale's followers."""

    signal: Signal
    received_at_ns: int = 0


class CopyHeld(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Follower -> router: it holds its copy of this exit until the order in flight on the symbol (the entry) is
    final, and answers ``FollowerDecision`` then. The stale sweep does not count a held copy as ``no_answer``
    while its follower runs, up to ``SweepStale.held_timeout_s``."""

    signal_id: int
    user_id: int


class SetFollowers(msgspec.Struct, frozen=True, kw_only=True):
    """Replace the follower index: ``refs`` by user id and the whale ids each user follows."""

    refs: dict[int, pykka.ActorRef[Any]]
    follows: dict[int, tuple[int, ...]]
    known_whales: frozenset[int]


class UpdateFollower(msgspec.Struct, frozen=True, kw_only=True):
    """One user's ref and followed whales changed (new user, restart after failure, follow change)."""

    user_id: int
    ref: pykka.ActorRef[Any]
    whale_ids: tuple[int, ...]


class RemoveFollower(msgspec.Struct, frozen=True, kw_only=True):
    """The user is gone (deleted): the router forgets its ref and follows (the supervisor stops the actor)."""

    user_id: int


class SetDraining(msgspec.Struct, frozen=True, kw_only=True):
    """Stop (or resume) fanning signals out: waiting ones stay for a resume or the next run. The router is the
    one owner of draining (the admin asks it); copies it told before the drain began go on."""

    draining: bool = True


class SetWhalePaused(msgspec.Struct, frozen=True, kw_only=True):
    """Operator pause (admin ``pause whale ID``): every follower skips this whale's signals (``paused``)."""

    whale_id: int
    paused: bool


class SetKnownWhales(msgspec.Struct, frozen=True, kw_only=True):
    """The enabled whales, after a reload: signals from any other whale fail with ``unknown_whale``."""

    whale_ids: frozenset[int]


class RouterDrain(msgspec.Struct, frozen=True):
    """The router to itself, after the mailbox's current burst: let waiting signals go."""


class SetBacklog(msgspec.Struct, frozen=True, kw_only=True):
    """The persistence actor's write queue passed its high-water mark (``high``) or came back under half of it:
    while it is high, new signals wait here (rows for more copies would only lengthen the queue)."""

    high: bool


class CopyOutcome(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Follower -> router: the final outcome of a copy it answered ``copied`` (order sent), told once the order
    is final at the venue. ``outcome``: ``filled`` (FILLED or PARTIALLY_FILLED) or ``failed`` (REJECTED, FAILED,
    CANCELLED; ``reason`` is the status). An order still UNKNOWN is not final: nothing is told until it is."""

    signal_id: int
    user_id: int
    outcome: str  # "filled" | "failed"
    reason: str | None = None


class SweepStale(msgspec.Struct, frozen=True, kw_only=True):
    """Finish signals whose followers did not all answer within ``answer_timeout_s`` (a follower that failed
    mid-signal never answers): the missing answers count as failed with reason ``no_answer``; copies whose order
    is still at the venue count under ``outcome_unknown`` until their ``CopyOutcome`` arrives."""

    answer_timeout_s: float = 60.0
    held_timeout_s: float = 900.0  # a copy its follower holds (``CopyHeld``) is waited for this long


# ---- follower ---------------------------------------------------------------------------------------------------


class ReconcileNow(msgspec.Struct, frozen=True):
    """Ask the venue again about every trade whose outcome is not known (UNKNOWN / SUBMITTED / PENDING)."""


class UpdateSettings(msgspec.Struct, frozen=True, kw_only=True):
    """New user/follow settings from the database (NOTIFY, polling or admin ``reload``)."""

    state: FollowerState


class SetPaused(msgspec.Struct, frozen=True, kw_only=True):
    """Operator override of ``users.paused`` (admin ``pause``); ``None`` clears it."""

    paused: bool | None


class TakeSnapshot(msgspec.Struct, frozen=True):
    """Persist a portfolio snapshot at the follower's latest marks."""


# ---- exchange actor -------------------------------------------------------------------------------------------


class ExchangeDrain(msgspec.Struct, frozen=True):
    """The exchange actor to itself, once per burst of messages, so one turn sends one batch."""


class ExchangeWake(msgspec.Struct, frozen=True):
    """The exchange actor's timer (backoff, ban, budget refill) for the deadline ``at`` (its clock) fired."""

    at: float


class CallResult(msgspec.Struct, frozen=True, kw_only=True):
    """How one venue call ended, classified on the I/O loop (the outcome policy of ``engine/venue.py``)."""

    job_id: int
    order: VenueOrder | None = None
    positions: tuple[VenuePosition, ...] | None = None  # a fetch_positions answer
    error: str | None = None  # None | "rejected" | "retryable" | "banned" | "unknown" | "not_sent"
    message: str = ""
    retry_after_s: float | None = None
    ban_s: float | None = None


class VenueHealth(msgspec.Struct, frozen=True, kw_only=True):
    """The exchange actor to its subscribers: its breaker state or its ban changed (and the state it is in when
    one subscribes). Entries go only while ``entries_open``; exits go regardless."""

    venue: str
    breaker: BreakerState
    banned: bool

    @property
    def entries_open(self) -> bool:
        return self.breaker is not BreakerState.OPEN and not self.banned


class SubscribeHealth(msgspec.Struct, frozen=True):
    """Tell ``subscriber`` (called on the exchange actor's thread: it must only take note) every ``VenueHealth``
    from now on, the current one first."""

    subscriber: Any  # Callable[[VenueHealth], None]


class CallsCompleted(msgspec.Struct, frozen=True):
    """The I/O loop to the exchange actor: the calls that ended in one loop iteration."""

    results: tuple[CallResult, ...]


# ---- persistence actor ----------------------------------------------------------------------------------------


class FlushDue(msgspec.Struct, frozen=True):
    """The persistence actor's flush timer: write what the batched lane holds."""


class DurableDue(msgspec.Struct, frozen=True):
    """The persistence actor's group-commit window closed: commit the intents gathered."""


class RetryDue(msgspec.Struct, frozen=True):
    """The backoff after a failed batch is over (``token`` names the backoff, so a stale timer is ignored)."""

    token: int


class BatchDone(msgspec.Struct, frozen=True):
    """The I/O loop to the persistence actor: a batched-lane write ended."""

    seq: int
    rows: int
    poison: tuple[tuple[Any, str], ...] = ()
    error: BaseException | None = None
    elapsed_ms: float = 0.0


class IntentsDone(msgspec.Struct, frozen=True):
    """The I/O loop to the persistence actor: a durable-lane group commit ended."""

    seq: int
    poison: tuple[tuple[Any, str], ...] = ()
    existing: dict[str, str] = {}  # client order id -> status, of rows that existed before this commit (replays)
    error: BaseException | None = None
    elapsed_ms: float = 0.0


class RunWrite(msgspec.Struct, frozen=True, kw_only=True):
    """Run ``fn(connection)`` inside a transaction; the result (or exception) completes ``future``."""

    fn: Any  # Callable[[asyncpg.Connection], Awaitable[Any]]
    future: concurrent.futures.Future[Any]


__all__ = ["msgspec"]
