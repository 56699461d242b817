"""The admin socket through a real Unix socket, served on a real ``IoLoop``, with a fake handler.

Clients are plain blocking sockets in the test thread. Socket timeouts are generous guards against hangs,
never assertions on timing. ``test_other_uid_is_refused`` needs root (it forks a child that becomes
``nobody``) and is skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from adapters.admin_socket import AdminServer, AdminSocketError
from adapters.ioloop import IoLoop
from engine.admin_commands import Close, Command, CommandError, Peer, Status, User, Users, command_name
from tests.kit import LogEntries, events, wait_for

GUARD_S = 30.0  # only to turn a hang into a failure


class FakeHandler:
    """Records what it is asked; a few commands fail on purpose."""

    def __init__(self) -> None:
        self.calls: list[tuple[Command, Peer]] = []

    async def handle(self, cmd: Command, peer: Peer) -> dict[str, Any]:
        self.calls.append((cmd, peer))
        if isinstance(cmd, User) and cmd.user_id == 404:
            raise CommandError("no user 404")
        if isinstance(cmd, Close) and cmd.position_id == "boom":
            raise RuntimeError("kaboom")
        if isinstance(cmd, Users):
            return {"users": [{"user_id": 1, "equity": Decimal("100.50")}, {"user_id": 2, "equity": Decimal(7)}]}
        if isinstance(cmd, Status):
            return {"ok": "ignored", "draining": False, "venues": {"paper": "up"}}
        return {"done": command_name(cmd)}


class Client:
    opened: ClassVar[list[Client]] = []  # closed after each test by ``close_clients``

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(GUARD_S)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        Client.opened.append(self)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        return self.file.readline()

    def read_reply(self) -> dict[str, Any]:
        line = self.read_line()
        assert line.endswith(b"\n"), line
        reply: dict[str, Any] = orjson.loads(line)
        return reply

    def request(self, obj: dict[str, Any] | bytes) -> dict[str, Any]:
        self.send((obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n")
        return self.read_reply()

    def at_eof(self) -> bool:
        return self.read_line() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while Client.opened:
        Client.opened.pop().close()


@pytest.fixture
def io_loop() -> Iterator[IoLoop]:
    loop = IoLoop().start()
    yield loop
    loop.stop()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short path under /tmp: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    base = Path(tempfile.mkdtemp(prefix="adm-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


ServerFactory = Callable[..., AdminServer]


@pytest.fixture
def make_server(io_loop: IoLoop, sock_dir: Path) -> Iterator[ServerFactory]:
    servers: list[AdminServer] = []

    def make(*, handler: Any = None, path: Path | None = None, start: bool = True, **options: Any) -> AdminServer:
        server = AdminServer(io_loop, path or sock_dir / "admin" / "engine.sock", handler or FakeHandler(), **options)
        if start:
            io_loop.run(server.start(), GUARD_S)
            servers.append(server)
        return server

    yield make
    for server in servers:
        io_loop.run(server.stop(), GUARD_S)


# -- replies ---------------------------------------------------------------------------------------------


def test_ok_reply_merges_handler_fields(make_server: ServerFactory) -> None:
    server = make_server()
    client = Client(server.path)
    assert client.request({"cmd": "status"}) == {"ok": True, "draining": False, "venues": {"paper": "up"}}
    client.send(b'{"cmd": "users"}\n')
    raw = client.read_line()
    assert b'"equity":"100.50"' in raw  # Decimal as a string, never a float
    assert orjson.loads(raw)["users"][1] == {"user_id": 2, "equity": "7"}


def test_handler_command_error_is_an_error_reply(make_server: ServerFactory) -> None:
    client = Client(make_server().path)
    assert client.request({"cmd": "user", "user_id": 404}) == {"ok": False, "error": "no user 404"}
    assert client.request({"cmd": "user", "user_id": 1}) == {"ok": True, "done": "user"}


def test_handler_crash_is_an_internal_error_and_the_server_lives(
    make_server: ServerFactory, captured_logs: LogEntries
) -> None:
    client = Client(make_server().path)
    reply = client.request({"cmd": "close", "position_id": "boom"})
    assert reply == {"ok": False, "error": "internal error: RuntimeError: kaboom"}
    assert client.request({"cmd": "stats"})["ok"] is True
    [entry] = events(captured_logs, "admin.handler_error")
    assert entry["cmd"] == "close"
    assert entry["log_level"] == "error"


def test_decode_error_reply_lists_commands(make_server: ServerFactory) -> None:
    client = Client(make_server().path)
    reply = client.request({"cmd": "frobnicate"})
    assert reply["ok"] is False
    assert "unknown command 'frobnicate'" in reply["error"]
    assert "close-all" in reply["error"]


def test_pipelined_lines_get_replies_in_order(make_server: ServerFactory) -> None:
    client = Client(make_server().path)
    client.send(b'{"cmd": "drain"}\n{"cmd": "nope"}\n\n{"cmd": "reload"}\n')
    replies = [client.read_reply() for _ in range(4)]
    assert replies[0] == {"ok": True, "done": "drain"}
    assert "unknown command" in replies[1]["error"]
    assert "empty line" in replies[2]["error"]
    assert replies[3] == {"ok": True, "done": "reload"}


def test_last_line_without_newline_is_answered(make_server: ServerFactory) -> None:
    client = Client(make_server().path)
    client.send(b'{"cmd": "stats"}')
    client.sock.shutdown(socket.SHUT_WR)
    assert client.read_reply() == {"ok": True, "done": "stats"}
    assert client.at_eof()


# -- mutating commands -----------------------------------------------------------------------------------


def test_mutating_command_is_logged_with_peer(make_server: ServerFactory, captured_logs: LogEntries) -> None:
    handler = FakeHandler()
    client = Client(make_server(handler=handler).path)
    assert client.request({"cmd": "pause", "target": "whale", "id": 3})["ok"] is True
    assert client.request({"cmd": "positions"})["ok"] is True
    [entry] = events(captured_logs, "admin.command")  # read-only commands are not audit-logged
    assert entry["log_level"] == "info"
    assert entry["cmd"] == "pause"
    assert entry["args"] == {"target": "whale", "id": 3, "exchange": None}
    assert entry["peer_uid"] == os.geteuid()
    assert entry["peer_pid"] == os.getpid()
    assert handler.calls[0][1] == Peer(uid=os.geteuid(), gid=os.getegid(), pid=os.getpid())


def test_mutating_refused_for_uid_not_allowed(make_server: ServerFactory, captured_logs: LogEntries) -> None:
    handler = FakeHandler()
    client = Client(make_server(handler=handler, allow_mutating_uids=[os.geteuid() + 12345]).path)
    reply = client.request({"cmd": "shutdown"})
    assert reply["ok"] is False
    assert "permission denied" in reply["error"]
    assert "'shutdown'" in reply["error"]
    assert client.request({"cmd": "dry-run", "payload": {"whale_id": 1}})["ok"] is True  # read-only still fine
    assert [command_name(cmd) for cmd, _ in handler.calls] == ["dry-run"]
    assert events(captured_logs, "admin.command_refused")[0]["peer_uid"] == os.geteuid()


def test_mutating_allowed_for_listed_uid(make_server: ServerFactory) -> None:
    client = Client(make_server(allow_mutating_uids=[os.geteuid()]).path)
    assert client.request({"cmd": "shutdown"}) == {"ok": True, "done": "shutdown"}


# -- file system ------------------------------------------------------------------------------------------


def test_directory_0700_and_socket_0600(make_server: ServerFactory) -> None:
    server = make_server()
    assert stat.S_IMODE(os.stat(server.path.parent).st_mode) == 0o700
    st = os.lstat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_existing_directory_is_tightened(make_server: ServerFactory, sock_dir: Path) -> None:
    directory = sock_dir / "open"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    make_server(path=directory / "engine.sock")
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_shared_directory_is_refused(make_server: ServerFactory, io_loop: IoLoop, sock_dir: Path) -> None:
    directory = sock_dir / "shared"
    directory.mkdir()
    os.chmod(directory, 0o1777)
    server = make_server(path=directory / "engine.sock", start=False)
    with pytest.raises(AdminSocketError, match="shared directory"):
        io_loop.run(server.start(), GUARD_S)


def test_stale_socket_is_replaced(make_server: ServerFactory, sock_dir: Path) -> None:
    path = sock_dir / "admin" / "engine.sock"
    path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening, closed: what a crashed engine leaves behind
    dead.close()
    server = make_server(path=path)
    assert Client(server.path).request({"cmd": "status"})["ok"] is True


def test_refuses_to_start_while_another_engine_answers(make_server: ServerFactory, io_loop: IoLoop) -> None:
    first = make_server()
    second = make_server(path=first.path, start=False)
    with pytest.raises(AdminSocketError, match="another engine"):
        io_loop.run(second.start(), GUARD_S)
    assert Client(first.path).request({"cmd": "status"})["ok"] is True


def test_refuses_to_replace_a_regular_file(make_server: ServerFactory, io_loop: IoLoop, sock_dir: Path) -> None:
    path = sock_dir / "admin" / "engine.sock"
    path.parent.mkdir(mode=0o700)
    path.write_text("not a socket")
    server = make_server(path=path, start=False)
    with pytest.raises(AdminSocketError, match="not a socket"):
        io_loop.run(server.start(), GUARD_S)
    assert path.read_text() == "not a socket"


def test_stop_closes_connections_and_removes_the_socket(make_server: ServerFactory, io_loop: IoLoop) -> None:
    server = make_server(start=False)
    io_loop.run(server.start(), GUARD_S)
    client = Client(server.path)
    assert client.request({"cmd": "status"})["ok"] is True
    io_loop.run(server.stop(), GUARD_S)
    assert client.at_eof()
    assert not server.path.exists()


def test_start_off_the_loop_thread_is_an_error(make_server: ServerFactory) -> None:
    server = make_server(start=False)
    with pytest.raises(RuntimeError, match="I/O loop"):
        asyncio.run(server.start())


# -- peers -------------------------------------------------------------------------------------------------


NOBODY = 65534


def _as_nobody(path: Path) -> bytes:
    """Fork a child that becomes ``nobody`` and sends ``status``; return what it saw (reply or error name)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only plain syscalls, then _exit
        result = b""
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(GUARD_S)
                sock.connect(str(path))
                try:
                    sock.sendall(b'{"cmd": "status"}\n')
                except (BrokenPipeError, ConnectionResetError):
                    pass  # refused and closed already: the refusal is still there to read
                while not result.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    result += chunk
        except OSError as exc:
            result = f"OSError:{exc.errno}".encode()
        finally:
            os.write(write_fd, result or b"EOF")
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        seen = pipe.read()
    os.waitpid(pid, 0)
    return seen


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to fork a child that becomes another uid")
def test_other_uid_is_refused(make_server: ServerFactory, captured_logs: LogEntries) -> None:
    handler = FakeHandler()
    server = make_server(handler=handler)

    # Layer 1: the 0700 directory keeps the other uid from even reaching the socket.
    assert _as_nobody(server.path) == f"OSError:{errno.EACCES}".encode()

    # Layer 2: with the file system opened up on purpose, SO_PEERCRED still refuses it.
    os.chmod(server.path.parent.parent, 0o711)
    os.chmod(server.path.parent, 0o711)
    os.chmod(server.path, 0o666)
    reply = orjson.loads(_as_nobody(server.path))
    assert reply["ok"] is False
    assert f"uid {NOBODY}" in reply["error"]
    assert handler.calls == []
    assert events(captured_logs, "admin.connection_refused")[0]["peer_uid"] == NOBODY
    assert Client(server.path).request({"cmd": "status"})["ok"] is True  # the engine's own uid still gets in


