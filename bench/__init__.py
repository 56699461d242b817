"""Benchmarks: ``make bench`` (``python -m bench``) runs every scenario and writes docs/benchmarks.md.

One module per scenario (``fanout``, ``durable``, ``persistence_mixed``, ``startstop``, ``logging_decode``,
``sustained``, ``bench_price_tick``), each with ``run(quick=...) -> list[row]``; each runs in its own process
(clean RSS, pool and metrics). ``bench_runtime`` and ``bench_persistence`` are component benchmarks that the
scenarios reuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from engine import logs

_devnull: BinaryIO | None = None


def configure_logs(*, on: bool) -> None:
    """Engine logs as in production (info-level JSON) written to /dev/null, or off (errors only)."""
    global _devnull

    if _devnull is None:
        _devnull = Path("/dev/null").open("wb")  # noqa: SIM115 - kept open for the process
    logs.configure("info" if on else "error", _devnull)
