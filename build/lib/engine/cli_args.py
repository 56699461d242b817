"""The command line of ``run_engine.py``: one argparse parser, with sub-commands.

    run_engine.py [run] [--config FILE] [--demo]                          start the engine (``run`` is the default)
    run_engine.py admin COMMAND [ARGS] [--json] [--socket PATH] [--config FILE]    talk to a running engine

``admin``'s commands are argparse sub-commands too, one per admin command (``engine/admin_commands.py`` defines
and validates them); each turns its arguments into the JSON object the admin socket takes. ``--json``,
``--socket`` and ``--config`` may come before or after the admin command. Pure: no I/O.

Bad arguments: ``run``'s exit 2 with its usage (argparse's way); ``admin``'s raise ``CommandError`` (the admin CLI
prints it and exits 1, since its exit 2 means "engine not reachable"), naming the command's usage.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from engine.admin_commands import COMMAND_NAMES, USAGE, CommandError, convert_command

__all__ = ["AdminArgs", "RunArgs", "admin_usage", "parse_admin_args", "parse_cli_args", "parse_command_line"]

_PROG = "run_engine.py"
_HELP_WORDS = ("help", "-h", "--help")


@dataclass(frozen=True, slots=True)
class RunArgs:
    """``run_engine.py [run]``: start the engine."""

    config: str | None
    demo: bool


@dataclass(frozen=True, slots=True)
class AdminArgs:
    """``run_engine.py admin``: one command for a running engine. ``request`` is None for ``help``."""

    request: dict[str, Any] | None
    as_json: bool
    socket: Path | None
    config: str | None


def admin_usage() -> str:
    lines = ["usage: admin COMMAND [ARGS] [--json] [--socket PATH] [--config FILE]", "", "commands:"]
    lines += [f"  {USAGE[name]}" for name in COMMAND_NAMES]
    return "\n".join(lines)


def parse_command_line(argv: list[str]) -> RunArgs | AdminArgs:
    """The whole command line (without the program name). ``SystemExit(2)`` with usage for bad ``run``
    arguments; ``CommandError`` for bad ``admin`` ones."""
    if not argv or argv[0] not in ("run", "admin", "-h", "--help"):
        argv = ["run", *argv]  # ``run`` is the default sub-command
    parser, run = _parser()
    ns, extras = parser.parse_known_args(argv)
    if ns.command == "run":
        if extras:
            run.error(f"unrecognized arguments: {' '.join(extras)}")  # exit 2 with usage
        return RunArgs(config=ns.config, demo=ns.demo)
    if extras:
        name = ns.admin_command
        where = f"; usage: {USAGE[name]}" if name in USAGE else ""
        raise CommandError(f"unexpected argument(s): {' '.join(extras)}{where}")
    return _admin_args(ns)


def parse_admin_args(argv: list[str]) -> AdminArgs:
    """The arguments after ``admin``."""
    return parse_command_line(["admin", *argv])  # type: ignore[return-value]  # "admin" always gives AdminArgs


def parse_cli_args(argv: list[str]) -> dict[str, Any]:
    """Turn ``positions --user 5 --open`` / ``pause whale 3`` / ``price BTC/USDT 50000`` /
    ``signal '{"whale_id": 1, ...}'`` into the JSON object the socket takes. The result is validated
    (``CommandError`` if it would not decode), so a typo fails before anything is sent."""
    args = parse_admin_args(argv)
    if args.request is None:
        raise CommandError(f"no command given; commands: {', '.join(COMMAND_NAMES)}")
    return args.request


# -- the parser ------------------------------------------------------------------------------------------


class _AdminError(argparse.ArgumentParser):
    """An admin parser: a bad argument is a ``CommandError`` naming the command's usage, not an exit."""

    usage_line = ""

    def error(self, message: str) -> NoReturn:
        if (unknown := _INVALID_COMMAND.match(message)) is not None:
            raise CommandError(f"unknown command {unknown.group(1)}; commands: {', '.join(COMMAND_NAMES)}")
        where = f"; usage: {self.usage_line}" if self.usage_line else ""
        raise CommandError(f"{message}{where}")


