"""The admin protocol: one frozen msgspec Struct per command and their tagged union.

Pure: no I/O. The admin socket (``adapters/admin_socket.py``) decodes each line with ``decode_command``;
the CLI (``adapters/admin_cli.py``) builds it with ``engine.cli_args.parse_cli_args``. On the wire a
command is one JSON object whose ``cmd`` field is the command name, e.g.
``{"cmd": "positions", "user_id": 5, "open": true}``.

Two levels: read-only commands (``READ_ONLY_COMMANDS``) may be run by every peer the socket lets in; mutating
ones (``MUTATING_COMMANDS``, ``is_mutating``) can be limited to some uids by config.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, get_args

import msgspec

from engine.messages import TradeStatus

# Database ids are positive bigints; 0 or a negative id is a typo, not a lookup that finds nothing.
Id = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
PauseTarget = Literal["all", "whale", "user", "exchange"]
LogLevelName = Literal["debug", "info", "warning", "error"]


class CommandError(Exception):
    """A command that cannot be decoded, is not allowed, or that the engine refuses. ``str()`` is the message
    the operator sees in the ``{"ok": false, "error": ...}`` reply."""


class Peer(msgspec.Struct, frozen=True, kw_only=True):
    """Who is on the other end of an admin connection (from ``SO_PEERCRED``, at connect time)."""

    uid: int
    gid: int
    pid: int


class AdminCommand(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="cmd"):
    """Base of every admin command. ``mutating`` says whether config may restrict it to some uids."""

    mutating: ClassVar[bool] = True


# ---------------------------------------------------------------------------------------------------------
# Read-only
# ---------------------------------------------------------------------------------------------------------


class Status(AdminCommand, tag="status", frozen=True):
    """Engine state: uptime, draining, connections to the database and venues."""

    mutating: ClassVar[bool] = False


class Stats(AdminCommand, tag="stats", frozen=True):
    """Counters and latencies."""

    mutating: ClassVar[bool] = False


class Users(AdminCommand, tag="users", frozen=True):
    """Every follower the engine holds."""

    mutating: ClassVar[bool] = False


class User(AdminCommand, tag="user", frozen=True):
    """One follower in detail."""

    mutating: ClassVar[bool] = False
    user_id: Id


class Positions(AdminCommand, tag="positions", frozen=True):
    """Positions, optionally of one user and/or only the open ones (``"open": true`` on the wire)."""

    mutating: ClassVar[bool] = False
    user_id: Id | None = None
    open_only: bool = msgspec.field(default=False, name="open")


class Trades(AdminCommand, tag="trades", frozen=True):
    """Trades of one user or of one signal (not both), optionally with one status."""

    mutating: ClassVar[bool] = False
    user_id: Id | None = None
    signal_id: Id | None = None
    status: TradeStatus | None = None

    def __post_init__(self) -> None:
        if self.user_id is not None and self.signal_id is not None:
            raise ValueError("give user_id or signal_id, not both")


class DryRun(AdminCommand, tag="dry-run", frozen=True):
    """What every follower would do with this signal, without placing anything. ``payload`` is validated by
    the engine's signal parser, not here."""

    mutating: ClassVar[bool] = False
    payload: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------
# Mutating
# ---------------------------------------------------------------------------------------------------------


class InjectSignal(AdminCommand, tag="signal", frozen=True):
    """Inject a whale signal as if it had been detected. ``payload`` is validated by the engine's signal
    parser."""

    payload: dict[str, Any]


class _Targeted(AdminCommand, frozen=True):
    """``target`` all | whale (``id``) | user (``id``) | exchange (``exchange``)."""

    target: PauseTarget = "all"
    target_id: Id | None = msgspec.field(default=None, name="id")
    exchange: NonEmptyStr | None = None

    def __post_init__(self) -> None:
        if self.target in ("whale", "user"):
            if self.target_id is None or self.exchange is not None:
                raise ValueError(f"target {self.target!r} needs `id` (an integer) and no `exchange`")
        elif self.target == "exchange":
            if self.exchange is None or self.target_id is not None:
                raise ValueError("target 'exchange' needs `exchange` (a venue name) and no `id`")
        elif self.target_id is not None or self.exchange is not None:
            raise ValueError("target 'all' takes neither `id` nor `exchange`")


class Pause(_Targeted, tag="pause", frozen=True):
    """Stop opening copies for everything / a whale / a user / an exchange. Exits still run."""


class Resume(_Targeted, tag="resume", frozen=True):
    """Undo ``pause`` for the same target."""


class Close(AdminCommand, tag="close", frozen=True):
    """Close one position at market."""

    position_id: NonEmptyStr


class CloseAll(AdminCommand, tag="close-all", frozen=True):
    """Close every open position of one user at market."""

    user_id: Id


class SetPrice(AdminCommand, tag="price", frozen=True):
    """Set the mark price of a symbol (paper venue / tests). ``price`` is a decimal string, > 0."""

    symbol: NonEmptyStr
    price: Decimal

    def __post_init__(self) -> None:
        if not self.price.is_finite() or self.price <= 0:
            raise ValueError(f"price must be a finite decimal > 0, got {self.price}")


class Reconcile(AdminCommand, tag="reconcile", frozen=True):
    """Resolve UNKNOWN orders and compare positions with the venues now."""


class Reload(AdminCommand, tag="reload", frozen=True):
    """Reload users, follows and whales from the database."""


class SetLogLevel(AdminCommand, tag="log-level", frozen=True):
    """Change the log level of the running engine."""

    level: LogLevelName


