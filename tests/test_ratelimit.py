"""TokenBucket and AccountOrderLimiter with a fake clock (``now`` is passed in)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.ratelimit import AccountOrderLimiter, TokenBucket


def test_spends_up_to_capacity_then_refills_a_window_later() -> None:
    bucket = TokenBucket(capacity=10, window_s=60)
    assert bucket.try_acquire(4, 0.0)
    assert bucket.try_acquire(6, 1.0)
    assert not bucket.try_acquire(1, 2.0)
    assert bucket.wait_time(1, 2.0) == pytest.approx(58.0)
    assert bucket.wait_time(5, 2.0) == pytest.approx(59.0)  # needs the second batch back too
    assert bucket.try_acquire(4, 60.0)
    assert not bucket.try_acquire(1, 60.5)
    assert bucket.available(61.0) == 6


def test_held_tokens_come_back_a_window_after_settling() -> None:
    bucket = TokenBucket(capacity=2, window_s=10)
    assert bucket.try_acquire(2, 0.0, hold=True)
    assert bucket.wait_time(1, 100.0) == math.inf  # nobody knows until the answer arrives
    bucket.settle(2, 100.0)
    assert bucket.available(109.9) == 0
    assert bucket.available(110.0) == 2
    with pytest.raises(ValueError, match="held"):
        bucket.settle(1, 111.0)


@pytest.mark.parametrize("weight", [0, -1, 11])
def test_weight_outside_capacity_is_an_error(weight: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        TokenBucket(capacity=10, window_s=1).try_acquire(weight, 0.0)


ops = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=3, allow_nan=False),  # time step
        st.integers(min_value=1, max_value=5),  # weight
        st.booleans(),  # hold (settled after a random delay)
        st.floats(min_value=0, max_value=2, allow_nan=False),  # latency before settling
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, capacity=st.integers(min_value=5, max_value=20), window_s=st.sampled_from([1.0, 2.5, 10.0]))
def test_no_window_ever_holds_more_than_capacity(
    ops: list[tuple[float, int, bool, float]], capacity: int, window_s: float
) -> None:
    """The venue sees a request somewhere in [send, answer]. Whatever it picks, any window of ``window_s``
    holds at most ``capacity``: here the venue picks the worst moment, the start for a held request."""
    bucket = TokenBucket(capacity=capacity, window_s=window_s)
    now = 0.0
    pending: list[tuple[float, int]] = []  # (settle at, weight)
    seen: list[tuple[float, int]] = []  # (arrival at the venue, weight)
    for step, weight, hold, latency in ops:
        now += step
        for item in sorted(p for p in pending if p[0] <= now):
            bucket.settle(item[1], item[0])
            pending.remove(item)
        wait = bucket.wait_time(weight, now)
        if bucket.try_acquire(weight, now, hold=hold):
            assert wait == 0
            seen.append((now, weight))
            if hold:
                pending.append((now + latency, weight))
        else:
            assert wait > 0
            if wait < math.inf:
                assert bucket.try_acquire(weight, now + wait, hold=False)
                seen.append((now + wait, weight))
                now += wait
    for start, _ in seen:
        assert sum(w for at, w in seen if start <= at < start + window_s) <= capacity


def test_account_limit_is_per_user() -> None:
    limiter = AccountOrderLimiter(max_orders=2, window_s=1.0)
    assert limiter.try_acquire(1, 0.0)
    assert limiter.try_acquire(1, 0.1)
    assert not limiter.try_acquire(1, 0.2)
    assert limiter.wait_time(1, 0.2) == pytest.approx(0.8)
    assert limiter.try_acquire(2, 0.2)
    assert limiter.wait_time(3, 0.2) == 0
    assert limiter.try_acquire(1, 1.0)


def test_account_limiter_forgets_idle_accounts() -> None:
    limiter = AccountOrderLimiter(max_orders=2)
    for user_id in range(100):
        limiter.try_acquire(user_id, 0.0)
    limiter.try_acquire(7, 5.0)
    limiter.prune(5.5)
    assert len(limiter) == 1


def test_wait_time_is_never_an_ulp_short() -> None:
    """Found by hypothesis: 3.4067480713225367 + (11.703374035661268 - 3.4067480713225367) rounds below
    11.703374035661268, so waking after the wait found the tokens not back yet."""
    bucket = TokenBucket(capacity=5, window_s=10.0)
    first = 1.7033740356612683
    assert bucket.try_acquire(1, first)
    now = first * 2
    wait = bucket.wait_time(5, now)
    assert 0 < wait < math.inf
    assert bucket.try_acquire(5, now + wait)
