"""Engine configuration: a TOML file plus ``ENGINE_*`` environment overrides, decoded into frozen Structs.

Precedence: defaults < TOML file < environment. Environment keys are the config path in upper case joined by
double underscores (``ENGINE_PERSISTENCE__FLUSH_INTERVAL_MS=20``), plus short aliases for the common ones
(``ENGINE_DATABASE_URL``, ``ENGINE_DATA_DIR``, ``ENGINE_LOG_LEVEL``). Numbers carry their unit in their name.

A bad config raises ``ConfigError`` whose message names the key and the problem; ``run_engine.py`` turns it
into exit code 2.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
LogLevel = Literal["debug", "info", "warning", "error"]


class _Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class DatabaseConfig(_Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str | None = None  # None: start the embedded PostgreSQL in <data_dir>/pgdata
    pool_max_size: PositiveInt = 8
    connect_timeout_s: PositiveFloat = 10.0


class PersistenceConfig(_Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    durable_window_ms: PositiveFloat = 2.0
    durable_max_rows: PositiveInt = 2000
    # How long a group commit may take before its intents are answered "not durable" (no order is sent). Long
    # enough for a few thousand intents on a busy 2-core box with fsync on; short enough that a follower
    # does not act on a stale signal.
    durable_timeout_ms: PositiveFloat = 5000.0
    flush_interval_ms: PositiveFloat = 50.0
    flush_max_rows: PositiveInt = 5000
    queue_max_rows: PositiveInt = 500_000
    high_water_rows: PositiveInt = 100_000
    # Batched-lane batches written at once, each on its own connection (the server's work on several cores); they
    # still commit in the order they were formed.
    batches_in_flight: PositiveInt = 2


class RuntimeConfig(_Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    workers: PositiveInt = 1
    max_messages_per_turn: PositiveInt = 32
    gc_gen0_threshold: Annotated[int, msgspec.Meta(ge=0)] = 10_000  # 0: Python's default (700)


class LoggingConfig(_Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: LogLevel = "info"
    file: str | None = None  # None: stdout


class AdminConfig(_Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    socket_path: str | None = None  # None: <data_dir>/admin/engine.sock
    allow_mutating_uids: tuple[int, ...] | None = None  # None: every allowed peer may mutate
    max_connections: PositiveInt = 16  # past it, a new connection takes the slot of the one idle the longest
    idle_timeout_s: PositiveFloat = 300.0
    # From a line's first byte to its newline: a connection that starts a line and does not finish it in time is
    # told so and closed (a half-sent line cannot hold a slot for the idle timeout).
    line_deadline_ms: PositiveFloat = 5000.0


class VenueConfig(_Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    kind: Literal["paper", "binance", "bybit", "bitget"] = "paper"
    trade_types: tuple[Literal["spot", "futures"], ...] = ("spot", "futures")
    api_base_url: str | None = None  # testnets and the local emulator
    margin_mode: Literal["isolated", "cross"] = "isolated"
    weight_per_minute: PositiveInt = 6000
    weight_window_s: PositiveFloat = 60.0  # the venue's counting window (Bybit: 5 s); the budget is pro rata
    orders_per_second_per_account: PositiveInt = 10
    max_in_flight: PositiveInt = 512
    retry_max_attempts: PositiveInt = 5
    retry_base_ms: PositiveFloat = 100.0
    retry_max_ms: PositiveFloat = 5000.0
    breaker_error_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    breaker_min_requests: PositiveInt = 20
    breaker_window_s: PositiveFloat = 30.0
    breaker_cooldown_s: PositiveFloat = 15.0
    unknown_grace_s: PositiveFloat = 60.0  # an order the venue never heard of after this long is FAILED
    price_poll_interval_ms: PositiveFloat = 1000.0
    price_stale_after_ms: PositiveFloat = 10_000.0
    # Real venues, futures: near or past our estimated liquidation price the engine asks the venue for the position
    # (fetch_positions) instead of guessing; at most once per position per interval.
    liquidation_check_band_pct: Annotated[float, msgspec.Meta(ge=0, le=50)] = 1.0
    liquidation_check_interval_ms: PositiveFloat = 5000.0
    # Paper venue only.
    paper_latency_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    paper_slippage_bps: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    paper_starting_usdt: Annotated[float, msgspec.Meta(ge=0)] = 10_000.0


class SignalsConfig(_Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    listen: bool = True  # LISTEN on whale_signals and claim rows inserted by external detectors
    poll_interval_ms: PositiveFloat = 1000.0  # also poll, in case a NOTIFY was missed
    claim_batch_size: PositiveInt = 100
    max_signal_age_s: PositiveFloat = 300.0  # older entries are marked EXPIRED at claim time (exits never are)
    follows_poll_interval_ms: PositiveFloat = 5000.0
    # Follower copies the router lets be out at once (told, not yet answered); past it, signals wait in the router
    # in priority order instead of piling up in follower mailboxes (bounded memory under overload). Each copy out
    # still writes ~6 rows; 20,000 of them stay well inside persistence.queue_max_rows past its high-water mark.
    max_pending_copies: PositiveInt = 20_000


class DemoConfig(_Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    whales: PositiveInt = 3
    followers: PositiveInt = 300
    signal_interval_ms: PositiveFloat = 2000.0
    price_interval_ms: PositiveFloat = 500.0
    seed: int = 7


class EngineConfig(_Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = "./var"
    shutdown_grace_s: PositiveFloat = 10.0
    stats_interval_s: PositiveFloat = 10.0
    snapshot_interval_s: PositiveFloat = 300.0
    database: DatabaseConfig = DatabaseConfig()
    persistence: PersistenceConfig = PersistenceConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    logging: LoggingConfig = LoggingConfig()
    admin: AdminConfig = AdminConfig()
    signals: SignalsConfig = SignalsConfig()
    demo: DemoConfig = DemoConfig()
    venues: tuple[VenueConfig, ...] = (VenueConfig(name="paper"),)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def admin_socket_path(self) -> Path:
        if self.admin.socket_path:
            return Path(self.admin.socket_path)
        return self.data_path / "admin" / "engine.sock"


class ConfigError(Exception):
    """A config problem a user can fix; the message names the key."""


_ALIASES = {
    "ENGINE_DATABASE_URL": ("database", "url"),
    "ENGINE_DATA_DIR": ("data_dir",),
    "ENGINE_LOG_LEVEL": ("logging", "level"),
    "ENGINE_LOG_FILE": ("logging", "file"),
    "ENGINE_ADMIN_SOCKET": ("admin", "socket_path"),
}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> EngineConfig:
    """Defaults, then the TOML file at ``path``, then ``ENGINE_*`` variables from ``env`` (default: os.environ)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key, value in (os.environ if env is None else env).items():
        if not key.startswith("ENGINE_") or key == "ENGINE_CREDENTIALS_KEY":
            continue
        keypath = _ALIASES.get(key) or tuple(part.lower() for part in key[len("ENGINE_") :].split("__"))
        _set_path(raw, keypath, _parse_env_value(value), source=key)
    try:
        return msgspec.convert(raw, EngineConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {_readable(str(exc))}") from None


def _set_path(raw: dict[str, Any], keypath: tuple[str, ...], value: Any, *, source: str) -> None:
    node = raw
    for part in keypath[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: `{part}` is not a section")
        node = child
    node[keypath[-1]] = value


def _parse_env_value(value: str) -> Any:
    """Environment values are TOML values when they parse as one (numbers, booleans, arrays), else strings."""
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _readable(message: str) -> str:
    # msgspec says "... - at `$.persistence.flush_interval_ms`"; users think in dotted keys.
    head, sep, where = message.rpartition(" - at `$.")
    if not sep:
        return message
    return f"`{where.rstrip('`')}`: {head}"


def mask_url(url: str | None) -> str | None:
    """The URL with any password replaced by ``***``."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def effective_config(config: EngineConfig) -> dict[str, Any]:
    """The config as a plain dict, secrets masked, for the start-up log line."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    data["database"]["url"] = mask_url(config.database.url)
    return data
