"""The admin protocol without I/O: decoding commands, their error messages, CLI argument parsing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.admin_commands import (
    COMMAND_NAMES,
    MUTATING_COMMANDS,
    READ_ONLY_COMMANDS,
    Close,
    CloseAll,
    CommandError,
    Drain,
    DryRun,
    InjectSignal,
    Pause,
    Positions,
    Reconcile,
    Reload,
    Resume,
    SetLogLevel,
    SetPrice,
    Shutdown,
    Stats,
    Status,
    Trades,
    User,
    Users,
    command_args,
    command_name,
    convert_command,
    decode_command,
    is_mutating,
)
from engine.cli_args import parse_cli_args
from engine.messages import TradeStatus

SIGNAL = {"whale_id": 1, "symbol": "BTC/USDT", "side": "buy", "size_usdt": "100"}
SIGNAL_ARG = orjson.dumps(SIGNAL).decode()

# name -> (wire object, CLI argv, expected command)
EXAMPLES: dict[str, tuple[dict[str, Any], list[str], Any]] = {
    "status": ({"cmd": "status"}, ["status"], Status()),
    "stats": ({"cmd": "stats"}, ["stats"], Stats()),
    "users": ({"cmd": "users"}, ["users"], Users()),
    "user": ({"cmd": "user", "user_id": 5}, ["user", "5"], User(user_id=5)),
    "positions": (
        {"cmd": "positions", "user_id": 5, "open": True},
        ["positions", "--user", "5", "--open"],
        Positions(user_id=5, open_only=True),
    ),
    "trades": (
        {"cmd": "trades", "signal_id": 9, "status": "filled"},
        ["trades", "--signal", "9", "--status", "filled"],
        Trades(signal_id=9, status=TradeStatus.FILLED),
    ),
    "signal": ({"cmd": "signal", "payload": SIGNAL}, ["signal", SIGNAL_ARG], InjectSignal(payload=SIGNAL)),
    "dry-run": ({"cmd": "dry-run", "payload": SIGNAL}, ["dry-run", SIGNAL_ARG], DryRun(payload=SIGNAL)),
    "pause": (
        {"cmd": "pause", "target": "whale", "id": 3},
        ["pause", "whale", "3"],
        Pause(target="whale", target_id=3),
    ),
    "resume": (
        {"cmd": "resume", "target": "exchange", "exchange": "binance"},
        ["resume", "exchange", "binance"],
        Resume(target="exchange", exchange="binance"),
    ),
    "close": ({"cmd": "close", "position_id": "p1"}, ["close", "p1"], Close(position_id="p1")),
    "close-all": ({"cmd": "close-all", "user_id": 7}, ["close-all", "7"], CloseAll(user_id=7)),
    "price": (
        {"cmd": "price", "symbol": "BTC/USDT", "price": "50000.5"},
        ["price", "BTC/USDT", "50000.5"],
        SetPrice(symbol="BTC/USDT", price=Decimal("50000.5")),
    ),
    "reconcile": ({"cmd": "reconcile"}, ["reconcile"], Reconcile()),
    "reload": ({"cmd": "reload"}, ["reload"], Reload()),
    "log-level": ({"cmd": "log-level", "level": "debug"}, ["log-level", "debug"], SetLogLevel(level="debug")),
    "drain": ({"cmd": "drain"}, ["drain"], Drain()),
    "shutdown": ({"cmd": "shutdown"}, ["shutdown"], Shutdown()),
}


def test_examples_cover_every_command() -> None:
    assert set(EXAMPLES) == set(COMMAND_NAMES)
    assert len(COMMAND_NAMES) == 18


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_decodes_from_json(name: str) -> None:
    wire, _, expected = EXAMPLES[name]
    cmd = decode_command(orjson.dumps(wire))
    assert cmd == expected
    assert command_name(cmd) == name
    assert decode_command(msgspec.json.encode(cmd)) == cmd  # encode/decode round trip


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_decodes_from_cli_args(name: str) -> None:
    wire, argv, expected = EXAMPLES[name]
    obj = parse_cli_args(argv)
    assert obj == wire
    assert decode_command(orjson.dumps(obj)) == expected


def test_read_only_and_mutating() -> None:
    assert READ_ONLY_COMMANDS == {"status", "stats", "users", "user", "positions", "trades", "dry-run"}
    assert MUTATING_COMMANDS == set(COMMAND_NAMES) - READ_ONLY_COMMANDS
    for name, (_, _, cmd) in EXAMPLES.items():
        assert is_mutating(cmd) == (name in MUTATING_COMMANDS)
        assert is_mutating(name) == (name in MUTATING_COMMANDS)
    assert is_mutating("no-such-command")  # unknown: treat as the more dangerous kind


def test_commands_are_frozen() -> None:
    cmd = User(user_id=1)
    with pytest.raises(AttributeError):
        cmd.user_id = 2  # type: ignore[misc]


def test_command_args_for_logs() -> None:
    assert command_args(Pause(target="user", target_id=4)) == {"target": "user", "id": 4, "exchange": None}
    assert command_args(SetPrice(symbol="X", price=Decimal("1.10"))) == {"symbol": "X", "price": "1.10"}


@pytest.mark.parametrize(
    "argv",
    [
        ["positions"],
        ["positions", "--open"],
        ["trades"],
        ["trades", "--user=2"],
        ["trades", "--user", "2", "--status", "pending"],
        ["pause"],
        ["pause", "all"],
        ["pause", "user", "8"],
        ["resume", "whale", "1"],
        ["log-level", "WARNING"],
    ],
)
def test_more_cli_forms(argv: list[str]) -> None:
    convert_command(parse_cli_args(argv))


# -- errors ------------------------------------------------------------------------------------------------


def _error(line: bytes) -> str:
    with pytest.raises(CommandError) as info:
        decode_command(line)
    return str(info.value)


def test_unknown_command_lists_the_existing_ones() -> None:
    message = _error(b'{"cmd": "launch-missiles"}')
    assert "unknown command 'launch-missiles'" in message
    for name in COMMAND_NAMES:
        assert name in message


def test_unknown_command_huge_name_is_shortened() -> None:
    message = _error(orjson.dumps({"cmd": "x" * 10_000}))
    assert "unknown command" in message
    assert len(message) < 400


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"cmd": 3}', "unknown command 3"),
        (b"{}", "missing field 'cmd'"),
        (b"[1, 2]", "JSON object"),
        (b'"status"', "JSON object"),
        (b"{nope", "invalid JSON"),
        (b"", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b'{"cmd": "close", "position_id": "\xff"}', "invalid JSON"),
        (b"[" * 60_000, "JSON object"),
        (b'{"cmd": "signal", "payload": {"a": ' + b"[" * 60_000, "invalid JSON"),
        (b'{"cmd": "signal", "payload": {"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}", "invalid JSON"),
        (b'{"cmd": "user"}', "missing required field `user_id`"),
        (b'{"cmd": "user", "user_id": "5"}', "field 'user_id'"),
        (b'{"cmd": "user", "user_id": "5"}', "expected `int`, got `str`"),
        (b'{"cmd": "user", "user_id": 0}', "expected `int` >= 1"),
        (b'{"cmd": "user", "user_id": true}', "got `bool`"),
        (b'{"cmd": "status", "verbose": true}', "unknown field `verbose`"),
        (b'{"cmd": "positions", "open": "yes"}', "field 'open'"),
        (b'{"cmd": "trades", "user_id": 1, "signal_id": 2}', "not both"),
        (b'{"cmd": "trades", "status": "done"}', "expected one of: pending"),
        (b'{"cmd": "signal", "payload": [1]}', "field 'payload'"),
        (b'{"cmd": "signal"}', "missing required field `payload`"),
        (b'{"cmd": "pause", "target": "whale"}', "needs `id`"),
        (b'{"cmd": "pause", "target": "planet"}', "expected one of: all, whale, user, exchange"),
        (b'{"cmd": "pause", "target": "all", "id": 3}', "neither"),
        (b'{"cmd": "resume", "target": "exchange", "id": 3}', "needs `exchange`"),
        (b'{"cmd": "close", "position_id": ""}', "field 'position_id'"),
        (b'{"cmd": "price", "symbol": "BTC/USDT", "price": "0"}', "price must be a finite decimal > 0"),
        (b'{"cmd": "price", "symbol": "BTC/USDT", "price": "-3"}', "> 0"),
        (b'{"cmd": "price", "symbol": "BTC/USDT", "price": "NaN"}', "> 0"),
        (b'{"cmd": "price", "symbol": "BTC/USDT", "price": "Infinity"}', "> 0"),
        (b'{"cmd": "price", "symbol": "BTC/USDT", "price": "lots"}', "invalid decimal"),
        (b'{"cmd": "log-level", "level": "loud"}', "expected one of: debug, info, warning, error"),
    ],
)
def test_errors_name_the_problem(line: bytes, expected: str) -> None:
    assert expected in _error(line)


def test_field_error_includes_usage() -> None:
    assert "usage: user ID" in _error(b'{"cmd": "user", "user_id": "x"}')


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "no command given"),
        (["nope"], "unknown command 'nope'"),
        (["user"], "the following arguments are required: ID"),
        (["user", "x"], "user ID must be an integer"),
        (["user", "0"], ">= 1"),
        (["positions", "--user"], "argument --user: expected one argument"),
        (["positions", "--verbose"], "unexpected argument(s): --verbose"),
        (["trades", "--user", "1", "--signal", "2"], "not both"),
        (["signal", "{not json"], "not valid JSON"),
        (["signal", "[1]"], "must be a JSON object"),
        (["pause", "whale"], "bad target 'whale'"),
        (["pause", "whale", "x"], "whale ID must be an integer"),
        (["price", "BTC/USDT"], "the following arguments are required: PRICE"),
        (["price", "BTC/USDT", "-1"], "> 0"),
        (["log-level", "loud"], "expected one of"),
        (["status", "extra"], "unexpected argument(s): extra"),
    ],
)
def test_cli_arg_errors(argv: list[str], expected: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_cli_args(argv)
    assert expected in str(info.value)


# -- properties ----------------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_command_error(line: bytes) -> None:
    try:
        decode_command(line)
    except CommandError as exc:
        assert str(exc)


@settings(max_examples=300)
@given(st.sampled_from(COMMAND_NAMES), st.dictionaries(st.text(max_size=12), _json_values, max_size=4))
def test_random_fields_only_raise_command_error(name: str, fields: dict[str, Any]) -> None:
    line = msgspec.json.encode({**fields, "cmd": name})
    try:
        cmd = decode_command(line)
    except CommandError as exc:
        assert str(exc)
    else:
        assert command_name(cmd) == name
