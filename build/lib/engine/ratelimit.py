"""Rate limits an exchange actor keeps for its venue: the shared request-weight budget and per-account order
counts. Pure: no clock of its own, every call takes ``now`` (monotonic seconds).

Both are sliding windows ("a token spent at ``t`` is back at ``t + window_s``") rather than a continuously
refilled bucket: a classic bucket lets ``2 x capacity`` through in one window (a full bucket plus a window of
refill), and venues count per window, so that would earn a 429, then a 418.
"""

from __future__ import annotations

import math
from collections import deque


class TokenBucket:
    """At most ``capacity`` weight in any ``window_s`` seconds.

    ``try_acquire(weight, now)`` spends tokens that come back at ``now + window_s``. With ``hold=True`` the
    tokens stay spent until ``settle(weight, now)``, and come back ``window_s`` after that. The exchange actor
    holds while a request is in flight and settles when the answer arrives: the venue counts the request at
    some moment between our send and our answer, so refilling from the answer keeps the guarantee whatever the
    latency.
    """

    __slots__ = ("_capacity", "_held", "_returns", "_spent", "_window_s")

    def __init__(self, *, capacity: int, window_s: float) -> None:
        if capacity <= 0 or window_s <= 0:
            raise ValueError("capacity and window_s must be positive")
        self._capacity = capacity
        self._window_s = window_s
        self._returns: deque[tuple[float, int]] = deque()  # (when the tokens come back, weight), in order
        self._spent = 0  # sum of weights in _returns
        self._held = 0  # acquired with hold=True, not yet settled

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def held(self) -> int:
        return self._held

    def available(self, now: float) -> int:
        self._expire(now)
        return self._capacity - self._spent - self._held

    def try_acquire(self, weight: int, now: float, *, hold: bool = False) -> bool:
        """Spend ``weight`` tokens if there are that many; ``False`` (and nothing spent) otherwise."""
        self._check_weight(weight)
        if self.available(now) < weight:
            return False
        if hold:
            self._held += weight
        else:
            self._push(now + self._window_s, weight)
        return True

    def settle(self, weight: int, now: float) -> None:
        """Held tokens start their window now: they are back at ``now + window_s``."""
        if weight > self._held:
            raise ValueError(f"settling {weight} tokens but only {self._held} are held")
        self._held -= weight
        self._push(now + self._window_s, weight)

    def wait_time(self, weight: int, now: float) -> float:
        """Seconds until ``try_acquire(weight)`` can succeed; ``inf`` while held tokens are needed (they get a
        return time only when settled)."""
        self._check_weight(weight)
        missing = weight - self.available(now)
        if missing <= 0:
            return 0.0
        for returns_at, returned in self._returns:
            missing -= returned
            if missing <= 0:
                return _until(returns_at, now)
        return math.inf

    def _push(self, returns_at: float, weight: int) -> None:
        # With a monotonic clock return times never decrease. If one did, merging into the tail keeps the
        # deque sorted and returns those tokens later, never earlier.
        if self._returns and self._returns[-1][0] >= returns_at:
            last_at, last_weight = self._returns.pop()
            self._returns.append((last_at, last_weight + weight))
        else:
            self._returns.append((returns_at, weight))
        self._spent += weight

    def _expire(self, now: float) -> None:
        returns = self._returns
        while returns and returns[0][0] <= now:
            self._spent -= returns.popleft()[1]

    def _check_weight(self, weight: int) -> None:
        if weight <= 0 or weight > self._capacity:
            raise ValueError(f"weight {weight} outside 1..{self._capacity}")


class AccountOrderLimiter:
    """At most ``max_orders`` orders per account in any ``window_s`` (Binance: 10 a second, 100,000 a day).

    Accounts are keyed by user id. An account's bucket is dropped once it is full again, so memory follows the
    accounts that traded in the last window.
    """

    __slots__ = ("_buckets", "_max_orders", "_window_s")

    def __init__(self, *, max_orders: int, window_s: float = 1.0) -> None:
        if max_orders <= 0 or window_s <= 0:
            raise ValueError("max_orders and window_s must be positive")
        self._max_orders = max_orders
        self._window_s = window_s
        self._buckets: dict[int, TokenBucket] = {}

    def try_acquire(self, user_id: int, now: float) -> bool:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = TokenBucket(capacity=self._max_orders, window_s=self._window_s)
        return bucket.try_acquire(1, now)

    def wait_time(self, user_id: int, now: float) -> float:
        bucket = self._buckets.get(user_id)
        return 0.0 if bucket is None else bucket.wait_time(1, now)

    def prune(self, now: float) -> None:
        """Forget accounts whose window is empty."""
        full = [uid for uid, b in self._buckets.items() if b.available(now) == self._max_orders]
        for uid in full:
            del self._buckets[uid]

    def __len__(self) -> int:
        return len(self._buckets)


def _until(at: float, now: float) -> float:
    """The wait ``w`` with ``now + w >= at``: ``at - now`` can round so that ``now + (at - now) < at`` by one ulp,
    and a caller waking at that sum would find the tokens not back yet."""
    wait = max(0.0, at - now)
    while now + wait < at:
        wait = math.nextafter(wait, math.inf)
    return wait
