"""One signal's copies as the router counts them: who answered, which orders are still at the venue, and the
counts written to ``whale_signals`` (``SignalStatusRow``). Router-thread only.

A follower answers each copy once (``FollowerDecision``): ``skipped`` and ``failed`` are final; ``copied`` means
the order went out, and the copy waits in ``awaiting`` for its ``CopyOutcome`` (``filled`` or ``failed``, when the
order is final at the venue). ``copied`` counts fills (FILLED or PARTIALLY_FILLED), ``failed`` copies that failed
at the venue (reason ``rejected`` / ``failed`` / ``cancelled``) or before it, ``skipped`` skips; ``reasons`` (the
``skip_reasons`` column) names every skip and failure. A signal is done when every follower answered and no
order is awaited. The stale sweep (``give_up``) counts followers that never answered as failed (``no_answer``)
and the copies still at the venue as ``unknown`` (reason ``outcome_unknown``, in none of the three counts): the
signal is processed, and each late outcome moves its copy from ``outcome_unknown`` to its count (``resolve``).
So copied + skipped + failed + reasons['outcome_unknown'] is the number of followers told.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from engine.control import CopyOutcome
from engine.messages import Signal, SignalStatus, SignalStatusRow

__all__ = ["LateOutcomes", "SignalCopies"]

OUTCOME_UNKNOWN = "outcome_unknown"


@dataclass
class SignalCopies:
    """See the module docstring."""

    signal: Signal
    expected: int
    received_at_ns: int  # when the router took the signal: signal.processed's elapsed_ms includes any hold
    fanned_out_ns: int  # when the copies were told: the stale sweep's age, so a long hold is not counted as late
    answered: int = 0  # followers that answered (a decision, or an outcome that came first)
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    decided: set[int] = field(default_factory=set)  # user ids that answered
    awaiting: set[int] = field(default_factory=set)  # user ids whose order is out, outcome not yet known
    unknown: set[int] = field(default_factory=set)  # given up on by the sweep; a late outcome still counts

    @property
    def done(self) -> bool:
        return self.answered >= self.expected and not self.awaiting

    def count(self, outcome: str, reason: str | None) -> None:
        if outcome in ("copied", "filled"):
            self.copied += 1
        elif outcome == "skipped":
            self.skipped += 1
            self.reasons[str(reason or "unspecified")] += 1
        else:
            self.failed += 1
            self.reasons[str(reason or "failed")] += 1

    def take_outcome(self, user_id: int, outcome: str, reason: str | None) -> str:
        """A ``CopyOutcome`` while the signal is in flight: ``counted`` (it was awaited), ``answered`` (it came
        before, or instead of, the follower's decision: an order that failed as it went out, or one an earlier run
        sent) or ``ignored`` (told twice)."""
        if user_id in self.awaiting:
            self.awaiting.discard(user_id)
            result = "counted"
        elif user_id not in self.decided:
            self.decided.add(user_id)
            self.answered += 1
            result = "answered"
        else:
            return "ignored"
        self.count(outcome, reason)
        return result

    def give_up(self, held: int = 0) -> tuple[int, int]:
        """The stale sweep: followers that never answered fail (``no_answer``), except ``held`` copies (exits
        their followers hold for an entry's outcome: the signal waits for them); once none is held, orders still
        out become ``unknown``. Returns (missing answers, unknown outcomes)."""
        missing = max(self.expected - self.answered - held, 0)
        if missing:
            self.failed += missing
            self.reasons["no_answer"] += missing
            self.answered += missing
        unknown = len(self.awaiting) if held <= 0 else 0
        if unknown:
            self.unknown |= self.awaiting
            self.awaiting = set()
            self.reasons[OUTCOME_UNKNOWN] += unknown
        return missing, unknown

    def resolve(self, user_id: int, outcome: str, reason: str | None) -> bool:
        """A late outcome of a copy the sweep gave up on; False if it is not one."""
        if user_id not in self.unknown:
            return False
        self.unknown.discard(user_id)
        self.reasons[OUTCOME_UNKNOWN] -= 1
        if self.reasons[OUTCOME_UNKNOWN] <= 0:
            del self.reasons[OUTCOME_UNKNOWN]
        self.count(outcome, reason)
        return True

    def summary(self) -> str | None:
        """Why nothing was copied, when every follower skipped (or failed) for one reason."""
        if not self.expected or self.copied or self.unknown or len(self.reasons) != 1:
            return None
        (reason,) = self.reasons
        if self.skipped == self.expected:
            return f"all {self.expected} followers skipped: {reason}"
        if self.failed == self.expected:
            return f"all {self.expected} followers failed: {reason}"
        return None

    def status_row(self) -> SignalStatusRow:
        return SignalStatusRow(
            signal_id=self.signal.signal_id,
            status=SignalStatus.PROCESSED,
            copied=self.copied,
            skipped=self.skipped,
            failed=self.failed,
            skip_reasons=dict(self.reasons),
            error=self.summary(),
        )


class LateOutcomes:
    """Outcomes that come when their signal is not in flight, each kept for a bounded number of signals (the
    oldest forgotten first): signals processed with copies of unknown outcome (``unresolved``: a late outcome
    corrects their counts) and outcomes of signals not routed yet (``early``: at start-up, recovery resolves an
    earlier run's orders, maybe before their requeued signal is routed again; they answer at its fan-out)."""

    def __init__(self, memory: int) -> None:
        self._memory = memory
        self._unresolved: OrderedDict[int, SignalCopies] = OrderedDict()
        self._early: OrderedDict[int, list[CopyOutcome]] = OrderedDict()

    def processed(self, state: SignalCopies) -> None:
        state.decided = set()  # not needed any more: a processed signal keeps only ``unknown``
        if state.unknown:
            self._keep(self._unresolved, state.signal.signal_id, state)

    def early(self, signal_id: int) -> list[CopyOutcome]:
        return self._early.pop(signal_id, [])

    def resolve(self, outcome: CopyOutcome) -> SignalCopies | None:
        """The processed signal whose counts ``outcome`` changed, if any (else it is kept as early, or is the
        outcome of a copy counted ``no_answer``, which stays so)."""
        state = self._unresolved.get(outcome.signal_id)
        if state is None:
            self._keep(self._early, outcome.signal_id, [*self._early.pop(outcome.signal_id, []), outcome])
            return None
        if not state.resolve(outcome.user_id, outcome.outcome, outcome.reason):
            return None
        if not state.unknown:
            del self._unresolved[outcome.signal_id]
        return state

    def _keep(self, memory: OrderedDict[int, Any], signal_id: int, value: Any) -> None:
        memory[signal_id] = value
        if len(memory) > self._memory:
            memory.popitem(last=False)
