"""Scenario 5, logging and decoding.

* Logs: scenario 1's fan-out (10,000 followers, mixed settings, so about a tenth of them skip and log
  ``copy.skipped``) with info-level JSON logs on vs off, alternating on/off runs in one process (pairs in
  alternating order). "On" is the
  production configuration (structlog + orjson, one line per fact) writing to /dev/null; "off" is level error.
* Decoding: one signal as JSON bytes decoded 100,000 times, ``msgspec.json.Decoder(Signal)`` vs
  ``orjson.loads`` + building the ``Signal`` by hand from the dict (what a decoder without a schema costs).

    .venv/bin/python -m bench logging [--quick]
"""

from __future__ import annotations

import io
import time
from datetime import datetime
from decimal import Decimal
from typing import IO, Any, cast

import msgspec
import orjson

from actors.follower import FollowerActor
from bench import configure_logs
from bench._engine import make_signal
from bench._report import row
from bench.fanout import SYMBOLS, WHALE_ID, Bench, Followers, mark_price
from engine import logs, runtime
from engine.config import RuntimeConfig
from engine.messages import Priority, Side, Signal, SignalAction, TradeType

SCENARIO = "5 logging and decoding"


def _fanout_logs(n: int, repeats: int) -> tuple[list[float], list[float], int]:

    runtime.configure_pool()
    runtime.tune_gc(gen0_threshold=RuntimeConfig().gc_gen0_threshold)  # as scenario 1 and the engine
    bench = Bench()
    followers = Followers(n)
    ctx = bench.context()
    with runtime.long_lived_allocations():
        refs = {s.user.user_id: FollowerActor.start(s, ctx) for s in followers.states}
    on: list[float] = []
    off: list[float] = []
    lines = 0
    try:
        for i, symbol in enumerate(SYMBOLS[: 2 * repeats + 2]):
            # Pairs in alternating order (off/on, on/off, ...): neither side always runs later in the pair,
            # so drift within a run (shrinking free balances, the box's other load) does not favour one side.
            logs_on = (i % 2 == 1) != ((i // 2) % 2 == 1)
            counter = _LineCounter() if logs_on else None
            if counter is not None:
                # A raw binary stream is all logs.configure writes to; typeshed does not count RawIOBase as IO[bytes].
                logs.configure("info", cast(IO[bytes], counter))
            else:
                configure_logs(on=False)
            _, orders = followers.plain_loop(make_signal(0, whale_id=WHALE_ID, symbol=symbol, price=mark_price(symbol)))
            elapsed = bench.route(refs, symbol, orders)
            if i >= 2:  # the first pair warms up
                (on if logs_on else off).append(elapsed)
            if counter is not None:
                lines = counter.lines
    finally:
        configure_logs(on=False)
        runtime.stop_actors(list(refs.values()), timeout_s=600)
        bench.stop()
    return on, off, lines


class _LineCounter(io.RawIOBase):
    """A binary sink like /dev/null that counts the lines written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.lines += bytes(data).count(b"\n") or 1
        return len(data)


def _signal_from_dict(d: dict[str, Any]) -> Signal:
    return Signal(
        signal_id=int(d["signal_id"]),
        external_id=str(d["external_id"]),
        whale_id=int(d["whale_id"]),
        symbol=str(d["symbol"]),
        side=Side(d["side"]),
        action=SignalAction(d["action"]),
        trade_type=TradeType(d["trade_type"]),
        price=Decimal(d["price"]),
        size_usdt=Decimal(d["size_usdt"]),
        leverage=int(d.get("leverage", 1)),
        priority=Priority(d.get("priority", "medium")),
        detected_at=datetime.fromisoformat(d["detected_at"]),
        expires_at=datetime.fromisoformat(d["expires_at"]) if d.get("expires_at") else None,
        fraction=Decimal(d["fraction"]) if d.get("fraction") is not None else None,
    )


def _decode(count: int, repeats: int) -> tuple[list[float], list[float]]:
    payload = msgspec.json.encode(make_signal(42, whale_id=1, symbol="ETH/USDT:USDT", price=Decimal("3000.25")))
    decoder = msgspec.json.Decoder(Signal)
    assert decoder.decode(payload) == _signal_from_dict(orjson.loads(payload))
    fast: list[float] = []
    slow: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            decoder.decode(payload)
        fast.append((time.perf_counter() - started) / count * 1e6)
        started = time.perf_counter()
        for _ in range(count):
            _signal_from_dict(orjson.loads(payload))
        slow.append((time.perf_counter() - started) / count * 1e6)
    return fast, slow


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    n = 2_000 if quick else 10_000
    on, off, lines = _fanout_logs(n, 3 if quick else 5)
    cost = _median(on) / _median(off)
    fast, slow = _decode(20_000 if quick else 100_000, 5)
    speedup = _median(slow) / _median(fast)
    return [
        row(SCENARIO, f"fan-out N={n:,}, logs off", off, unit="s"),
        row(
            SCENARIO, f"fan-out N={n:,}, info JSON logs on", on, unit="s", ratio=cost, ratio_label="on / off",
            target="≤ 1.25x", ok=cost <= 1.25, note=f"{lines:,} log lines per fan-out (on)",
        ),
        row(SCENARIO, "signal decode: orjson + dict → Signal", slow, unit="µs"),
        row(
            SCENARIO, "signal decode: msgspec Decoder(Signal)", fast, unit="µs", ratio=speedup,
            ratio_label="orjson+dict / msgspec",
        ),
    ]  # fmt: skip


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