# -- abuse -------------------------------------------------------------------------------------------------


def test_fuzzed_lines_each_get_an_error_reply(make_server: ServerFactory) -> None:
    server = make_server()
    client = Client(server.path)
    rng = random.Random(20240611)
    for _ in range(300):
        line = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))).replace(b"\n", b" ")
        reply = client.request(line)
        assert reply["ok"] is False
        assert reply["error"]
    wrong_types = [
        b'{"cmd": null}',
        b'{"cmd": ["status"]}',
        b'{"cmd": "user", "user_id": [1]}',
        b'{"cmd": "user", "user_id": 1.5}',
        b'{"cmd": "user", "user_id": 1208925819614629174706176}',
        b'{"cmd": "positions", "user_id": {}, "open": 1}',
        b'{"cmd": "signal", "payload": "x"}',
        b'{"cmd": "price", "symbol": 5, "price": "1"}',
        b'{"cmd": "price", "symbol": "X", "price": "-1e999999999"}',
        b'{"cmd": "pause", "target": null}',
        b'{"cmd": "log-level", "level": 3}',
        b'{"cmd": "status"} trailing',
    ]
    for line in wrong_types:
        reply = client.request(line)
        assert reply["ok"] is False, line
        assert reply["error"]
    deep_lines = [
        b"[" * 60_000,
        b'{"cmd": "signal", "payload": {"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}",
        b'{"cmd": "signal", "payload": {"a": ' + b"{" * 30_000,
    ]
    for line in deep_lines:
        reply = client.request(line)
        assert reply["ok"] is False
        assert "JSON" in reply["error"]
    assert client.request({"cmd": "status"})["ok"] is True  # same connection, still served


