"""The router's waiting room: signals held back (back-pressure, a persistence backlog, draining), in the order
they may leave. Router-thread only."""

from __future__ import annotations

import heapq
from collections import Counter

from engine.control import RouteSignal

__all__ = ["WaitingSignals"]

_Lane = tuple[int, str]  # (whale_id, symbol): the signals whose order matters to one another


class WaitingSignals:
    """The held-back signals. Priority orders signals of different lanes (whale_id, symbol); within a lane they
    leave in detection order (detected_at, then signal_id), so a high-priority CLOSE never overtakes the OPEN it
    closes (every follower would skip the CLOSE, then open what nothing closes). A lane goes at the best priority
    waiting in it: that CLOSE takes its OPEN along ahead of other lanes' signals instead of waiting behind it."""

    def __init__(self) -> None:
        self._lanes: dict[_Lane, list[tuple[float, int, RouteSignal]]] = {}  # heap by (detected_at, signal_id)
        self._ranks: dict[_Lane, Counter[int]] = {}  # priority ranks waiting in each lane
        # (lane's best rank, its head's detected_at and signal_id, lane). An entry whose rank or head no longer
        # matches its lane is stale and dropped when it comes up (lazy deletion keeps push and pop O(log n)).
        self._heads: list[tuple[int, float, int, _Lane]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push(self, message: RouteSignal) -> None:
        signal = message.signal
        lane = (signal.whale_id, signal.symbol)
        before = self._head_entry(lane)
        heapq.heappush(self._lanes.setdefault(lane, []), (signal.detected_at.timestamp(), signal.signal_id, message))
        self._ranks.setdefault(lane, Counter())[signal.priority.rank] += 1
        self._count += 1
        entry = self._head_entry(lane)
        if entry is not None and entry != before:
            heapq.heappush(self._heads, entry)

    def peek(self) -> RouteSignal | None:
        while self._heads and self._heads[0] != self._head_entry(self._heads[0][3]):
            heapq.heappop(self._heads)
        return self._lanes[self._heads[0][3]][0][2] if self._heads else None

    def pop(self) -> RouteSignal:
        if self.peek() is None:
            raise IndexError("no signal is waiting")
        lane = heapq.heappop(self._heads)[3]
        message = heapq.heappop(self._lanes[lane])[2]
        ranks, rank = self._ranks[lane], message.signal.priority.rank
        ranks[rank] -= 1
        if not ranks[rank]:
            del ranks[rank]  # min(ranks) is the lane's best rank still waiting
        self._count -= 1
        entry = self._head_entry(lane)
        if entry is None:
            del self._lanes[lane], self._ranks[lane]
        else:
            heapq.heappush(self._heads, entry)
        return message

    def signal_ids(self) -> list[int]:
        """Every waiting signal's id, in no particular order."""
        return [entry[1] for waiting in self._lanes.values() for entry in waiting]

    def _head_entry(self, lane: _Lane) -> tuple[int, float, int, _Lane] | None:
        waiting = self._lanes.get(lane)
        if not waiting:
            return None
        detected_at, signal_id, _ = waiting[0]
        return (min(self._ranks[lane]), detected_at, signal_id, lane)
