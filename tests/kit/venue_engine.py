"""The engine on a real venue: an ``Emulator``, funded accounts for the followers, their users and follows in the
database, and a running engine whose one venue is a ``CcxtVenue`` on that emulator::

    with engine_on_venue(pg_dsn, data_dir, venue="binance", trade_type=TradeType.FUTURES,
                         whale_id=901, followers=range(1, 101)) as s:
        signal_id = insert_signal(s.dsn, whale_id=s.whale_id, symbol="BTC/USDT:USDT", price=MARKS["BTC"])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.ccxt_venue import CcxtVenue
from adapters.credentials import CredentialStore
from engine.clock import SYSTEM_CLOCK
from engine.messages import TradeType
from node.system import EngineSystem
from tests.kit.emulator import CCXT_TIMEOUT_MS, MARKS, Emulator, fund_accounts
from tests.kit.engine import running_engine, seed_whale
from tests.kit.pg import execute, fetch


@dataclass
class VenueEngine:
    venue: str  # the venue kind: binance / bybit / bitget
    name: str  # the configured venue name users put in preferred_exchange
    emu: Emulator
    system: EngineSystem
    dsn: str
    whale_id: int
    followers: range


@contextlib.contextmanager
def engine_on_venue(
    dsn: str,
    data_dir: Path,
    *,
    venue: str,
    trade_type: TradeType,
    whale_id: int,
    followers: range,
    user: Mapping[str, Any] | None = None,
    follow: Mapping[str, Any] | None = None,
    venue_config: Mapping[str, Any] | None = None,
    weight_window: tuple[int, float] | None = None,
    seed: Callable[[Emulator, str], None] | None = None,
) -> Iterator[VenueEngine]:
    """Start the emulator (with ``weight_window`` = (limit, seconds) if given), fund one account per follower,
    insert the followers (``users`` columns in ``user``) following ``whale_id`` (``user_whale_follows`` columns in
    ``follow``), and run an engine whose one venue, ``<venue>-<trade type>``, is configured with
    ``venue_config`` (TOML values); ``seed(emu, name)`` runs just before the engine starts (rows or accounts of the
    test's own). Yield, then stop both."""
    name = f"{venue}-{trade_type.value}"
    emu = Emulator((venue,))
    try:
        if trade_type is TradeType.SPOT:
            for base, mark in MARKS.items():
                emu.call(emu.server.set_mark, f"{base}/USDT", mark)
        if weight_window is not None:
            emu.set_window(venue, limit=weight_window[0], window_s=weight_window[1])
        environ = fund_accounts(emu, venue, followers)
        seed_whale(dsn, whale_id)
        for uid in followers:
            _insert(dsn, "users", {"id": uid, "name": f"u{uid}", "credential_ref": f"env:U{uid}",
                                   "preferred_exchange": name, **(user or {})})  # fmt: skip
            _insert(dsn, "user_whale_follows", {"user_id": uid, "whale_id": whale_id, **(follow or {})})
        if seed is not None:
            seed(emu, name)
        adapter = CcxtVenue(
            venue,
            trade_type=trade_type,
            api_base_url=emu.server.url_for(venue),
            credentials=CredentialStore(environ),
            clock=SYSTEM_CLOCK,
            ccxt_options={"timeout": CCXT_TIMEOUT_MS},
        )
        fields = {"name": name, "kind": venue, "trade_types": [trade_type.value], **(venue_config or {})}
        venue_toml = "[{" + ", ".join(f"{k} = {_toml(v)}" for k, v in fields.items()) + "}]"
        with running_engine(
            dsn, data_dir, venues={name: adapter}, ENGINE_VENUES=venue_toml, ENGINE_LOG_LEVEL="error"
        ) as system:
            yield VenueEngine(venue, name, emu, system, dsn, whale_id, followers)
    finally:
        emu.stop()


def trades_of(dsn: str, signal_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in fetch(dsn, "SELECT * FROM trades WHERE signal_id = $1", signal_id)]


def check_trades(s: VenueEngine, trades: list[dict[str, Any]]) -> None:
    """Each trade agrees with the venue; one venue order per client order id at most."""
    for trade in trades:
        cid = trade["client_order_id"]
        count = s.emu.call(s.emu.server.order_count, cid, s.venue)
        assert count <= 1, cid
        if trade["status"] in ("filled", "partially_filled"):
            order = s.emu.order(s.venue, cid)
            assert trade["executed_qty"] == order.filled > 0, cid
            assert trade["executed_price"] == order.avg_price, cid
        else:
            assert count == 0 or s.emu.order(s.venue, cid).filled == 0, cid


def _insert(dsn: str, table: str, cols: Mapping[str, Any]) -> None:
    names = ", ".join(cols)
    params = ", ".join(f"${i + 1}" for i in range(len(cols)))
    execute(dsn, f"INSERT INTO {table} ({names}) VALUES ({params})", *cols.values())


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
