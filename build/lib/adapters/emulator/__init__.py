"""A local exchange emulator for tests: the REST subset ccxt's binance, bybit and bitget classes call.

No network: it binds 127.0.0.1 on port 0. See ``EmulatorServer``.
"""

from adapters.emulator.positions import FuturesPosition
from adapters.emulator.server import EmulatorServer
from adapters.emulator.state import DEFAULT_MARKETS, FAULTS, MarketSpec

__all__ = ["DEFAULT_MARKETS", "FAULTS", "EmulatorServer", "FuturesPosition", "MarketSpec"]
