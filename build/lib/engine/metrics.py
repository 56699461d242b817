"""Process-wide counters and latency samples for the ``engine.stats`` line and the admin ``stats`` command.

Counters are monotonic (never reset); the stats reporter computes per-interval deltas. Latency samples are
kept per interval in a bounded buffer and drained by the reporter.

Counters are bumped several times per copy on every thread, so each thread counts into a dict of its own (no
lock: a shared lock held by a thread that then loses the GIL made the others queue behind it); a read sums
the threads' dicts. Copying a dict of str -> int happens under the GIL in one step, so a read never sees a
dict mid-change. Samples are rarer and keep the lock.
"""

from __future__ import annotations

import threading
from collections import Counter

_MAX_SAMPLES = 100_000

_lock = threading.Lock()
_local = threading.local()
_thread_counts: list[dict[str, int]] = []  # one per thread that ever counted; kept so totals never go down
_samples: dict[str, list[float]] = {}


def _own_counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    with _lock:
        _thread_counts.append(counts)
    _local.counts = counts
    return counts


def incr(name: str, amount: int = 1) -> None:
    try:
        counts: dict[str, int] = _local.counts
    except AttributeError:
        counts = _own_counts()
    counts[name] = counts.get(name, 0) + amount


def observe(name: str, value: float) -> None:
    """Record one sample (e.g. ``signal_to_order_ms``)."""
    with _lock:
        bucket = _samples.setdefault(name, [])
        if len(bucket) < _MAX_SAMPLES:
            bucket.append(value)


def counters() -> dict[str, int]:
    with _lock:
        per_thread = [dict(counts) for counts in _thread_counts]
    total: Counter[str] = Counter()
    for counts in per_thread:
        total.update(counts)
    return dict(total)


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
        for counts in _thread_counts:
            counts.clear()
        _samples = {}
