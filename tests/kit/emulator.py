"""The local exchange emulator for tests: on its own loop thread (``Emulator``, for engine tests, whose engine
has its own loop), or in the test's own loop with a ``CcxtVenue`` on it (``ccxt_harness``, for adapter tests).

Accounts: ``fund_accounts(emu, venue, user_ids)`` opens one funded account per user and returns the environment
their ``env:U<id>`` credential references read (``key_of(uid)`` is the API key)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from adapters.ccxt_venue import CcxtVenue
from adapters.credentials import Credential, CredentialStore
from adapters.emulator import EmulatorServer, MarketSpec
from adapters.ioloop import IoLoop
from engine.clock import SYSTEM_CLOCK
from engine.messages import OrderRequest, Side, TradeType
from tests.kit.waiting import GENEROUS_S

T = TypeVar("T")

VENUES = ("binance", "bybit", "bitget")
#: Mark prices of the emulator's USDT markets (perpetual and spot) for engine tests.
MARKS = {
    "BTC": 50000, "ETH": 3000, "SOL": 150, "XRP": 2, "ADA": 1, "DOT": 7, "LTC": 80, "LINK": 14, "AVAX": 30,
    "ATOM": 9,
}  # fmt: skip
MARKETS = tuple(
    MarketSpec(base, "USDT", Decimal("0.001"), Decimal("0.001"), Decimal("0.001"), Decimal(5), 100) for base in MARKS
)
START_USDT = Decimal(100_000)
#: A ccxt HTTP timeout that bounds waiting, not behaviour: generous for a loaded two-core machine, and below
#: the exchange actor's own 30 s call timeout.
CCXT_TIMEOUT_MS = 10_000


class Emulator:
    """An ``EmulatorServer`` on its own loop thread; every control call runs on that loop (it is not
    thread-safe). Futures marks from ``MARKS`` are set."""

    def __init__(self, venues: tuple[str, ...] = VENUES) -> None:
        self.io = IoLoop().start()
        self.server = EmulatorServer(venues, markets=MARKETS, retry_after_s=2, client_id_scope="open")
        self.io.run(self.server.start(), GENEROUS_S)
        for base, mark in MARKS.items():
            self.call(self.server.set_mark, f"{base}/USDT:USDT", mark)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async def run() -> T:
            return fn(*args, **kwargs)

        return self.io.run(run(), GENEROUS_S)

    def set_window(self, venue: str, *, limit: int, window_s: float) -> None:
        def apply() -> None:
            state = self.server.venues[venue]
            state.weight_limit, state.weight_window_s = limit, window_s
            state._window_start, state._window_weight = time.monotonic(), 0  # a fresh window from here
            state.weight_excess.clear()

        self.call(apply)

    def order(self, venue: str, cid: str) -> Any:
        return self.call(lambda: next(o for o in self.server.venues[venue].orders if o.client_order_id == cid))

    def stop(self) -> None:
        self.io.run(self.server.stop(), GENEROUS_S)
        self.io.stop()


def key_of(user_id: int) -> str:
    return f"emu-key-{user_id:06d}-abcdef"


def fund_accounts(emu: Emulator, venue: str, user_ids: Iterable[int], usdt: Decimal = START_USDT) -> dict[str, str]:
    """Emulator accounts for ``user_ids``; returns the environment their ``env:U<id>`` references read."""
    environ: dict[str, str] = {}
    for uid in user_ids:
        secret, passphrase = f"emu-secret-{uid}-TOPSECRET", f"emu-pass-{uid}"
        emu.call(emu.server.add_account, venue, key_of(uid), secret, passphrase)
        emu.call(emu.server.deposit, venue, key_of(uid), "USDT", usdt)
        environ.update({f"U{uid}_API_KEY": key_of(uid), f"U{uid}_SECRET": secret, f"U{uid}_PASSPHRASE": passphrase})
    return environ


# ---- a CcxtVenue on an emulator in the test's own loop ------------------------------------------------------------

API_KEY = "emu-key-0123456789abcdef"
SECRET = "emu-secret-TOPSECRET-9876543210"
PASSPHRASE = "emu-pass-phrase-42"


@dataclass
class CcxtHarness:
    """An emulator with two funded accounts (users 1 and 2) and a ``CcxtVenue`` on it."""

    emu: EmulatorServer
    venue: CcxtVenue
    name: str
    trade_type: TradeType
    symbol: str
    store: CredentialStore

    def order(
        self,
        cid: str,
        *,
        qty: str = "0.01",
        side: Side = Side.BUY,
        user_id: int = 1,
        reduce_only: bool = False,
        leverage: int = 5,
        price_hint: int = 50000,
    ) -> OrderRequest:
        return OrderRequest(
            client_order_id=cid,
            user_id=user_id,
            venue=self.name,
            symbol=self.symbol,
            trade_type=self.trade_type,
            side=side,
            qty=Decimal(qty),
            price_hint=Decimal(price_hint),
            reduce_only=reduce_only,
            leverage=leverage,
        )

    def calls(self, fragment: str) -> int:
        return sum(1 for _, path in self.emu.requests(self.name) if path.endswith(fragment))


@contextlib.asynccontextmanager
async def ccxt_harness(
    case: tuple[str, TradeType], *, secret: str = SECRET, timeout_ms: int = CCXT_TIMEOUT_MS
) -> AsyncIterator[CcxtHarness]:
    """``case`` is (venue, trade type); ``secret`` the one user 1's credential signs with; ``timeout_ms`` the
    ccxt HTTP timeout (short only where a test waits for it to expire)."""
    name, trade_type = case
    emu = EmulatorServer((name,))
    await emu.start()
    emu.add_account(name, API_KEY, SECRET, PASSPHRASE)
    emu.add_account(name, API_KEY + "2", SECRET + "2", PASSPHRASE)
    for key in (API_KEY, API_KEY + "2"):
        emu.deposit(name, key, "USDT", 100_000)
        emu.deposit(name, key, "BTC", 1)
    store = CredentialStore({})
    store.register("mem:1", Credential(API_KEY, secret, PASSPHRASE))
    store.register("mem:2", Credential(API_KEY + "2", SECRET + "2", PASSPHRASE))
    venue = CcxtVenue(
        name,
        trade_type=trade_type,
        api_base_url=emu.url_for(name),
        credentials=store,
        clock=SYSTEM_CLOCK,
        credential_refs={1: "mem:1", 2: "mem:2"},
        ccxt_options={"timeout": timeout_ms},
    )
    symbol = "BTC/USDT" if trade_type is TradeType.SPOT else "BTC/USDT:USDT"
    try:
        yield CcxtHarness(emu, venue, name, trade_type, symbol, store)
        assert emu.weight_excess(name) == []
    finally:
        await venue.close()
        await emu.stop()
