"""engine.backoff: the one retry delay rule (equal jitter, capped)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from engine.backoff import backoff_s

attempts = st.integers(min_value=-5, max_value=10_000)
bases = st.floats(min_value=1e-4, max_value=1e3, allow_nan=False, allow_infinity=False)
caps = st.floats(min_value=1e-4, max_value=1e5, allow_nan=False, allow_infinity=False)
seeds = st.integers(min_value=0, max_value=2**32)


def _step(attempt: int, base_s: float, cap_s: float) -> float:
    return min(cap_s, base_s * 2.0 ** min(max(attempt, 1) - 1, 60))


class _Edge:
    """A random source that answers one end of the interval."""

    def __init__(self, high: bool) -> None:
        self._high = high

    def uniform(self, a: float, b: float, /) -> float:
        return b if self._high else a


@given(attempts, bases, caps, seeds)
def test_delay_is_between_half_the_step_and_the_step(attempt: int, base_s: float, cap_s: float, seed: int) -> None:
    step = _step(attempt, base_s, cap_s)
    delay = backoff_s(attempt, base_s=base_s, cap_s=cap_s, rng=random.Random(seed))
    assert step / 2 <= delay <= step
    assert delay <= cap_s


@given(attempts, bases, caps)
def test_the_ends_of_the_jitter_are_half_the_step_and_the_step(attempt: int, base_s: float, cap_s: float) -> None:
    step = _step(attempt, base_s, cap_s)
    assert backoff_s(attempt, base_s=base_s, cap_s=cap_s, rng=_Edge(high=False)) == step / 2
    assert backoff_s(attempt, base_s=base_s, cap_s=cap_s, rng=_Edge(high=True)) == step


@given(st.integers(min_value=1, max_value=5_000), bases, caps, st.booleans())
def test_steps_grow_with_the_attempt_until_the_cap(attempt: int, base_s: float, cap_s: float, high: bool) -> None:
    rng = _Edge(high=high)
    this = backoff_s(attempt, base_s=base_s, cap_s=cap_s, rng=rng)
    following = backoff_s(attempt + 1, base_s=base_s, cap_s=cap_s, rng=rng)
    assert this <= following  # monotone, and flat once capped
    if _step(attempt, base_s, cap_s) == cap_s:
        assert following == this  # capped: the step no longer grows


def test_first_retry_waits_about_the_base() -> None:
    delays = [backoff_s(1, base_s=0.2, cap_s=5.0, rng=random.Random(i)) for i in range(200)]
    assert min(delays) >= 0.1
    assert max(delays) <= 0.2
    assert backoff_s(30, base_s=0.2, cap_s=5.0, rng=random.Random(1)) >= 2.5
