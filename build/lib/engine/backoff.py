"""The one backoff rule: exponential steps with "equal jitter".

Attempt ``n`` (1 for the first retry) has the step ``min(cap_s, base_s * 2 ** (n - 1))``; the delay is half the
step plus a uniform draw from the other half, so it lies in ``[step / 2, step]``. Never less than half the step:
a crowd of retries spreads out without hammering the far end early, and the delay never exceeds ``cap_s``.

Every retry in the engine waits through this function (exchange reads and orders, the persistence lanes, the
price feed after a 429); a venue's Retry-After or a ban length is a floor the caller applies on top.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Uniform", "backoff_s"]

_MAX_EXPONENT = 60  # 2**60 times any positive base is past every cap; keeps the float finite


class Uniform(Protocol):
    """What the rule needs of a random source (``random.Random`` has it; tests pass a seeded one)."""

    def uniform(self, a: float, b: float, /) -> float: ...


def backoff_s(attempt: int, *, base_s: float, cap_s: float, rng: Uniform) -> float:
    """Seconds to wait before retry ``attempt`` (1-based; 0 or less counts as 1), in ``[step / 2, step]`` where
    ``step = min(cap_s, base_s * 2 ** (attempt - 1))``."""
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    step_s = min(cap_s, base_s * 2.0**exponent)
    half_s = step_s / 2
    return half_s + min(half_s, max(0.0, rng.uniform(0.0, half_s)))  # clamp: uniform may round to b's far side
