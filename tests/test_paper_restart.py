"""``make run`` restarts with a fresh paper venue (it lives in memory): the engine gives it back the balances and
positions its books hold, so closes of positions opened before the restart still execute."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from adapters.paper import PaperVenue
from tests.kit import (
    fetch,
    fetchval,
    insert_signal,
    running_engine,
    seed_followers,
    seed_whale,
    settle,
    wait_for,
    wait_signal_done,
)


def test_positions_survive_a_fresh_paper_venue(pg_dsn: str, tmp_path: Path) -> None:
    seed_whale(pg_dsn, 71)
    seed_followers(pg_dsn, whale_id=71, user_ids=[7101, 7102], follow={"fixed_usdt": Decimal(100)})
    first = PaperVenue()
    mark = first.marks()["ETH/USDT:USDT"]
    with running_engine(pg_dsn, tmp_path, venue=first) as system:
        long_id = insert_signal(pg_dsn, whale_id=71, symbol="ETH/USDT:USDT", side="buy", price=mark, leverage=5)
        spot_id = insert_signal(pg_dsn, whale_id=71, symbol="ETH/USDT", side="buy", price=first.marks()["ETH/USDT"])
        wait_signal_done(pg_dsn, long_id)
        wait_signal_done(pg_dsn, spot_id)
        settle(system)
    assert fetchval(pg_dsn, "SELECT count(*) FROM positions WHERE user_id IN (7101, 7102) AND status = 'open'") == 4

    second = PaperVenue()  # what a restart of `make run` gets: an empty venue
    with running_engine(pg_dsn, tmp_path, venue=second) as system:
        assert second.position_qty(7101, "ETH/USDT:USDT") > 0
        assert second.balance(7101, "ETH") > 0
        close_id = insert_signal(pg_dsn, whale_id=71, symbol="ETH/USDT:USDT", side="sell", action="close", price=mark)
        row = wait_signal_done(pg_dsn, close_id)
        assert row["copied"] == 2
        assert system.supervisor is not None
        for uid in (7101, 7102):
            ref = system.follower_refs()[uid]
            spot = next(
                p for p in ref.proxy().describe().get(timeout=10)["open_positions"] if p["symbol"] == "ETH/USDT"
            )
            assert ref.proxy().close_position(spot["position_id"]).get(timeout=10)["closing"] is True
        settle(system)
        wait_for(
            lambda: (
                fetchval(pg_dsn, "SELECT count(*) FROM positions WHERE user_id IN (7101, 7102) AND status = 'open'")
                == 0
            )
        )
    statuses = {r["status"] for r in fetch(pg_dsn, "SELECT status FROM trades WHERE user_id IN (7101, 7102)")}
    assert statuses == {"filled"}
