"""The test kit: what tests and benchmarks share, so no test module imports another (like ``structlog.testing``).

* waiting: ``wait_for`` / ``wait_for_async`` (poll a predicate; ``GENEROUS_S`` deadline for a loaded machine);
* clock: ``short_timers`` (runs an engine's short timers on a ``FakeClock``: its persistence windows at
  ``SHORT_WINDOWS``), so the test advances only the long ones;
* logs: ``capture_logs`` (context manager; the ``captured_logs`` fixture), ``events``;
* recorders: ``Recorder`` (a ref that records what it is told; ``wait(n)``), ``RecorderActor`` (a pykka one);
* PostgreSQL: ``fetch`` / ``fetchval`` / ``execute``, ``HeldConnection``, ``TcpProxy`` (fault injection),
  ``fresh_database``; the fixtures ``pg_server`` / ``pg_dsn`` / ``pg_data_dir`` / ``io_loop`` live in
  ``tests.kit.fixtures`` (registered by ``tests/conftest.py``);
* the engine: ``running_engine``, ``engine_config``, ``seed_whale`` / ``seed_followers``, ``insert_signal``,
  ``signal_row``, ``wait_signal_done``, ``settle``;
* the exchange emulator: ``Emulator`` (own loop thread; the ``emulator`` fixture), ``fund_accounts``, ``key_of``,
  ``ccxt_harness`` (a ``CcxtVenue`` on an emulator in the test's loop);
* the engine on a venue: ``engine_on_venue`` (emulator + funded followers + engine with a ``CcxtVenue``),
  ``trades_of`` and ``check_trades`` (one venue order per client order id, fills as the venue booked them).
"""

from tests.kit.clock import SHORT_WINDOWS, short_timers
from tests.kit.emulator import (
    API_KEY,
    CCXT_TIMEOUT_MS,
    MARKETS,
    MARKS,
    PASSPHRASE,
    SECRET,
    START_USDT,
    VENUES,
    CcxtHarness,
    Emulator,
    ccxt_harness,
    fund_accounts,
    key_of,
)
from tests.kit.engine import (
    engine_config,
    insert_signal,
    running_engine,
    seed_followers,
    seed_whale,
    settle,
    signal_row,
    wait_signal_done,
)
from tests.kit.logs import LogEntries, capture_logs, events
from tests.kit.pg import HeldConnection, TcpProxy, execute, fetch, fetchval, fresh_database, server_dir
from tests.kit.recorder import Recorder, RecorderActor
from tests.kit.venue_engine import VenueEngine, check_trades, engine_on_venue, trades_of
from tests.kit.waiting import GENEROUS_S, wait_for, wait_for_async

__all__ = [
    "API_KEY",
    "CCXT_TIMEOUT_MS",
    "GENEROUS_S",
    "MARKETS",
    "MARKS",
    "PASSPHRASE",
    "SECRET",
    "SHORT_WINDOWS",
    "START_USDT",
    "VENUES",
    "CcxtHarness",
    "Emulator",
    "HeldConnection",
    "LogEntries",
    "Recorder",
    "RecorderActor",
    "TcpProxy",
    "VenueEngine",
    "capture_logs",
    "ccxt_harness",
    "check_trades",
    "engine_config",
    "engine_on_venue",
    "events",
    "execute",
    "fetch",
    "fetchval",
    "fresh_database",
    "fund_accounts",
    "insert_signal",
    "key_of",
    "running_engine",
    "seed_followers",
    "seed_whale",
    "server_dir",
    "settle",
    "short_timers",
    "signal_row",
    "trades_of",
    "wait_for",
    "wait_for_async",
    "wait_signal_done",
]
