"""Benchmark of the pooled actor runtime against pykka's ThreadingActor.

Run: ``.venv/bin/python bench/bench_runtime.py``. Importable: ``run(...) -> dict`` (for ``make bench``).

Measures: start time and RSS delta of 100,000 pooled actors; fan-out (one message to each of 1k/10k/100k
actors, each answers a collector by ``tell``) for 1 and 2 workers; bulk stop of 100,000; and the same
fan-out for 1,000 ThreadingActors.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pykka

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.runtime import PooledActor, WorkerPool, stop_actors

_TIMEOUT_S = 600.0


def _classes(base: type[pykka.Actor], pool: WorkerPool | None) -> tuple[type[pykka.Actor], type[pykka.Actor]]:
    extra: dict[str, Any] = {"actor_pool": pool} if pool is not None else {}

    class Collector(base):  # type: ignore[valid-type,misc]
        def __init__(self, expected: int, done: threading.Event) -> None:
            super().__init__()
            self.expected = expected
            self.done = done
            self.count = 0

        def on_receive(self, message: Any) -> None:
            self.count += 1
            if self.count == self.expected:
                self.done.set()

    class Follower(base):  # type: ignore[valid-type,misc]
        def __init__(self, collector: pykka.ActorRef[Any]) -> None:
            super().__init__()
            self.collector = collector

        def on_receive(self, message: Any) -> None:
            self.collector.tell(message)

    for name, value in extra.items():
        setattr(Collector, name, value)
        setattr(Follower, name, value)
    return Collector, Follower


def _fan_out(collector_cls: type[pykka.Actor], refs: list[pykka.ActorRef[Any]], rounds: int) -> float:
    """Median seconds for one message to each ref and all replies back at a collector."""
    times: list[float] = []
    for _ in range(rounds):
        done = threading.Event()
        collector = collector_cls.start(len(refs), done)
        # Followers reply to whoever is current: swap the collector in with a proxy set (one ask each
        # would dominate the time), so set it directly before the timed part: they are idle now.
        for ref in refs:
            actor = ref._actor_weakref()
            assert actor is not None
            actor.collector = collector
        started = time.perf_counter()
        for ref in refs:
            ref.tell(1)
        if not done.wait(_TIMEOUT_S):
            msg = "fan-out did not complete"
            raise RuntimeError(msg)
        times.append(time.perf_counter() - started)
        collector.stop()
    return statistics.median(times)


def _rss_mb() -> float:
    rss_bytes: int = psutil.Process().memory_info().rss
    return rss_bytes / 1e6


def _bench_pooled(workers: int, actors: int, fan_out_sizes: tuple[int, ...], rounds: int) -> dict[str, float]:
    pool = WorkerPool(workers=workers, max_messages_per_turn=32)
    collector_cls, follower_cls = _classes(PooledActor, pool)
    results: dict[str, float] = {}
    gc.collect()
    rss_before = _rss_mb()
    placeholder = collector_cls.start(0, threading.Event())
    started = time.perf_counter()
    refs = [follower_cls.start(placeholder) for _ in range(actors)]
    results[f"pooled_w{workers}_start_{actors}_s"] = time.perf_counter() - started
    results[f"pooled_w{workers}_start_{actors}_rss_mb"] = _rss_mb() - rss_before
    for size in fan_out_sizes:
        if size <= actors:
            results[f"pooled_w{workers}_fan_out_{size}_s"] = _fan_out(collector_cls, refs[:size], rounds)
    started = time.perf_counter()
    stop_actors([*refs, placeholder], timeout_s=_TIMEOUT_S)
    results[f"pooled_w{workers}_stop_{actors}_s"] = time.perf_counter() - started
    pool.shutdown()
    return results


def _bench_threading(actors: int, rounds: int) -> dict[str, float]:
    collector_cls, follower_cls = _classes(pykka.ThreadingActor, None)
    results: dict[str, float] = {}
    gc.collect()
    rss_before = _rss_mb()
    placeholder = collector_cls.start(0, threading.Event())
    started = time.perf_counter()
    refs = [follower_cls.start(placeholder) for _ in range(actors)]
    results[f"threading_start_{actors}_s"] = time.perf_counter() - started
    results[f"threading_start_{actors}_rss_mb"] = _rss_mb() - rss_before
    results[f"threading_fan_out_{actors}_s"] = _fan_out(collector_cls, refs, rounds)
    started = time.perf_counter()
    stop_actors([*refs, placeholder], timeout_s=_TIMEOUT_S)
    results[f"threading_stop_{actors}_s"] = time.perf_counter() - started
    return results


def _in_child(args: list[str]) -> dict[str, float]:
    # A fresh process per configuration, so RSS deltas and GC state do not leak between them.
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(
    *,
    actors: int = 100_000,
    fan_out_sizes: tuple[int, ...] = (1_000, 10_000, 100_000),
    workers_options: tuple[int, ...] = (1, 2),
    threading_actors: int = 1_000,
    rounds: int = 3,
) -> dict[str, float]:
    """Run the benchmark, each configuration in a fresh process; returns seconds and MB by name."""
    results: dict[str, float] = {}
    sizes = ",".join(str(size) for size in fan_out_sizes)
    for workers in workers_options:
        results.update(_in_child(["pooled", str(workers), str(actors), sizes, str(rounds)]))
    results.update(_in_child(["threading", "0", str(threading_actors), "", str(rounds)]))
    return results


def _child_main(kind: str, workers: str, actors: str, sizes: str, rounds: str) -> None:
    if kind == "pooled":
        fan_out_sizes = tuple(int(size) for size in sizes.split(",") if size)
        result = _bench_pooled(int(workers), int(actors), fan_out_sizes, int(rounds))
    else:
        result = _bench_threading(int(actors), int(rounds))
    print(json.dumps(result))


def main() -> None:
    """Print the measurements, one per line."""
    for name, value in run().items():
        print(f"{name:40s} {value:10.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child_main(*sys.argv[2:7])
    else:
        main()
