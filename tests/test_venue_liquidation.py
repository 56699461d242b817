"""Liquidation on a real venue is the venue's call: the engine against the local exchange emulator.

For each of binance, bybit and bitget (USDT futures), three followers copy one 10x long; then the mark falls past
our isolated-margin estimate of the liquidation price:

* follower A: the venue liquidated it (emulator control) -> booked LIQUIDATED, margin lost;
* follower B: the venue says its liquidation price is far lower -> stays OPEN, the venue's price is adopted
  (and persisted), and only when the mark crosses *that* and the venue is flat is it liquidated;
* follower C: the venue still holds it at about our estimate -> stays OPEN: the estimate alone never liquidates.

Every question goes through the exchange actor (the emulator sees ``fetch_positions`` calls, weight budget kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from engine.messages import TradeType
from tests.kit import VENUES, VenueEngine, engine_on_venue, fetch, insert_signal, key_of, wait_for, wait_signal_done

SYMBOL = "ETH/USDT:USDT"
ENTRY = 3000


@dataclass
class Setup(VenueEngine):
    users: tuple[int, int, int]  # (liquidated at the venue, far venue liquidation price, untouched)


@pytest.fixture(scope="module", params=VENUES)
def engine_on(request: pytest.FixtureRequest, pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    venue = request.param
    index = VENUES.index(venue) + 1
    users = (index * 1000 + 1, index * 1000 + 2, index * 1000 + 3)
    with engine_on_venue(
        pg_dsn,
        tmp_path_factory.mktemp(f"liq-{venue}"),
        venue=venue,
        trade_type=TradeType.FUTURES,
        whale_id=950 + index,
        followers=range(users[0], users[-1] + 1),
        user={"max_leverage": 20},
        follow={"max_open_positions": 5, "max_slippage_pct": 5, "max_signal_age_s": 600},
        venue_config={
            "weight_per_minute": 36000,
            "weight_window_s": 5.0,
            "price_poll_interval_ms": 200,
            "liquidation_check_interval_ms": 300,
            "liquidation_check_band_pct": 1.0,
            "retry_base_ms": 50.0,
            "retry_max_ms": 500.0,
        },
        weight_window=(3000, 5.0),
    ) as engine:
        s = Setup(**vars(engine), users=users)
        _open_longs(s, s.whale_id)
        yield s
        assert s.emu.call(s.emu.server.weight_excess, venue) == []


def _open_longs(s: Setup, whale_id: int) -> None:
    venue = s.system.venues[s.name]
    wait_for(lambda: SYMBOL in venue.marks, 60)
    signal_id = insert_signal(
        s.dsn, whale_id=whale_id, symbol=SYMBOL, side="buy", price=ENTRY, size_usdt=10_000, leverage=10
    )
    assert wait_signal_done(s.dsn, signal_id, 120)["status"] == "processed"
    wait_for(lambda: len(_open(s)) == 3, 90, interval_s=0.2)


def _open(s: Setup) -> dict[int, dict[str, Any]]:
    s.system.persistence.proxy().flush(30).get(timeout=60)
    rows = fetch(s.dsn, "SELECT * FROM positions WHERE venue = $1 AND status = 'open'", s.name)
    return {r["user_id"]: dict(r) for r in rows}


def _position(s: Setup, uid: int) -> dict[str, Any]:
    s.system.persistence.proxy().flush(30).get(timeout=60)
    return dict(fetch(s.dsn, "SELECT * FROM positions WHERE user_id = $1 AND venue = $2", uid, s.name)[0])


def _positions_calls(s: Setup) -> int:
    marker = {"binance": "positionrisk", "bybit": "/position/list", "bitget": "/position/"}[s.venue]
    requests = s.emu.call(lambda: list(s.emu.server.venues[s.venue].requests))
    return sum(1 for _, path in requests if marker in path.lower())


def test_the_venue_decides_liquidation(engine_on: Setup) -> None:
    s = engine_on
    gone, far, kept = s.users
    before = _open(s)
    estimate = before[kept]["liquidation_price"]
    entry = before[kept]["entry_price"]
    assert estimate == pytest.approx(entry * (1 - Decimal("0.1") + Decimal("0.005")), rel=Decimal("1e-6"))
    s.emu.call(s.emu.server.liquidate, s.venue, key_of(gone), SYMBOL)
    s.emu.call(s.emu.server.set_liquidation_price, s.venue, key_of(far), SYMBOL, 2000)
    calls_before = _positions_calls(s)

    s.emu.call(s.emu.server.set_mark, SYMBOL, estimate * Decimal("0.99"))  # past our estimate, for everyone

    wait_for(lambda: _position(s, gone)["status"] == "liquidated", 60, interval_s=0.2)
    liquidated = _position(s, gone)
    assert liquidated["qty"] == 0 and liquidated["close_reason"] == "liquidation"
    assert liquidated["realized_pnl_usdt"] <= -before[gone]["margin_usdt"]
    wait_for(lambda: _position(s, far)["liquidation_price"] == 2000, 60, interval_s=0.2)
    # Past the estimate for several check intervals: the venue still holds them, so they stay open.
    wait_for(lambda: _positions_calls(s) >= calls_before + 6, 60, interval_s=0.2)
    still = _open(s)
    assert set(still) == {far, kept}
    assert still[kept]["qty"] == before[kept]["qty"]

    # Past the venue's own liquidation price, and the venue liquidated it: now it is booked.
    s.emu.call(s.emu.server.liquidate, s.venue, key_of(far), SYMBOL)
    s.emu.call(s.emu.server.set_mark, SYMBOL, 1990)
    wait_for(lambda: _position(s, far)["status"] == "liquidated", 60, interval_s=0.2)
    assert _position(s, kept)["status"] == "open"
    balances = fetch(s.dsn, "SELECT reserved FROM balances WHERE user_id = ANY($1::bigint[])", list(s.users))
    assert all(b["reserved"] == 0 for b in balances)