def test_line_at_the_limit_is_read_and_over_it_closes(make_server: ServerFactory) -> None:
    server = make_server()
    client = Client(server.path)
    at_limit = b"[" * 65536
    assert "JSON object" in client.request(at_limit)["error"]  # read whole, answered, connection goes on
    over = b"[" * 100_000
    client.send(over + b"\n")
    reply = client.read_reply()
    assert reply["ok"] is False
    assert "line too long" in reply["error"]
    assert client.at_eof()
    assert Client(server.path).request({"cmd": "status"})["ok"] is True  # the server lives


def test_endless_line_is_cut_off(make_server: ServerFactory) -> None:
    server = make_server(max_line_bytes=1024)
    client = Client(server.path)
    try:
        client.send(b"x" * 200_000)  # never a newline
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may already have closed: that is the point
    assert "line too long" in client.read_reply()["error"]
    assert client.at_eof()


class GatedHandler(FakeHandler):
    """``reload`` waits until the test opens the gate: a command that is still running."""

    def __init__(self, io_loop: IoLoop) -> None:
        super().__init__()
        self._io_loop = io_loop
        self.gate = asyncio.Event()

    def open_gate(self) -> None:
        self._io_loop.loop.call_soon_threadsafe(self.gate.set)

    async def handle(self, cmd: Command, peer: Peer) -> dict[str, Any]:
        if command_name(cmd) == "reload":
            self.calls.append((cmd, peer))
            await self.gate.wait()
            return {"done": "reload"}
        return await super().handle(cmd, peer)


