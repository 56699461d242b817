"""The admin CLI's arguments: ``positions --user 5 --open`` and the like, turned into the JSON object the admin
socket takes (``engine/admin_commands.py`` defines and validates the commands). Pure: no I/O."""

from __future__ import annotations

from typing import Any

import msgspec

from engine.admin_commands import COMMAND_NAMES, COMMAND_TYPES, USAGE, CommandError, convert_command


def parse_cli_args(argv: list[str]) -> dict[str, Any]:
    """Turn ``positions --user 5 --open`` / ``pause whale 3`` / ``price BTC/USDT 50000`` /
    ``signal '{"whale_id": 1, ...}'`` into the JSON object the socket takes. The result is validated
    (``CommandError`` if it would not decode), so a typo fails before anything is sent."""
    if not argv:
        raise CommandError(f"no command given; commands: {', '.join(COMMAND_NAMES)}")
    name, args = argv[0], argv[1:]
    if name not in COMMAND_TYPES:
        raise CommandError(f"unknown command {name!r}; commands: {', '.join(COMMAND_NAMES)}")
    usage = f"usage: {USAGE[name]}"
    try:
        obj = {"cmd": name, **_parse_args(name, args)}
    except CommandError as exc:
        raise CommandError(f"{exc}; {usage}") from None
    convert_command(obj)
    return obj


def _parse_args(name: str, args: list[str]) -> dict[str, Any]:
    if name in ("user", "close-all"):
        (value,) = _positional(args, 1)
        return {"user_id": _int(value, "user ID")}
    if name == "positions":
        opts = _options(args, value_flags=("--user",), bool_flags=("--open",))
        out: dict[str, Any] = {}
        if "--user" in opts:
            out["user_id"] = _int(opts["--user"], "--user")
        if opts.get("--open"):
            out["open"] = True
        return out
    if name == "trades":
        opts = _options(args, value_flags=("--user", "--signal", "--status"), bool_flags=())
        out = {}
        if "--user" in opts:
            out["user_id"] = _int(opts["--user"], "--user")
        if "--signal" in opts:
            out["signal_id"] = _int(opts["--signal"], "--signal")
        if "--status" in opts:
            out["status"] = opts["--status"]
        return out
    if name in ("signal", "dry-run"):
        (value,) = _positional(args, 1)
        return {"payload": _json_object(value)}
    if name in ("pause", "resume"):
        return _target(args)
    if name == "close":
        (value,) = _positional(args, 1)
        return {"position_id": value}
    if name == "price":
        symbol, price = _positional(args, 2)
        return {"symbol": symbol, "price": price}
    if name == "log-level":
        (value,) = _positional(args, 1)
        return {"level": value.lower()}
    _positional(args, 0)
    return {}


def _positional(args: list[str], count: int) -> list[str]:
    if len(args) != count:
        raise CommandError(f"expected {count} argument(s), got {len(args)}")
    return args


def _options(args: list[str], *, value_flags: tuple[str, ...], bool_flags: tuple[str, ...]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        flag, eq, inline = arg.partition("=")
        if flag in value_flags:
            if eq:
                opts[flag] = inline
            elif rest:
                opts[flag] = rest.pop(0)
            else:
                raise CommandError(f"{flag} needs a value")
        elif arg in bool_flags:
            opts[arg] = True
        else:
            raise CommandError(f"unexpected argument {arg!r}")
    return opts


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CommandError(f"{what} must be an integer, got {value!r}") from None


def _json_object(value: str) -> dict[str, Any]:
    try:
        obj = msgspec.json.decode(value)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise CommandError(f"the payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CommandError("the payload must be a JSON object")
    return obj


def _target(args: list[str]) -> dict[str, Any]:
    if not args or args == ["all"]:
        return {"target": "all"}
    if len(args) == 2 and args[0] in ("whale", "user"):
        return {"target": args[0], "id": _int(args[1], f"{args[0]} ID")}
    if len(args) == 2 and args[0] == "exchange":
        return {"target": "exchange", "exchange": args[1]}
    raise CommandError(f"bad target {' '.join(args)!r}")
