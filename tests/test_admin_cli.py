"""The admin CLI, in-process against a live admin socket (fake handler), and once as a subprocess with no
engine running."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.admin_cli import main, render, table
from adapters.admin_socket import AdminServer
from adapters.ioloop import IoLoop
from engine.admin_commands import Command, CommandError, Pause, Peer, Status, User, Users, command_name
from engine.cli_args import AdminArgs, RunArgs, parse_command_line
from tests.kit import wait_for

GUARD_S = 30.0
ROOT = Path(__file__).resolve().parents[1]


class FakeHandler:
    def __init__(self) -> None:
        self.calls: list[Command] = []
        self.hang = asyncio.Event()

    async def handle(self, cmd: Command, peer: Peer) -> dict[str, Any]:
        self.calls.append(cmd)
        if isinstance(cmd, User) and cmd.user_id == 404:
            raise CommandError("no user 404")
        if isinstance(cmd, Users):
            return {
                "users": [
                    {"user_id": 1, "equity": Decimal("100.50"), "paused": False, "venue": "paper"},
                    {"user_id": 22, "equity": Decimal(7), "paused": True, "venue": None},
                ]
            }
        if isinstance(cmd, Status):
            return {"draining": False, "uptime_s": 12, "venues": {"paper": "up", "binance": "down"}}
        if command_name(cmd) == "reconcile":
            await self.hang.wait()  # never set: the engine "does not answer"
        return {}


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="adm-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
def server(sock_dir: Path, handler: FakeHandler) -> Iterator[AdminServer]:
    io_loop = IoLoop().start()
    server = AdminServer(io_loop, sock_dir / "admin" / "engine.sock", handler, max_connections=1)
    io_loop.run(server.start(), GUARD_S)
    yield server
    io_loop.run(server.stop(), GUARD_S)
    io_loop.stop()


def run(argv: list[str], path: Path, **kw: Any) -> tuple[int, str, str]:
    # Own streams, not capsys: the in-process server's logs also go to stdout.
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, socket_path=path, stdout=out, stderr=err, **kw)
    return code, out.getvalue(), err.getvalue()


def test_ok_prints_key_value_lines(server: AdminServer) -> None:
    code, out, err = run(["status"], server.path)
    assert code == 0
    assert err == ""
    assert out.splitlines() == ["draining: no", "uptime_s: 12", "venues:", "  paper: up", "  binance: down"]


def test_lists_print_as_aligned_table(server: AdminServer) -> None:
    code, out, _ = run(["users"], server.path)
    assert code == 0
    assert out.splitlines() == [
        "users:",
        "  USER_ID  EQUITY  PAUSED  VENUE",
        "        1  100.50  no      paper",
        "       22       7  yes     -",
    ]


def test_json_prints_the_raw_reply(server: AdminServer) -> None:
    code, out, _ = run(["users", "--json"], server.path)
    assert code == 0
    reply = orjson.loads(out)
    assert reply["ok"] is True
    assert reply["users"][0]["equity"] == "100.50"


def test_empty_ok_reply_prints_ok(server: AdminServer, handler: FakeHandler) -> None:
    code, out, _ = run(["pause", "whale", "3"], server.path)
    assert (code, out) == (0, "ok\n")
    assert handler.calls == [Pause(target="whale", target_id=3)]


def test_error_reply_exits_1(server: AdminServer) -> None:
    code, out, err = run(["user", "404"], server.path)
    assert (code, out) == (1, "")
    assert err == "error: no user 404\n"
    code, out, _ = run(["--json", "user", "404"], server.path)
    assert code == 1
    assert orjson.loads(out) == {"ok": False, "error": "no user 404"}


def test_bad_arguments_exit_1_without_sending(server: AdminServer, handler: FakeHandler) -> None:
    code, _, err = run(["user", "x"], server.path)
    assert code == 1
    assert "user ID must be an integer" in err
    code, _, err = run(["frobnicate"], server.path)
    assert code == 1
    assert "unknown command 'frobnicate'" in err
    assert handler.calls == []


def test_help(sock_dir: Path) -> None:
    code, out, _ = run(["help"], sock_dir / "none.sock")
    assert code == 0
    assert "positions [--user ID] [--open]" in out


def test_socket_option_overrides_the_default(server: AdminServer) -> None:
    code, _, _ = run(["status", "--socket", str(server.path)], Path("/nonexistent/engine.sock"))
    assert code == 0
    code, _, err = run([f"--socket={server.path}.missing", "status"], server.path)
    assert code == 2
    assert f"{server.path}.missing" in err


def test_refused_connection_shows_the_reason(server: AdminServer, handler: FakeHandler) -> None:
    # Takes the only slot with a command still running (an idle connection would be evicted to let one in).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as holder:
        holder.settimeout(GUARD_S)
        holder.connect(str(server.path))
        holder.sendall(b'{"cmd": "reconcile"}\n')
        wait_for(lambda: handler.calls, message="the holder's command never started")
        code, _, err = run(["status"], server.path)
    assert code == 1
    assert "too many admin connections" in err


def test_no_reply_exits_2(server: AdminServer) -> None:
    code, _, err = run(["reconcile"], server.path, timeout_s=0.2)
    assert code == 2
    assert "no reply" in err


def test_engine_not_running_subprocess(sock_dir: Path) -> None:
    path = sock_dir / "admin" / "engine.sock"
    proc = subprocess.run(
        [sys.executable, "-m", "adapters.admin_cli", "status", "--socket", str(path)],
        cwd=ROOT,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    assert str(path) in proc.stderr
    assert "not reachable" in proc.stderr
    assert proc.stdout == ""


def test_render_shapes() -> None:
    text = render({"n": 1, "empty": [], "tags": ["a", "b"], "nested": {"x": {"y": None}}, "blank": {}})
    assert text.splitlines() == [
        "n: 1",
        "empty: (none)",
        "tags: a, b",
        "nested:",
        "  x:",
        "    y: -",
        "blank: {}",
    ]
    assert table([{"a": "x", "b": {"k": 1}}, {"c": "-1.5"}]) == [
        "A  B           C",
        'x  {"k":1}     -',
        "-  -        -1.5",
    ]


# -- the one parser of run_engine.py (engine.cli_args) --------------------------------------------------------


def test_run_is_the_default_sub_command() -> None:
    assert parse_command_line([]) == RunArgs(config=None, demo=False)
    assert parse_command_line(["--config", "e.toml", "--demo"]) == RunArgs(config="e.toml", demo=True)
    assert parse_command_line(["run", "--demo"]) == RunArgs(config=None, demo=True)


def test_bad_run_arguments_exit_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_command_line(["--demo", "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: run_engine.py [run]" in err and "unrecognized arguments: --bogus" in err


def test_admin_options_go_before_or_after_the_command() -> None:
    expected = AdminArgs(request={"cmd": "user", "user_id": 5}, as_json=True, socket=Path("/s"), config="c.toml")
    assert parse_command_line(["admin", "--socket", "/s", "--json", "user", "5", "--config", "c.toml"]) == expected
    assert parse_command_line(["admin", "user", "--json", "5", "--socket=/s", "--config=c.toml"]) == expected
    with pytest.raises(CommandError, match="unexpected argument"):
        parse_command_line(["admin", "status", "--sock", "/s"])  # no abbreviations