def test_connection_cap_refuses_only_while_every_connection_runs_a_command(
    make_server: ServerFactory, io_loop: IoLoop
) -> None:
    handler = GatedHandler(io_loop)
    server = make_server(handler=handler, max_connections=2)
    first, second = Client(server.path), Client(server.path)
    first.send(b'{"cmd": "reload"}\n')
    second.send(b'{"cmd": "reload"}\n')
    wait_for(lambda: len(handler.calls) == 2, message="both reloads never started")
    third = Client(server.path)
    reply = third.read_reply()
    assert reply["ok"] is False
    assert "too many admin connections (max 2)" in reply["error"]
    assert third.at_eof()
    handler.open_gate()
    assert first.read_reply() == {"ok": True, "done": "reload"}  # running commands are never cut
    assert second.read_reply() == {"ok": True, "done": "reload"}
    assert Client(server.path).request({"cmd": "status"})["ok"] is True  # a slot is taken from an idle one


def test_new_connection_evicts_the_longest_idle_one(make_server: ServerFactory, captured_logs: LogEntries) -> None:
    server = make_server(max_connections=2)
    first, second = Client(server.path), Client(server.path)
    assert first.request({"cmd": "status"})["ok"] is True
    assert second.request({"cmd": "status"})["ok"] is True
    assert second.request({"cmd": "stats"})["ok"] is True  # second was busy later: first is idle the longest
    third = Client(server.path)
    assert third.request({"cmd": "status"})["ok"] is True
    reply = first.read_reply()
    assert reply["ok"] is False
    assert "evicted" in reply["error"]
    assert "max 2 connections" in reply["error"]
    assert first.at_eof()
    assert second.request({"cmd": "stats"})["ok"] is True  # the others are untouched
    [entry] = events(captured_logs, "admin.evicted")
    assert entry["unfinished_line"] is False
    assert entry["for_conn_id"] == 3


