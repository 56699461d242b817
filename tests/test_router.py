"""SignalRouterActor: back-pressure on follower copies out, priority among waiting signals.

The router runs as the real actor; followers are recorders that the test answers for (``FollowerDecision``,
then ``CopyOutcome`` for a copy whose order went out), so the test decides when copies come back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pykka
import pytest

from actors.router import SignalRouterActor
from engine.clock import SYSTEM_CLOCK, Clock, FakeClock
from engine.config import SignalsConfig
from engine.control import (
    CopyHeld,
    CopyOutcome,
    RemoveFollower,
    RouteSignal,
    SetBacklog,
    SetDraining,
    SetFollowers,
    SweepStale,
    UpdateFollower,
)
from engine.messages import (
    CopySignal,
    FollowerDecision,
    Priority,
    Side,
    Signal,
    SignalAction,
    SignalStatus,
    SignalStatusRow,
    TradeType,
)
from tests import kit
from tests.kit import wait_for

WHALE = 1


class Recorder(kit.Recorder):
    """A follower ref (or the persistence actor) that records what it is told."""

    def signal_ids(self) -> list[int]:
        return [m.signal.signal_id for m in self.of_type(CopySignal)]


def signal(
    signal_id: int,
    priority: Priority = Priority.MEDIUM,
    *,
    symbol: str = "ETH/USDT:USDT",
    action: SignalAction = SignalAction.OPEN,
) -> Signal:
    return Signal(
        signal_id=signal_id,
        external_id=f"ext-{signal_id}",
        whale_id=WHALE,
        symbol=symbol,
        side=Side.BUY,
        action=action,
        trade_type=TradeType.FUTURES,
        price=Decimal(3000),
        size_usdt=Decimal(1000),
        priority=priority,
        detected_at=datetime.now(UTC),
    )


@contextlib.contextmanager
def started_router(
    max_pending_copies: int, clock: Clock = SYSTEM_CLOCK
) -> Iterator[tuple[pykka.ActorRef[Any], list[Recorder], Recorder]]:
    """The router with three recorder followers of ``WHALE``; yields it, the followers and its persistence."""
    followers, persistence = [Recorder() for _ in range(3)], Recorder()
    ref = SignalRouterActor.start(
        persistence=persistence,
        mark_price=lambda *_: None,
        publish=lambda *_, **__: None,
        config=msgspec.structs.replace(SignalsConfig(), max_pending_copies=max_pending_copies),
        clock=clock,
    )
    try:
        # Any: Recorders stand in for the followers' ActorRefs (the router only tells them).
        refs: dict[int, Any] = {uid: f for uid, f in enumerate(followers, start=1)}
        ref.tell(SetFollowers(refs=refs, follows={uid: (WHALE,) for uid in refs}, known_whales=frozenset({WHALE})))
        yield ref, followers, persistence
    finally:
        ref.stop()


@pytest.fixture
def router() -> Iterator[tuple[pykka.ActorRef[Any], list[Recorder]]]:
    with started_router(4) as (ref, followers, _):
        yield ref, followers


def answer(ref: pykka.ActorRef[Any], signal_id: int, users: range) -> None:
    """These followers sent their copy's order and it filled."""
    for uid in users:
        ref.tell(FollowerDecision(signal_id=signal_id, user_id=uid, outcome="copied"))
        ref.tell(CopyOutcome(signal_id=signal_id, user_id=uid, outcome="filled"))


def status_rows(persistence: Recorder, signal_id: int) -> list[SignalStatusRow]:
    rows = [r for m in persistence.messages for r in m.rows if isinstance(r, SignalStatusRow)]
    return [r for r in rows if r.signal_id == signal_id]


def first_signal_out(
    router: tuple[pykka.ActorRef[Any], list[Recorder]],
) -> tuple[pykka.ActorRef[Any], list[Recorder]]:
    """Signal 1 told to every follower and not answered: 3 copies out of the limit of 4."""
    ref, followers = router
    ref.tell(RouteSignal(signal=signal(1)))
    wait_for(lambda: all(f.signal_ids() == [1] for f in followers), 10)
    return ref, followers


