"""Real venues end to end on SPOT markets: the engine against the local exchange emulator, for Binance, Bybit and
Bitget. A module of its own, so its engines get their own database (two engines on one database would claim each
other's signals)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from engine.messages import TradeType
from tests.kit import (
    MARKS,
    VENUES,
    VenueEngine,
    check_trades,
    engine_on_venue,
    fetch,
    insert_signal,
    key_of,
    trades_of,
    wait_for,
    wait_signal_done,
)


@pytest.fixture(scope="module", params=VENUES)
def spot_on(
    request: pytest.FixtureRequest, pg_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VenueEngine]:
    """The engine on a venue's spot market: the same accounts and checks as futures, no leverage."""
    venue = request.param
    index = VENUES.index(venue) + 4
    with engine_on_venue(
        pg_dsn,
        tmp_path_factory.mktemp(f"spot-{venue}"),
        venue=venue,
        trade_type=TradeType.SPOT,
        whale_id=900 + index,
        followers=range(index * 10_000 + 1, index * 10_000 + 21),
        follow={"max_slippage_pct": 5, "max_signal_age_s": 600},
        venue_config={
            "weight_per_minute": 36000,
            "weight_window_s": 5.0,
            "price_poll_interval_ms": 5000,
            "unknown_grace_s": 5.0,
        },
    ) as s:
        yield s


def test_spot_copy_and_whale_close(spot_on: VenueEngine) -> None:
    """Spot buys copied, then the whale's close sells every holding: every trade filled, one venue order per
    client order id, no position left in the books and at most sub-lot dust at the venue (a venue that takes the
    buy's fee in the base asset used to make every copied close fail for insufficient balance)."""
    s = spot_on
    symbol, mark = "ETH/USDT", MARKS["ETH"]
    venue = s.system.venues[s.name]
    wait_for(lambda: symbol in venue.marks, 60)
    opened = insert_signal(s.dsn, whale_id=s.whale_id, symbol=symbol, side="buy", price=mark, size_usdt=10_000)
    assert wait_signal_done(s.dsn, opened, 120)["copied"] == len(s.followers)
    closed = insert_signal(s.dsn, whale_id=s.whale_id, symbol=symbol, side="sell", action="close", price=mark)
    assert wait_signal_done(s.dsn, closed, 120)["copied"] == len(s.followers)

    def all_final() -> bool:
        s.system.persistence.proxy().flush(30).get(timeout=60)
        rows = fetch(s.dsn, "SELECT status FROM trades WHERE signal_id = ANY($1::bigint[])", [opened, closed])
        return len(rows) == 2 * len(s.followers) and all(r["status"] == "filled" for r in rows)

    wait_for(all_final, 90, interval_s=0.5)
    for signal_id in (opened, closed):
        check_trades(s, trades_of(s.dsn, signal_id))
    held = fetch(s.dsn, "SELECT count(*) AS n FROM positions WHERE user_id = ANY($1::bigint[]) AND status = 'open'",
                 list(s.followers))  # fmt: skip
    assert held[0]["n"] == 0
    # What is left at the venue is at most dust below one lot (0.001 here): a fee taken in ETH leaves a holding
    # that is not a whole number of lots, and only whole lots can be sold.
    for uid in s.followers:
        assert 0 <= s.emu.call(s.emu.server.balance, s.venue, key_of(uid), "ETH") < Decimal("0.001"), uid
