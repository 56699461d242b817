"""Signal parsing and validation; the intake's outage logging on the real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import asyncpg
import pytest

from adapters.database import connect
from adapters.signal_intake import CLAIM_SQL, SignalIntake
from engine.clock import SystemClock
from engine.messages import Priority, Side, Signal, SignalAction, SignalStatusRow, TradeType
from engine.signals import SignalRejected, normalize_symbol, parse_signal
from tests.kit import TcpProxy, capture_logs, events, insert_signal, wait_for_async

NOW = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)


def data(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "signal_id": 5,
        "whale_id": 3,
        "symbol": "BTCUSDT",
        "trade_type": "futures",
        "side": "BUY",
        "action": "open",
        "price": "50000.5",
        "size_usdt": 1000,
        "leverage": 10,
        "detected_at": "2025-01-02T11:59:58Z",
    }
    base.update(kw)
    return base


def rejected(reason: str, **kw: Any) -> SignalRejected:
    with pytest.raises(SignalRejected) as info:
        parse_signal(data(**kw), now=NOW)
    assert info.value.reason == reason, info.value
    return info.value


def test_parse_json_like() -> None:
    s = parse_signal(data(), now=NOW)
    assert s.symbol == "BTC/USDT:USDT" and s.trade_type is TradeType.FUTURES
    assert s.side is Side.BUY and s.action is SignalAction.OPEN and s.price == D("50000.5")
    assert s.size_usdt == D(1000) and s.external_id == "5" and s.priority is Priority.MEDIUM
    assert s.detected_at == NOW - timedelta(seconds=2) and s.fraction is None


def test_parse_db_row_like() -> None:
    row = data(
        symbol="ETH/USDT",
        trade_type=None,
        price=D("3000"),
        detected_at=NOW.replace(tzinfo=None),
        external_id="abc",
        extra_column=1,
        leverage=5,
    )
    s = parse_signal(row, now=NOW)
    assert s.symbol == "ETH/USDT" and s.trade_type is TradeType.SPOT and s.leverage == 1
    assert s.detected_at == NOW and s.external_id == "abc"


def test_epoch_ms_and_float() -> None:
    s = parse_signal(data(detected_at=int(NOW.timestamp() * 1000), price=0.1), now=NOW)
    assert s.detected_at == NOW and s.price == D("0.1")


def test_detected_at_defaults_to_now() -> None:
    d = data()
    del d["detected_at"]
    assert parse_signal(d, now=NOW).detected_at == NOW


def test_reduce_and_close_fractions() -> None:
    assert parse_signal(data(action="reduce", fraction="0.25"), now=NOW).fraction == D("0.25")
    assert parse_signal(data(action="close"), now=NOW).fraction == D(1)
    rejected("bad_fraction", action="reduce")
    rejected("bad_fraction", action="reduce", fraction=0)
    rejected("bad_fraction", action="reduce", fraction="1.5")


def test_missing_field_names_the_field() -> None:
    d = data()
    del d["price"]
    with pytest.raises(SignalRejected) as info:
        parse_signal(d, now=NOW)
    assert info.value.reason == "missing_field" and "price" in info.value.detail


@pytest.mark.parametrize(
    ("reason", "kw"),
    [
        ("bad_field", {"side": "sideways"}),
        ("bad_field", {"signal_id": "5"}),
        ("bad_field", {"whale_id": True}),
        ("bad_field", {"price": "abc"}),
        ("bad_field", {"price": "NaN"}),
        ("bad_field", {"leverage": 0}),
        ("bad_field", {"symbol": "BTCEUR"}),
        ("bad_field", {"symbol": "BTC/USDT", "trade_type": "futures"}),
        ("bad_field", {"detected_at": "2025-01-02T13:00:00Z"}),
        ("bad_field", {"detected_at": "yesterday"}),
        ("missing_field", {"symbol": "BTCUSDT", "trade_type": None}),
        ("non_positive_price", {"price": 0}),
        ("non_positive_size", {"size_usdt": "-1"}),
        ("stale", {"detected_at": "2025-01-02T11:50:00Z"}),
        ("expired", {"expires_at": "2025-01-02T12:00:00Z"}),
    ],
)
def test_rejections(reason: str, kw: dict[str, Any]) -> None:
    err = rejected(reason, **kw)
    assert err.detail


@pytest.mark.parametrize("action", ["close", "reduce"])
def test_an_exit_of_any_age_is_accepted(action: str) -> None:
    """Age and ``expires_at`` limit entries only: an hours-old, expired whale exit still parses (a few minutes of
    downtime must not drop the whale's closes)."""
    old = data(action=action, fraction="0.5", detected_at="2025-01-02T08:00:00Z", expires_at="2025-01-02T09:00:00Z")
    signal = parse_signal(old, now=NOW)
    assert signal.action == action and signal.detected_at == datetime(2025, 1, 2, 8, 0, tzinfo=UTC)


def test_max_age_is_configurable() -> None:
    parse_signal(data(detected_at="2025-01-02T11:50:00Z"), now=NOW, max_age_s=3600)


@pytest.mark.parametrize(
    ("raw", "tt", "expected"),
    [
        ("BTCUSDT", TradeType.FUTURES, "BTC/USDT:USDT"),
        ("btc-usdt", TradeType.SPOT, "BTC/USDT"),
        ("BTC/USDT:USDT", None, "BTC/USDT:USDT"),
        ("1000PEPE_USDT", TradeType.FUTURES, "1000PEPE/USDT:USDT"),
    ],
)
def test_normalize_symbol(raw: str, tt: TradeType | None, expected: str) -> None:
    assert normalize_symbol(raw, tt)[1] == expected


def test_intake_error_is_logged_once_per_outage_not_per_poll(pg_dsn: str) -> None:
    """The claim's database goes away for many polls: one ``intake.error`` when it starts, one
    ``intake.recovered`` when it ends (was one ``intake.error`` per poll), and the row waiting is then taken."""
    proxy = TcpProxy.for_dsn(pg_dsn)
    attempts: list[str] = []
    routed: list[Signal] = []

    async def claim(limit: int) -> list[Any]:
        attempts.append("claim")
        conn = await connect(proxy.dsn(pg_dsn), timeout_s=2)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(CLAIM_SQL, limit)
            return rows
        finally:
            await conn.close()

    def reject(row: SignalStatusRow) -> None:
        raise AssertionError(f"nothing is rejected here: {row}")

    async def run() -> None:
        intake = SignalIntake(
            dsn=pg_dsn, claim=claim, route=routed.append, reject=reject, poll_interval_ms=20, batch_size=10,
            max_age_s=60, clock=SystemClock(),
        )  # fmt: skip
        proxy.refuse()
        await intake.start()
        try:
            await wait_for_async(lambda: len(attempts) >= 10)  # ten failed polls at least
            signal_id = await asyncio.to_thread(insert_signal, pg_dsn, whale_id=1, symbol="BTC/USDT:USDT", price=50_000)
            proxy.resume()
            await wait_for_async(lambda: any(s.signal_id == signal_id for s in routed))
        finally:
            await intake.stop()
            proxy.close()

    with capture_logs() as logs:
        asyncio.run(run())
    assert len(events(logs, "intake.error")) == 1, events(logs, "intake.error")
    [recovered] = events(logs, "intake.recovered")
    assert recovered["failed_rounds"] >= 10