def test_signals_wait_while_too_many_copies_are_out_and_priority_overtakes(
    router: tuple[pykka.ActorRef[Any], list[Recorder]],
) -> None:
    ref, followers = first_signal_out(router)
    # 3 copies out; another 3 would pass the limit of 4: both wait, the high-priority one first in line
    # (another symbol: within one whale and symbol, detection order wins, see the next test).
    ref.tell(RouteSignal(signal=signal(2, Priority.LOW)))
    ref.tell(RouteSignal(signal=signal(3, Priority.HIGH, symbol="BTC/USDT:USDT")))
    wait_for(lambda: ref.proxy().counts().get(timeout=10)["queued"] == 2, 10)
    counts = ref.proxy().counts().get(timeout=10)
    assert counts["pending_copies"] == 3 and all(f.signal_ids() == [1] for f in followers)

    answer(ref, 1, range(1, 3))  # two of three answered: 1 out, 1 + 3 = 4 fits
    wait_for(lambda: all(f.signal_ids() == [1, 3] for f in followers), 10)
    assert ref.proxy().counts().get(timeout=10)["queued"] == 1
    answer(ref, 1, range(3, 4))
    answer(ref, 3, range(1, 4))  # nothing out: the low-priority one goes
    wait_for(lambda: all(f.signal_ids() == [1, 3, 2] for f in followers), 10)
    answer(ref, 2, range(1, 4))
    wait_for(lambda: ref.proxy().counts().get(timeout=10)["in_flight"] == 0, 10)
    assert ref.proxy().counts().get(timeout=10)["pending_copies"] == 0


def test_priority_never_overtakes_an_earlier_signal_of_the_same_whale_and_symbol(
    router: tuple[pykka.ActorRef[Any], list[Recorder]],
) -> None:
    ref, followers = first_signal_out(router)
    # All three wait. The high-priority CLOSE must not reach the followers before the OPEN it closes; it takes
    # its OPEN along ahead of the medium-priority signal on another symbol.
    ref.tell(RouteSignal(signal=signal(2, Priority.LOW)))
    ref.tell(RouteSignal(signal=signal(3, symbol="BTC/USDT:USDT")))
    ref.tell(RouteSignal(signal=signal(4, Priority.HIGH, action=SignalAction.CLOSE)))
    wait_for(lambda: ref.proxy().counts().get(timeout=10)["queued"] == 3, 10)
    routed = followers[0].signal_ids
    for count in (2, 3, 4):
        answer(ref, routed()[-1], range(1, 4))  # the last one routed comes back: the next one goes
        wait_for(lambda: all(len(f.signal_ids()) == count for f in followers), 10)  # called in this iteration
    assert routed() == [1, 2, 4, 3]
    assert all(f.signal_ids() == routed() for f in followers)
    answer(ref, 3, range(1, 4))
    wait_for(lambda: ref.proxy().counts().get(timeout=10)["in_flight"] == 0, 10)


def test_a_signal_larger_than_the_limit_goes_when_nothing_is_out() -> None:
    with started_router(2) as (ref, followers, _):
        ref.tell(RouteSignal(signal=signal(10)))
        ref.tell(RouteSignal(signal=signal(11)))
        wait_for(lambda: all(f.signal_ids() == [10] for f in followers), 10)
        answer(ref, 10, range(1, 3))
        assert ref.proxy().counts().get(timeout=10)["queued"] == 1  # one copy still out: 1 + 3 > 2
        answer(ref, 10, range(3, 4))
        wait_for(lambda: all(f.signal_ids() == [10, 11] for f in followers), 10)


def test_a_persistence_backlog_holds_every_new_signal_until_it_recovers(
    router: tuple[pykka.ActorRef[Any], list[Recorder]],
) -> None:
    ref, followers = router
    ref.tell(SetBacklog(high=True))
    ref.tell(RouteSignal(signal=signal(20)))
    wait_for(lambda: ref.proxy().counts().get(timeout=10)["queued"] == 1, 10)
    assert all(f.signal_ids() == [] for f in followers)  # nothing out, and still held
    ref.tell(SetBacklog(high=False))
    wait_for(lambda: all(f.signal_ids() == [20] for f in followers), 10)