_INVALID_COMMAND = re.compile(r"argument COMMAND: invalid choice: ('.*?') \(choose from")  # argparse's wording


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The whole parser, and its ``run`` sub-parser. No abbreviated options: a command line means one thing."""
    top = argparse.ArgumentParser(
        prog=_PROG, description="Run the copy-trading engine, or talk to a running one.", allow_abbrev=False
    )
    commands = top.add_subparsers(dest="command", metavar="{run,admin}", required=True)
    run = commands.add_parser("run", prog=f"{_PROG} [run]", help="start the engine (the default)", allow_abbrev=False)
    run.add_argument("--config", help="TOML config file (ENGINE_* environment variables override it)")
    run.add_argument("--demo", action="store_true", help="seed demo whales/followers and drive a demo feed")

    # The admin options, accepted before and after the command: SUPPRESS keeps a sub-parser from resetting
    # what the admin parser already read.
    options = _AdminError(add_help=False, allow_abbrev=False)
    options.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the raw reply")
    options.add_argument("--socket", type=Path, default=argparse.SUPPRESS, help="the engine's admin socket")
    options.add_argument("--config", default=argparse.SUPPRESS, help="config file naming the socket")
    admin = commands.add_parser(
        "admin",
        prog=f"{_PROG} admin",
        parents=[options],
        add_help=False,
        allow_abbrev=False,
        help="talk to a running engine",
    )
    admin.__class__ = _AdminError  # add_parser makes the top parser's class; admin's errors are CommandErrors
    admin.add_argument("-h", "--help", action="store_true", default=argparse.SUPPRESS)
    verbs = admin.add_subparsers(dest="admin_command", metavar="COMMAND", parser_class=_AdminError)
    verbs.add_parser("help", parents=[options], add_help=False, allow_abbrev=False)
    for name in COMMAND_NAMES:
        sub = verbs.add_parser(name, parents=[options], add_help=False, allow_abbrev=False, usage=USAGE[name])
        sub.usage_line = USAGE[name]
        _ARGUMENTS.get(name, _no_arguments)(sub)
    return top, run


def _admin_args(ns: argparse.Namespace) -> AdminArgs:
    as_json, socket, config = getattr(ns, "json", False), getattr(ns, "socket", None), getattr(ns, "config", None)
    name = ns.admin_command
    if name is None or name == "help" or getattr(ns, "help", False):
        return AdminArgs(request=None, as_json=as_json, socket=socket, config=config)
    try:
        request = {"cmd": name, **ns.build(ns)}
    except CommandError as exc:
        raise CommandError(f"{exc}; usage: {USAGE[name]}") from None
    convert_command(request)  # validated here: a typo fails before anything is sent
    return AdminArgs(request=request, as_json=as_json, socket=socket, config=config)


# -- each admin command's arguments ------------------------------------------------------------------------


def _int_of(what: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {value!r}") from None

    return parse


def _json_object(value: str) -> dict[str, Any]:
    try:
        obj = msgspec.json.decode(value)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"the payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("the payload must be a JSON object")
    return obj


def _no_arguments(sub: argparse.ArgumentParser) -> None:
    sub.set_defaults(build=lambda _ns: {})


def _user_id(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("user_id", metavar="ID", type=_int_of("user ID"))
    sub.set_defaults(build=lambda ns: {"user_id": ns.user_id})


def _positions(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--user", type=_int_of("--user"))
    sub.add_argument("--open", action="store_true")
    sub.set_defaults(build=lambda ns: _present(user_id=ns.user, open=ns.open or None))


def _trades(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--user", type=_int_of("--user"))
    sub.add_argument("--signal", type=_int_of("--signal"))
    sub.add_argument("--status")
    sub.set_defaults(build=lambda ns: _present(user_id=ns.user, signal_id=ns.signal, status=ns.status))


def _payload(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("payload", metavar="JSON", type=_json_object)
    sub.set_defaults(build=lambda ns: {"payload": ns.payload})


def _target_words(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("target", metavar="TARGET", nargs="*")
    sub.set_defaults(build=lambda ns: _target(ns.target))


def _close(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("position_id", metavar="POSITION_ID")
    sub.set_defaults(build=lambda ns: {"position_id": ns.position_id})


def _price(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("symbol", metavar="SYMBOL")
    sub.add_argument("price", metavar="PRICE")
    sub.set_defaults(build=lambda ns: {"symbol": ns.symbol, "price": ns.price})


def _log_level(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("level", metavar="LEVEL")
    sub.set_defaults(build=lambda ns: {"level": ns.level.lower()})


_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "user": _user_id,
    "close-all": _user_id,
    "positions": _positions,
    "trades": _trades,
    "signal": _payload,
    "dry-run": _payload,
    "pause": _target_words,
    "resume": _target_words,
    "close": _close,
    "price": _price,
    "log-level": _log_level,
}


def _present(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _target(words: list[str]) -> dict[str, Any]:
    if not words or words == ["all"]:
        return {"target": "all"}
    if len(words) == 2 and words[0] in ("whale", "user"):
        try:
            return {"target": words[0], "id": _int_of(f"{words[0]} ID")(words[1])}
        except argparse.ArgumentTypeError as exc:
            raise CommandError(str(exc)) from None
    if len(words) == 2 and words[0] == "exchange":
        return {"target": "exchange", "exchange": words[1]}
    raise CommandError(f"bad target {' '.join(words)!r}")