def test_half_open_connections_do_not_lock_the_operator_out(
    make_server: ServerFactory, captured_logs: LogEntries
) -> None:
    """40 clients each send part of a line and hold it (the defaults: 16 connections, a 300 s idle timeout):
    a fresh client still gets in at once, and every holder is told why it was cut."""
    server = make_server()
    holders = [Client(server.path) for _ in range(40)]
    for holder in holders:
        holder.send(b'{"cmd": "sta')
    operator = Client(server.path)
    operator.sock.settimeout(10.0)  # "a few seconds": without eviction it was refused, then 300 s of waiting
    assert operator.request({"cmd": "status"}) == {"ok": True, "draining": False, "venues": {"paper": "up"}}
    for holder in holders:  # the rest are cut at the line deadline (5 s by default)
        reply = holder.read_reply()
        assert reply["ok"] is False
        assert "evicted" in reply["error"] or "line deadline" in reply["error"], reply
        assert holder.at_eof()
    assert operator.request({"cmd": "stats"})["ok"] is True  # the operator's own connection stays
    assert len(events(captured_logs, "admin.evicted")) >= 40 - 16 + 1
    assert events(captured_logs, "admin.line_deadline")


def test_unfinished_line_is_cut_at_the_deadline(make_server: ServerFactory, captured_logs: LogEntries) -> None:
    server = make_server(line_deadline_s=0.3)
    client = Client(server.path)
    client.send(b'{"cmd": "status"}\n{"cmd": "sta')  # one whole line, then the start of another, held
    assert client.read_reply()["ok"] is True
    reply = client.read_reply()
    assert reply["ok"] is False
    assert "line deadline" in reply["error"]
    assert "0.3 s" in reply["error"]
    assert client.at_eof()
    [entry] = events(captured_logs, "admin.line_deadline")
    assert entry["partial_bytes"] == len(b'{"cmd": "sta')
    assert Client(server.path).request({"cmd": "status"})["ok"] is True  # the server lives


def test_peer_that_stops_reading_replies_loses_its_slot(make_server: ServerFactory, captured_logs: LogEntries) -> None:
    """A peer pipelines commands and never reads a reply: once the socket's buffers are full the server waits on
    it, running a command, so it is never evicted; the reply deadline frees its slot (was: the 300 s idle timeout)."""
    server = make_server(max_connections=1, line_deadline_s=0.5)
    hog = Client(server.path)

    def flood() -> None:
        with contextlib.suppress(OSError):  # the server hangs up on it: that is the point
            hog.send(b'{"cmd": "status"}\n' * 200_000)

    threading.Thread(target=flood, daemon=True).start()
    # Alone it is never evicted (nobody asks for its slot); the reply deadline closes it (old code: 300 s).
    wait_for(lambda: events(captured_logs, "admin.reply_stalled"), timeout_s=20.0, message="the hog was never cut")

    def operator_served() -> bool:
        client = Client(server.path)
        client.sock.settimeout(5.0)
        try:
            return bool(client.request({"cmd": "status"})["ok"])
        except (OSError, AssertionError):
            return False
        finally:
            client.close()

    wait_for(operator_served, timeout_s=20.0, message="the hog kept the only slot")


def test_idle_connection_is_not_cut_by_the_line_deadline(make_server: ServerFactory) -> None:
    server = make_server(line_deadline_s=0.05, idle_timeout_s=0.5)
    client = Client(server.path)
    assert client.request({"cmd": "status"})["ok"] is True
    assert client.at_eof()  # closed by the idle timeout, with nothing owed: no error line first


def test_idle_connection_is_closed(make_server: ServerFactory, captured_logs: LogEntries) -> None:
    server = make_server(idle_timeout_s=0.2)
    client = Client(server.path)
    assert client.request({"cmd": "status"})["ok"] is True
    assert client.at_eof()  # no reply owed, nothing sent: the server hangs up
    assert events(captured_logs, "admin.idle_timeout")
    assert Client(server.path).request({"cmd": "status"})["ok"] is True


def test_replies_that_cannot_be_encoded_are_errors(make_server: ServerFactory) -> None:
    class BadHandler(FakeHandler):
        async def handle(self, cmd: Command, peer: Peer) -> dict[str, Any]:
            return {"n": 2**80}

    client = Client(make_server(handler=BadHandler()).path)
    reply = client.request({"cmd": "status"})
    assert reply["ok"] is False
    assert "could not be encoded" in reply["error"]