def test_draining_keeps_waiting_signals_for_a_resume_or_the_next_run() -> None:
    """Signals held back when a drain starts are neither routed nor failed: their rows stay 'processing' (the
    next start puts them back to 'pending'), a resume routes them, and the drain does not wait for them. They
    used to be written FAILED 'draining', and nothing ever copied those whale trades (closes among them)."""
    with started_router(100) as (ref, followers, persistence):
        ref.tell(SetBacklog(high=True))
        ref.tell(RouteSignal(signal=signal(30)))
        ref.tell(RouteSignal(signal=signal(31, action=SignalAction.CLOSE)))
        wait_for(lambda: ref.proxy().counts().get(timeout=10)["queued"] == 2, 10)
        ref.tell(SetDraining(draining=True))
        ref.tell(SetBacklog(high=False))  # the backlog clears while draining: still nothing goes
        assert ref.proxy().in_flight().get(timeout=10) == 0  # a drain has nothing of these to wait for
        assert ref.proxy().counts().get(timeout=10)["queued"] == 2
        assert all(f.signal_ids() == [] for f in followers)
        assert [r for m in persistence.messages for r in m.rows if isinstance(r, SignalStatusRow)] == []
        ref.tell(SetDraining(draining=False))
        wait_for(lambda: all(f.signal_ids() == [30, 31] for f in followers), 10)


def test_the_stale_sweep_counts_from_the_fan_out_not_from_a_long_hold() -> None:
    clock = FakeClock()
    with started_router(4, clock) as (ref, followers, persistence):
        ref.tell(SetBacklog(high=True))
        ref.tell(RouteSignal(signal=signal(30)))
        wait_for(lambda: ref.proxy().counts().get(timeout=10)["queued"] == 1, 10)  # taken (and stamped)
        clock.advance(1.5)  # held longer than the answer timeout below
        ref.tell(SetBacklog(high=False))
        wait_for(lambda: all(f.signal_ids() == [30] for f in followers), 10)
        ref.tell(SweepStale(answer_timeout_s=1.0))  # just fanned out: nobody is late yet
        counts = ref.proxy().counts().get(timeout=10)
        statuses = [r.status for m in persistence.messages for r in m.rows if isinstance(r, SignalStatusRow)]
        assert SignalStatus.PROCESSED not in statuses
        assert counts["in_flight"] == 1 and counts["pending_copies"] == 3


def test_a_removed_follower_is_forgotten_and_gets_no_more_copies() -> None:
    """A deleted user (``RemoveFollower`` from the supervisor): the router drops its ref, so it is neither
    counted nor told the whale's next signal, and nobody waits for its answer."""
    with started_router(100) as (ref, followers, _):
        ref.tell(RemoveFollower(user_id=2))
        wait_for(lambda: ref.proxy().counts().get(timeout=10)["followers"] == 2, 10)
        assert set(ref.proxy().follower_refs().get(timeout=10)) == {1, 3}
        assert ref.proxy().refs_of([1, 2]).get(timeout=10) == {1: followers[0]}
        assert ref.proxy().followers_of(WHALE).get(timeout=10) == [1, 3]
        ref.tell(RouteSignal(signal=signal(1)))
        wait_for(lambda: followers[0].signal_ids() == [1] and followers[2].signal_ids() == [1], 10)
        answer(ref, 1, range(1, 4, 2))
        wait_for(lambda: ref.proxy().counts().get(timeout=10)["in_flight"] == 0, 10)
        assert followers[1].signal_ids() == []


