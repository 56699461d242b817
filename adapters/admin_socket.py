"""The admin socket: a Unix socket speaking one JSON object per line (``engine/admin_commands.py``).

Runs on the engine's I/O loop (``adapters/ioloop.py``): ``io_loop.run(server.start())`` at start-up,
``io_loop.run(server.stop())`` at shutdown. Every coroutine here, and the handler's ``handle``, runs on the
loop thread: a handler must not block it (await actor futures via ``asyncio.wrap_future``, never ``.get()``).

Security, in layers:

* the socket's directory is made 0700 and the socket 0600, so only the engine's uid (and root) can reach it;
* on accept, ``SO_PEERCRED`` must show the engine's own uid or root, anyone else is refused;
* mutating commands (``engine.admin_commands.is_mutating``) can further be limited to ``allow_mutating_uids``.

Protocol: each request line (at most ``max_line_bytes``, newline excluded) gets exactly one reply line,
``{"ok": true, ...handler fields}`` or ``{"ok": false, "error": "..."}``. A line over the limit gets an error
reply and the connection is closed (its rest cannot be framed without buffering it); any other bad line gets
an error reply and the connection goes on. Connections idle for ``idle_timeout_s`` are closed.

Nobody can starve the operator out:

* a line has ``line_deadline_s`` from its first byte to its newline: a connection that starts a line and does not
  finish it in time is told so and closed (a half-sent line, or one dripped a byte at a time, holds no slot for
  long); a reply the peer does not take within the same deadline (it stopped reading) closes the connection;
* at most ``max_connections`` are open at once, and a new connection past it takes the slot of one that owes
  nothing: the one idle the longest (or, if none is idle, the one whose partial line started first) is told
  why and closed. Only when every connection is running a command is a new one refused (commands end).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import stat
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import orjson

from adapters.admin_lines import Conn, LineDeadline, LineTooLong, read_line
from adapters.ioloop import IoLoop
from engine import jsonenc
from engine.admin_commands import (
    Command,
    CommandError,
    Peer,
    command_args,
    command_name,
    decode_command,
    is_mutating,
)
from engine.logs import get_logger

__all__ = ["AdminHandler", "AdminServer", "AdminSocketError", "Peer", "encode_reply"]

_log = get_logger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_PROBE_TIMEOUT_S = 2.0
_LINGER_S = 1.0  # how long a refused peer may go on sending before we close anyway
_LINGER_MAX_BYTES = 4 * 1024 * 1024
_CLOSE_TIMEOUT_S = 5.0
_MAX_ERROR_CHARS = 2000


class AdminHandler(Protocol):
    """Executes one decoded command for one peer; runs on the I/O loop thread.

    Returns the reply fields (merged after ``"ok": true``). Raise ``CommandError`` for a refusal the operator
    should read (``"ok": false`` with its message); any other exception becomes ``"internal error: ..."``.
    """

    async def handle(self, cmd: Command, peer: Peer) -> dict[str, Any]: ...


class AdminSocketError(RuntimeError):
    """The admin socket cannot start: another engine answers on the path, or the path is unsafe."""


class AdminServer:
    """The admin socket server. ``start()`` and ``stop()`` are coroutines to run on ``io_loop_or_loop``."""

    def __init__(
        self,
        io_loop_or_loop: IoLoop | asyncio.AbstractEventLoop,
        path: Path,
        handler: AdminHandler,
        *,
        max_connections: int = 16,
        idle_timeout_s: float = 300,
        line_deadline_s: float = 5.0,
        max_line_bytes: int = 65536,
        allow_mutating_uids: Iterable[int] | None = None,
    ) -> None:
        self._loop = io_loop_or_loop.loop if isinstance(io_loop_or_loop, IoLoop) else io_loop_or_loop
        self._path = Path(path)
        self._handler = handler
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._line_deadline_s = line_deadline_s
        self._max_line_bytes = max_line_bytes
        self._allow_mutating_uids = None if allow_mutating_uids is None else frozenset(allow_mutating_uids)
        self._allowed_uids = frozenset({0, os.geteuid()})
        self._server: asyncio.AbstractServer | None = None
        self._socket_inode: int | None = None
        self._connections: dict[asyncio.Task[Any], Conn] = {}
        self._evicting: set[asyncio.Task[Any]] = set()  # evicted, telling the peer why before they close
        self._conn_ids = itertools.count(1)

    @property
    def path(self) -> Path:
        return self._path

    async def start(self) -> None:
        """Prepare the directory, replace a stale socket file, listen. Raises ``AdminSocketError``."""
        self._check_loop()
        if self._server is not None:
            raise RuntimeError("AdminServer already started")
        if len(os.fsencode(self._path)) > _SUN_PATH_MAX:
            raise AdminSocketError(f"admin socket path is too long for a Unix socket: {self._path}")
        _prepare_directory(self._path.parent)
        await self._remove_stale_socket()
        self._server = await asyncio.start_unix_server(
            self._on_connect, path=str(self._path), limit=self._max_line_bytes
        )
        # The 0700 directory already keeps others out between bind and chmod.
        os.chmod(self._path, 0o600)
        self._socket_inode = os.lstat(self._path).st_ino
        _log.info(
            "admin.listening",
            path=str(self._path),
            max_connections=self._max_connections,
            idle_timeout_s=self._idle_timeout_s,
            line_deadline_s=self._line_deadline_s,
            max_line_bytes=self._max_line_bytes,
            allow_mutating_uids=None if self._allow_mutating_uids is None else sorted(self._allow_mutating_uids),
        )

    async def stop(self) -> None:
        """Stop listening, close every connection (a handler still running is cancelled, except the one
        calling ``stop``) and remove the socket file if it is still ours."""
        self._check_loop()
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        others = [t for t in [*self._connections, *self._evicting] if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(self._path).st_ino == self._socket_inode:
                self._path.unlink()
        _log.info("admin.stopped", path=str(self._path))

    def _check_loop(self) -> None:
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("AdminServer runs on its I/O loop: use io_loop.run(server.start())")

    async def _remove_stale_socket(self) -> None:
        try:
            mode = os.lstat(self._path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise AdminSocketError(f"{self._path} exists and is not a socket; refusing to replace it")
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                _, writer = await asyncio.open_unix_connection(str(self._path))
        except (ConnectionRefusedError, FileNotFoundError):
            self._path.unlink(missing_ok=True)
            _log.info("admin.stale_socket_removed", path=str(self._path))
            return
        except (TimeoutError, OSError) as exc:
            # Something holds the path but does not accept: safer to refuse than to steal it.
            raise AdminSocketError(f"cannot tell whether {self._path} is in use: {exc!r}") from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise AdminSocketError(f"another engine is listening on {self._path}")

    # -- connections (loop thread) -----------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_id = next(self._conn_ids)
        task = asyncio.current_task()
        conn: Conn | None = None
        try:
            peer = _peer_of(writer)
            refusal = (
                "permission denied: cannot read peer credentials" if peer is None else self._refusal(peer, conn_id)
            )
            if refusal is not None or peer is None or task is None:
                _log.warning(
                    "admin.connection_refused",
                    conn_id=conn_id,
                    reason=refusal,
                    peer_uid=peer.uid if peer else None,
                    peer_pid=peer.pid if peer else None,
                )
                await self._send(writer, encode_reply({"ok": False, "error": refusal}))
                return
            conn = self._connections[task] = Conn(conn_id=conn_id, task=task, idle_since=self._loop.time())
            _log.debug("admin.connected", conn_id=conn_id, peer_uid=peer.uid, peer_pid=peer.pid)
            await self._serve(reader, writer, peer, conn)
        except (ConnectionError, TimeoutError):
            pass  # the peer went away or stopped reading: nothing left to tell it
        except asyncio.CancelledError:
            # stop() cancels connections; end quietly (asyncio 3.11 logs a cancelled connection task as an
            # "Exception in callback"). An evicted connection is told why first.
            if conn is not None and conn.evicted_for is not None and task is not None:
                task.uncancel()
                await self._tell_evicted(reader, writer, conn)
        finally:
            if task is not None:
                self._connections.pop(task, None)
                self._evicting.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await writer.wait_closed()

    def _refusal(self, peer: Peer, conn_id: int) -> str | None:
        if peer.uid not in self._allowed_uids:
            return f"permission denied: uid {peer.uid} may not use the admin socket"
        if len(self._connections) >= self._max_connections and not self._evict_one(conn_id):
            return (
                f"too many admin connections (max {self._max_connections}), each running a command; "
                "try again in a moment"
            )
        return None

    def _evict_one(self, for_conn_id: int) -> bool:
        """Make room for a new connection: close the one idle the longest, else the one whose unfinished line
        started first. A connection running a command is never evicted (it owes a reply). False: none found."""
        waiting = [c for c in self._connections.values() if c.reading]
        if not waiting:
            return False
        # Idle the longest first; else the unfinished line started first. False < True: idle ones sort first.
        victim = min(waiting, key=lambda c: (c.line_started is not None, c.line_started or c.idle_since))
        victim.evicted_for = for_conn_id
        del self._connections[victim.task]  # its slot is the new connection's from now on
        self._evicting.add(victim.task)
        victim.task.cancel()
        _log.warning(
            "admin.evicted",
            conn_id=victim.conn_id,
            for_conn_id=for_conn_id,
            unfinished_line=victim.line_started is not None,
            idle_s=round(self._loop.time() - victim.idle_since, 3),
            max_connections=self._max_connections,
        )
        return True

    async def _tell_evicted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Conn) -> None:
        waiting = "with an unfinished line" if conn.line_started is not None else "idle"
        error = (
            f"evicted: the admin socket is full (max {self._max_connections} connections) and this connection "
            f"was {waiting}, so it was closed to let a new one in; no command of it was running. Reconnect to go on."
        )
        with contextlib.suppress(Exception, asyncio.CancelledError):  # stop() may cancel it again: end quietly
            writer.write(encode_reply({"ok": False, "error": error}))
            await _lingering_close(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer, conn: Conn) -> None:
        buffer = bytearray()  # bytes read past the last line: the start of the next one
        while True:
            try:
                got = await read_line(
                    reader,
                    buffer,
                    conn,
                    idle_timeout_s=self._idle_timeout_s,
                    line_deadline_s=self._line_deadline_s,
                    max_line_bytes=self._max_line_bytes,
                )
            except LineDeadline:
                _log.warning(
                    "admin.line_deadline",
                    conn_id=conn.conn_id,
                    line_deadline_s=self._line_deadline_s,
                    partial_bytes=len(buffer),
                )
                error = (
                    f"line deadline: a line must end with a newline within {self._line_deadline_s:g} s of its "
                    "first byte; closing the connection"
                )
                await self._send(writer, encode_reply({"ok": False, "error": error}))
                await _lingering_close(reader, writer)
                return
            except LineTooLong:
                # The rest of this line is still coming: we cannot find the next line without reading it.
                _log.warning("admin.line_too_long", conn_id=conn.conn_id, max_line_bytes=self._max_line_bytes)
                error = f"line too long: at most {self._max_line_bytes} bytes per line; closing the connection"
                await self._send(writer, encode_reply({"ok": False, "error": error}))
                await _lingering_close(reader, writer)
                return
            if got is None:
                return
            line, last = got
            await self._send(writer, await self._reply(line, peer, conn.conn_id), conn.conn_id)
            if last:
                return

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, conn_id: int | None = None) -> None:
        """Write and wait until the peer takes it, for at most the line deadline: a peer that stops reading its
        replies (its buffers full) holds no slot for long either; it is closed (``TimeoutError``)."""
        writer.write(data)
        try:
            async with asyncio.timeout(self._line_deadline_s):
                await writer.drain()
        except TimeoutError:
            _log.warning("admin.reply_stalled", conn_id=conn_id, line_deadline_s=self._line_deadline_s)
            raise

    async def _reply(self, line: bytes, peer: Peer, conn_id: int) -> bytes:
        if not line.strip():
            return encode_reply(
                {"ok": False, "error": 'empty line: send one JSON object per line, e.g. {"cmd": "status"}'}
            )
        try:
            cmd = decode_command(line)
        except CommandError as exc:
            _log.info("admin.invalid_command", conn_id=conn_id, peer_uid=peer.uid, error=str(exc)[:200])
            return encode_reply({"ok": False, "error": str(exc)})
        name = command_name(cmd)
        if is_mutating(cmd):
            if self._allow_mutating_uids is not None and peer.uid not in self._allow_mutating_uids:
                _log.warning("admin.command_refused", cmd=name, conn_id=conn_id, peer_uid=peer.uid, peer_pid=peer.pid)
                error = f"permission denied: {name!r} changes engine state and uid {peer.uid} may not run it"
                return encode_reply({"ok": False, "error": error})
            _log.info(
                "admin.command",
                cmd=name,
                args=command_args(cmd),
                conn_id=conn_id,
                peer_uid=peer.uid,
                peer_pid=peer.pid,
            )
        else:
            _log.debug("admin.query", cmd=name, conn_id=conn_id, peer_uid=peer.uid, peer_pid=peer.pid)
        try:
            result = await self._handler.handle(cmd, peer)
            reply = {"ok": True, **{k: v for k, v in result.items() if k != "ok"}}
        except CommandError as exc:
            return encode_reply({"ok": False, "error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a boundary: whatever failed is reported, never raised through
            _log.exception("admin.handler_error", cmd=name, conn_id=conn_id, peer_uid=peer.uid)
            return encode_reply({"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"})
        return encode_reply(reply, cmd=name)


def encode_reply(reply: dict[str, Any], *, cmd: str | None = None) -> bytes:
    """One reply line, under ``engine.jsonenc``'s policy: Decimals as plain strings (never floats), Structs as
    their fields, anything else ``str``."""
    try:
        return jsonenc.dumps(reply, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE)
    except (orjson.JSONEncodeError, TypeError, ValueError) as exc:
        _log.error("admin.reply_encode_error", cmd=cmd, error=str(exc))
        error = f"internal error: the reply could not be encoded: {exc}"[:_MAX_ERROR_CHARS]
        return orjson.dumps({"ok": False, "error": error}, option=orjson.OPT_APPEND_NEWLINE)


def _peer_of(writer: asyncio.StreamWriter) -> Peer | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(uid=uid, gid=gid, pid=pid)


def _prepare_directory(directory: Path) -> None:
    """Create the socket's directory 0700, or tighten an existing one we own. Refuse a directory that is not
    ours or is shared (sticky bit, like /tmp): chmod'ing it would break others, and leaving it open is unsafe.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid != os.geteuid():
        raise AdminSocketError(f"{directory} belongs to uid {st.st_uid}, not to the engine (uid {os.geteuid()})")
    if st.st_mode & stat.S_ISVTX:
        raise AdminSocketError(f"{directory} is a shared directory; give the admin socket a directory of its own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)
        _log.info("admin.socket_dir_chmod", path=str(directory), old_mode=oct(stat.S_IMODE(st.st_mode)))


async def _lingering_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read and drop what the peer is still sending before the socket is closed.

    Closing a socket whose receive queue still holds bytes makes the kernel reset the connection, and the
    peer's read of our error reply then fails with ECONNRESET instead of returning it: the reply would be
    lost exactly when it explains why we hang up. Bounded in bytes and time so a flood cannot hold us."""
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(_LINGER_S):
            dropped = 0
            while dropped < _LINGER_MAX_BYTES:
                chunk = await reader.read(65_536)
                if not chunk:
                    return
                dropped += len(chunk)
