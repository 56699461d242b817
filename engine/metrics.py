"""Process-wide counters and latency samples for the ``engine.stats`` line and the admin ``stats`` command.

Counters are monotonic (never reset); the stats reporter computes per-interval deltas. Latency samples are
kept per interval in a bounded buffer and drained by the reporter. Updates come from many threads, hence the
lock; it costs far less than the message that caused the update.
"""

from __future__ import annotations

import threading
from collections import Counter

_MAX_SAMPLES = 100_000

_lock = threading.Lock()
_counters: Counter[str] = Counter()
_samples: dict[str, list[float]] = {}


def incr(name: str, amount: int = 1) -> None:
    with _lock:
        _counters[name] += amount


def observe(name: str, value: float) -> None:
    """Record one sample (e.g. ``signal_to_order_ms``)."""
    with _lock:
        bucket = _samples.setdefault(name, [])
        if len(bucket) < _MAX_SAMPLES:
            bucket.append(value)


def counters() -> dict[str, int]:
    with _lock:
        return dict(_counters)


def peek_samples() -> dict[str, list[float]]:
    """The samples of the current interval, left in place (admin ``stats`` must not steal the stats line's)."""
    with _lock:
        return {name: list(values) for name, values in _samples.items()}


def drain_samples() -> dict[str, list[float]]:
    """The samples since the last drain, and start a new interval."""
    global _samples
    with _lock:
        taken, _samples = _samples, {}
    return taken


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; ``None`` for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def reset_for_tests() -> None:
    global _samples
    with _lock:
        _counters.clear()
        _samples = {}