def test_the_stale_sweep_waits_for_exits_their_followers_hold() -> None:
    """Followers holding a whale's close until their entry's outcome is final (``CopyHeld``) are not counted
    ``no_answer`` at the answer timeout: the signal waits for their answers, up to ``held_timeout_s``; a follower
    that restarted lost what it held, so the sweep counts it as before."""
    clock = FakeClock()
    with started_router(100, clock) as (ref, followers, persistence):

        def processed(signal_id: int) -> list[SignalStatusRow]:
            out = [r for m in persistence.messages for r in m.rows if isinstance(r, SignalStatusRow)]
            return [r for r in out if r.signal_id == signal_id]

        def route_close(signal_id: int, held: tuple[int, ...]) -> None:
            ref.tell(RouteSignal(signal=signal(signal_id, symbol=f"S{signal_id}/USDT:USDT", action=SignalAction.CLOSE)))
            wait_for(lambda: all(signal_id in f.signal_ids() for f in followers), 10)
            answer(ref, signal_id, range(1, 4 - len(held)))
            for uid in held:
                ref.tell(CopyHeld(signal_id=signal_id, user_id=uid))
            ref.proxy().counts().get(timeout=10)  # taken, at this moment of the clock

        def sweep(advance_s: float) -> None:
            clock.advance(advance_s)
            ref.tell(SweepStale(answer_timeout_s=60, held_timeout_s=600))
            ref.proxy().counts().get(timeout=10)  # the sweep is done

        route_close(40, held=(2, 3))
        route_close(41, held=(3,))
        restarted: Any = Recorder()  # Any: a Recorder stands in for the follower's ActorRef
        followers[2] = restarted
        ref.tell(UpdateFollower(user_id=3, ref=restarted, whale_ids=(WHALE,)))  # what it held is lost
        sweep(61)
        assert [(r.failed, r.skip_reasons) for r in processed(41)] == [(1, {"no_answer": 1})]  # user 3's
        assert processed(40) == []  # user 3 counted no_answer; user 2 still holds its copy: not late
        ref.tell(FollowerDecision(signal_id=40, user_id=2, outcome="copied"))
        ref.tell(CopyOutcome(signal_id=40, user_id=2, outcome="filled"))  # its order filled
        wait_for(lambda: processed(40), 10)
        assert [(r.copied, r.failed, r.skip_reasons) for r in processed(40)] == [(2, 1, {"no_answer": 1})]

        route_close(42, held=(3,))  # a follower answers each copy once: the held one is not among the answers
        sweep(61)
        assert processed(42) == []  # user 3 holds it: not late
        ref.tell(FollowerDecision(signal_id=42, user_id=3, outcome="skipped", reason="no_position"))
        wait_for(lambda: processed(42), 10)
        assert [(r.copied, r.skipped, r.failed) for r in processed(42)] == [(2, 1, 0)]

        route_close(43, held=(3,))
        sweep(601)  # held past held_timeout_s: given up as any other missing answer
        assert [(r.failed, r.skip_reasons) for r in processed(43)] == [(1, {"no_answer": 1})]


# ---- counts from outcomes ------------------------------------------------------------------------------------


def test_a_signal_is_processed_when_its_orders_are_final_and_counts_their_outcomes() -> None:
    """A copy whose order went out is counted by its outcome at the venue, not when it was sent: the old router
    marked the signal processed with copied=3 as soon as the three orders were sent, rejections included."""
    with started_router(100) as (ref, followers, persistence):
        ref.tell(RouteSignal(signal=signal(40)))
        wait_for(lambda: all(f.signal_ids() == [40] for f in followers), 10)
        for uid in (1, 2, 3):
            ref.tell(FollowerDecision(signal_id=40, user_id=uid, outcome="copied"))
        counts = ref.proxy().counts().get(timeout=10)  # every follower answered; every order still out
        assert (counts["awaiting_outcomes"], counts["pending_copies"]) == (1, 0)  # back-pressure counts answers
        assert status_rows(persistence, 40) == []
        ref.tell(CopyOutcome(signal_id=40, user_id=1, outcome="filled"))
        ref.tell(CopyOutcome(signal_id=40, user_id=2, outcome="failed", reason="rejected"))
        ref.tell(CopyOutcome(signal_id=40, user_id=2, outcome="failed", reason="rejected"))  # told twice: once
        assert ref.proxy().counts().get(timeout=10)["awaiting_outcomes"] == 1 and status_rows(persistence, 40) == []
        ref.tell(CopyOutcome(signal_id=40, user_id=3, outcome="filled"))
        wait_for(lambda: status_rows(persistence, 40), 10)
        (row,) = status_rows(persistence, 40)
        assert (row.status, row.copied, row.skipped, row.failed) == (SignalStatus.PROCESSED, 2, 0, 1)
        assert row.skip_reasons == {"rejected": 1} and row.error is None


def test_an_outcome_before_the_decision_counts_once() -> None:
    """An order that failed as it was sent may be told before its follower's decision: counted once."""
    with started_router(100) as (ref, followers, persistence):
        ref.tell(RouteSignal(signal=signal(41)))
        wait_for(lambda: all(f.signal_ids() == [41] for f in followers), 10)
        ref.tell(CopyOutcome(signal_id=41, user_id=1, outcome="failed", reason="failed"))
        ref.tell(FollowerDecision(signal_id=41, user_id=1, outcome="copied"))
        answer(ref, 41, range(2, 4))
        wait_for(lambda: status_rows(persistence, 41), 10)
        (row,) = status_rows(persistence, 41)
        assert (row.copied, row.skipped, row.failed, row.skip_reasons) == (2, 0, 1, {"failed": 1})
        assert ref.proxy().counts().get(timeout=10)["pending_copies"] == 0