class Drain(AdminCommand, tag="drain", frozen=True):
    """Stop taking new signals; let in-flight orders finish."""


class Shutdown(AdminCommand, tag="shutdown", frozen=True):
    """Drain, then stop the engine."""


Command = (
    Status
    | Stats
    | Users
    | User
    | Positions
    | Trades
    | InjectSignal
    | DryRun
    | Pause
    | Resume
    | Close
    | CloseAll
    | SetPrice
    | Reconcile
    | Reload
    | SetLogLevel
    | Drain
    | Shutdown
)

COMMAND_TYPES: dict[str, type[AdminCommand]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Status, Stats, Users, User, Positions, Trades, InjectSignal, DryRun, Pause, Resume,
        Close, CloseAll, SetPrice, Reconcile, Reload, SetLogLevel, Drain, Shutdown,
    )
}  # fmt: skip
COMMAND_NAMES: tuple[str, ...] = tuple(COMMAND_TYPES)
READ_ONLY_COMMANDS: frozenset[str] = frozenset(n for n, c in COMMAND_TYPES.items() if not c.mutating)
MUTATING_COMMANDS: frozenset[str] = frozenset(n for n, c in COMMAND_TYPES.items() if c.mutating)

USAGE: dict[str, str] = {
    "status": "status",
    "stats": "stats",
    "users": "users",
    "user": "user ID",
    "positions": "positions [--user ID] [--open]",
    "trades": "trades [--user ID | --signal ID] [--status STATUS]",
    "signal": "signal '{...signal JSON...}'",
    "dry-run": "dry-run '{...signal JSON...}'",
    "pause": "pause [all | whale ID | user ID | exchange NAME]",
    "resume": "resume [all | whale ID | user ID | exchange NAME]",
    "close": "close POSITION_ID",
    "close-all": "close-all USER_ID",
    "price": "price SYMBOL PRICE",
    "reconcile": "reconcile",
    "reload": "reload",
    "log-level": "log-level debug|info|warning|error",
    "drain": "drain",
    "shutdown": "shutdown",
}


def command_name(cmd: AdminCommand) -> str:
    """The wire name (``cmd`` tag) of a command."""
    return str(type(cmd).__struct_config__.tag)


def is_mutating(cmd: AdminCommand | str) -> bool:
    """Whether a command (or command name) changes engine state. Unknown names count as mutating."""
    if isinstance(cmd, str):
        return cmd not in READ_ONLY_COMMANDS
    return type(cmd).mutating


def command_args(cmd: AdminCommand) -> dict[str, Any]:
    """The command's fields as JSON-ready builtins, without ``cmd`` (for logs)."""
    args: dict[str, Any] = msgspec.to_builtins(cmd)
    args.pop("cmd", None)
    return args


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------

_decoder = msgspec.json.Decoder(Command)


class _CmdOnly(msgspec.Struct):
    cmd: Any = None


_FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "status": tuple(s.value for s in TradeStatus),
    "target": get_args(PauseTarget),
    "level": get_args(LogLevelName),
}
_PATH_RE = re.compile(r" - at `\$\.?([^`]*)`$")


def decode_command(line: bytes) -> Command:
    """Decode one protocol line into a command. Raises ``CommandError`` saying what is wrong."""
    try:
        cmd: Command = _decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise CommandError(_explain(line, str(exc))) from None
    except msgspec.DecodeError as exc:
        raise CommandError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise CommandError("invalid JSON: nested too deeply") from None
    except UnicodeDecodeError:
        raise CommandError("invalid JSON: not valid UTF-8") from None
    return cmd


def convert_command(obj: Any) -> Command:
    """Like ``decode_command`` for an already-parsed JSON object (the CLI validates before sending)."""
    try:
        cmd: Command = msgspec.convert(obj, Command)
    except msgspec.ValidationError as exc:
        raise CommandError(_explain_obj(obj, str(exc))) from None
    return cmd


def _explain(line: bytes, error: str) -> str:
    try:
        cmd = msgspec.json.decode(line, type=_CmdOnly).cmd
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        cmd = None  # not an object at all: the validation message already says so
    return _explain_cmd(cmd, error)


def _explain_obj(obj: Any, error: str) -> str:
    return _explain_cmd(obj.get("cmd") if isinstance(obj, dict) else None, error)


def _explain_cmd(cmd: Any, error: str) -> str:
    known = ", ".join(COMMAND_NAMES)
    match = _PATH_RE.search(error)
    if match is None and error.startswith("Expected `object`"):
        return f'a command is a JSON object like {{"cmd": "status"}}; {_lower(error)}'
    if error == "Object missing required field `cmd`":
        return f"missing field 'cmd'; commands: {known}"
    if match and match.group(1) == "cmd":
        shown = repr(cmd) if len(repr(cmd)) <= 60 else repr(cmd)[:57] + "..."
        return f"unknown command {shown}; commands: {known}"
    if isinstance(cmd, str) and cmd in USAGE:
        field = match.group(1) if match else ""
        where = f" (field {field!r})" if field else ""
        reason = _lower(_PATH_RE.sub("", error))
        if field in _FIELD_CHOICES:
            reason += f", expected one of: {', '.join(_FIELD_CHOICES[field])}"
        return f"invalid {cmd!r} command{where}: {reason}; usage: {USAGE[cmd]}"
    return _lower(error)


def _lower(message: str) -> str:
    return message[:1].lower() + message[1:]
