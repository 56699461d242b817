"""The exchange actor's calls while it owes an answer for them: queued in three lanes of strict priority (exits,
then resolves and position checks, then entries), waiting for a retry's backoff, or in flight. One ``Lanes``
object, owned by the actor, on its thread only."""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from engine.messages import CheckPositions, PlaceOrder, ResolveOrder

EXITS, RESOLVES, ENTRIES = 0, 1, 2


@dataclass(slots=True, eq=False)
class Job:
    """One venue call the actor owes an answer for: queued, in flight, or waiting for its retry."""

    job_id: int
    message: PlaceOrder | ResolveOrder | CheckPositions
    lane: int
    weight: int
    attempts: int = 0
    probe: bool = False

    @property
    def client_order_id(self) -> str:
        msg = self.message
        if isinstance(msg, CheckPositions):
            return ""
        return msg.request.client_order_id if isinstance(msg, PlaceOrder) else msg.client_order_id

    @property
    def user_id(self) -> int:
        msg = self.message
        return msg.request.user_id if isinstance(msg, PlaceOrder) else msg.user_id


class Lanes:
    """Queued, delayed and in-flight jobs (see the module docstring)."""

    __slots__ = ("delayed", "in_flight", "queues")

    def __init__(self) -> None:
        self.queues: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        self.delayed: list[tuple[float, int, Job]] = []  # heap of retries waiting for their backoff
        self.in_flight: dict[int, Job] = {}

    def push(self, job: Job) -> None:
        self.queues[job.lane].append(job)

    def push_front(self, job: Job) -> None:
        """Back to the front of its lane (it was first; a ban or the budget held it back)."""
        self.queues[job.lane].appendleft(job)

    def delay(self, job: Job, until: float) -> None:
        heapq.heappush(self.delayed, (until, job.job_id, job))

    def next_retry_at(self) -> float | None:
        return self.delayed[0][0] if self.delayed else None

    def release_due(self, now: float) -> None:
        """Retries whose backoff is over go back to the front of their lanes, oldest first."""
        due: list[Job] = []
        while self.delayed and self.delayed[0][0] <= now:
            due.append(heapq.heappop(self.delayed)[2])
        for job in reversed(due):
            self.queues[job.lane].appendleft(job)

    def take_entries(self) -> list[Job]:
        """Remove every entry queued or waiting for a retry (the breaker opened): queued ones first, in order."""
        entries = self.queues[ENTRIES]
        taken = list(entries)
        entries.clear()
        waiting = [item for item in self.delayed if item[2].lane == ENTRIES]
        if waiting:
            self.delayed = [item for item in self.delayed if item[2].lane != ENTRIES]
            heapq.heapify(self.delayed)
            taken.extend(job for _, _, job in sorted(waiting))
        return taken

    def queued(self) -> int:
        return sum(map(len, self.queues))