def test_orders_still_unknown_at_the_sweep_are_not_copied_and_a_late_outcome_corrects_the_counts() -> None:
    """An order still UNKNOWN at the venue must not keep its signal open for good, nor count as copied: after
    the answer timeout the signal is processed with it under ``outcome_unknown``; its outcome, when it comes,
    rewrites the row (processed -> processed, the last write wins)."""
    clock = FakeClock()
    with started_router(100, clock) as (ref, followers, persistence):
        ref.tell(RouteSignal(signal=signal(42)))
        wait_for(lambda: all(f.signal_ids() == [42] for f in followers), 10)
        for uid in (1, 2):
            ref.tell(FollowerDecision(signal_id=42, user_id=uid, outcome="copied"))
        ref.tell(CopyOutcome(signal_id=42, user_id=1, outcome="filled"))  # user 3 never answers
        clock.advance(2.0)
        ref.tell(SweepStale(answer_timeout_s=1.0))
        wait_for(lambda: status_rows(persistence, 42), 10)
        (row,) = status_rows(persistence, 42)
        assert (row.status, row.copied, row.skipped, row.failed) == (SignalStatus.PROCESSED, 1, 0, 1)
        assert row.skip_reasons == {"no_answer": 1, "outcome_unknown": 1}
        assert ref.proxy().counts().get(timeout=10)["awaiting_outcomes"] == 0
        ref.tell(CopyOutcome(signal_id=42, user_id=3, outcome="filled"))  # swept as no_answer: stays so
        ref.tell(CopyOutcome(signal_id=42, user_id=2, outcome="failed", reason="rejected"))
        wait_for(lambda: len(status_rows(persistence, 42)) == 2, 10)
        row = status_rows(persistence, 42)[-1]
        assert (row.status, row.copied, row.skipped, row.failed) == (SignalStatus.PROCESSED, 1, 0, 2)
        assert row.skip_reasons == {"no_answer": 1, "rejected": 1}
        ref.tell(CopyOutcome(signal_id=42, user_id=2, outcome="filled"))  # resolved already: ignored
        assert ref.proxy().counts().get(timeout=10)["awaiting_outcomes"] == 0
        assert len(status_rows(persistence, 42)) == 2


def test_a_signal_every_follower_skipped_for_one_reason_says_so() -> None:
    with started_router(100) as (ref, followers, persistence):
        ref.tell(RouteSignal(signal=signal(43)))
        wait_for(lambda: all(f.signal_ids() == [43] for f in followers), 10)
        for uid in (1, 2, 3):
            ref.tell(FollowerDecision(signal_id=43, user_id=uid, outcome="skipped", reason="unknown_symbol"))
        wait_for(lambda: status_rows(persistence, 43), 10)
        (row,) = status_rows(persistence, 43)
        assert (row.status, row.copied, row.skipped, row.failed) == (SignalStatus.PROCESSED, 0, 3, 0)
        assert row.skip_reasons == {"unknown_symbol": 3}
        assert row.error == "all 3 followers skipped: unknown_symbol"


def test_an_outcome_told_before_its_signal_is_routed_again_answers_for_that_copy() -> None:
    """At start-up, recovery may resolve an earlier run's order before its requeued signal is routed again: that
    outcome answers for the copy at the fan-out; the follower's later answer for the same copy is not counted."""
    with started_router(100) as (ref, followers, persistence):
        ref.tell(CopyOutcome(signal_id=44, user_id=2, outcome="failed", reason="rejected"))
        ref.tell(RouteSignal(signal=signal(44)))
        wait_for(lambda: all(f.signal_ids() == [44] for f in followers), 10)
        assert ref.proxy().counts().get(timeout=10)["pending_copies"] == 2
        ref.tell(FollowerDecision(signal_id=44, user_id=2, outcome="failed", reason="rejected"))
        answer(ref, 44, range(1, 4, 2))
        wait_for(lambda: status_rows(persistence, 44), 10)
        (row,) = status_rows(persistence, 44)
        assert (row.copied, row.skipped, row.failed, row.skip_reasons) == (2, 0, 1, {"rejected": 1})
        assert ref.proxy().counts().get(timeout=10)["pending_copies"] == 0
