"""Made-up paper markets at round prices and the steps of the snapshot tests (follow, signal, copy, tick the
price feed, read the figures). Shared by the snapshot and snapshot-timer tests."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from engine.messages import MarketInfo, TradeType
from node.price_feed import PriceFeed
from node.system import EngineSystem
from tests.kit.engine import insert_signal, seed_followers, seed_whale, settle, wait_signal_done
from tests.kit.pg import fetchval

D = Decimal
PRICES = {"SNF": D(100), "SNS": D(50), "SNC": D(200), "SNR": D(100), "DLA": D(100), "DLB": D(100), "DLC": D(100)}


def markets() -> list[MarketInfo]:
    out: list[MarketInfo] = []
    for base in PRICES:
        common: dict[str, Any] = {"base": base, "quote": "USDT", "qty_step": D("0.001"), "price_tick": D("0.01")}
        out.append(MarketInfo(symbol=f"{base}/USDT", trade_type=TradeType.SPOT, taker_fee_rate=D("0.001"), **common))
        out.append(
            MarketInfo(
                symbol=f"{base}/USDT:USDT",
                trade_type=TradeType.FUTURES,
                max_leverage=50,
                taker_fee_rate=D("0.0005"),
                **common,
            )
        )
    return out


def follow(system: EngineSystem, dsn: str, user_id: int, whale_id: int, **settings: Any) -> None:
    seed_whale(dsn, whale_id)
    cols = {"max_leverage": 20, "max_slippage_pct": D(5), **settings}
    seed_followers(dsn, whale_id=whale_id, user_ids=[user_id], user={"max_leverage": 20}, follow=cols)
    assert system.supervisor is not None
    system.io.run(system.supervisor.reload([user_id]), 30)


def tick(system: EngineSystem) -> None:
    system.persistence.proxy().flush(30).get(timeout=60)
    feed = next(s for s in system.services if isinstance(s, PriceFeed))
    system.io.run(feed._refresh_holdings(), 30)
    system.io.run(feed.tick(), 30)


def signal(
    dsn: str,
    whale_id: int,
    symbol: str,
    *,
    side: str = "buy",
    action: str = "open",
    leverage: int = 5,
    detected_at: datetime | None = None,
) -> int:
    """``detected_at``: the engine's clock when it is not the real one (else the row's default, now)."""
    price = PRICES[symbol.split("/", maxsplit=1)[0]]
    return insert_signal(
        dsn,
        whale_id=whale_id,
        symbol=symbol,
        side=side,
        action=action,
        price=price,
        leverage=leverage,
        detected_at=detected_at,
    )


def copied(system: EngineSystem, dsn: str, signal_id: int) -> dict[str, Any]:
    row = wait_signal_done(dsn, signal_id)
    settle(system)
    return row


def status(dsn: str, position_id: str) -> str | None:
    value: str | None = fetchval(dsn, "SELECT status FROM positions WHERE position_id = $1", position_id)
    return value


def figures(row: Any) -> dict[str, Any]:
    names = ("equity_usdt", "free_usdt", "reserved_usdt", "unrealized_pnl_usdt", "realized_pnl_usdt")
    out = {n: D(row[n]) if isinstance(row, dict) else getattr(row, n) for n in names}
    for n in ("open_positions", "trades_today"):
        out[n] = row[n] if isinstance(row, dict) else getattr(row, n)
    return out
