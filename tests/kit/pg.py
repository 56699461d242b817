"""PostgreSQL for tests: a fresh database with the schema, a fault-injection TCP proxy, small blocking query
helpers (the fixtures that start the server are in ``tests.kit.fixtures``).

``TcpProxy`` sits between a client and the server (``proxy.dsn(server_dsn)`` rewrites a DSN to go through
it) and can:

* ``cut()``: close every open connection now (a server crash or network drop, as the client sees it);
* ``cut_after(nbytes)``: close them once ``nbytes`` more bytes went client -> server (deterministically
  *mid*-statement, e.g. during a COPY), then refuse new connections until ``resume()``;
* ``refuse()`` / ``resume()``: reject new connections (accepted, then closed at once) or let them through;
* ``target``: change the upstream (a restarted server on another port).

Threads, not the I/O loop, so it works whatever the code under test does with its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from adapters.database import apply_schema, connect, create_database


async def fresh_database(server_dsn: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_dsn`` with ``schema.sql`` (all migrations) applied;
    returns its DSN."""
    dsn = await create_database(server_dsn, name)
    conn = await connect(dsn)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
    return dsn


@contextlib.contextmanager
def server_dir() -> Iterator[Path]:
    """An empty directory for a PostgreSQL data directory, removed afterwards. Under ``/tmp`` rather than pytest's
    ``tmp_path``: as root the server runs as another user that must traverse the path, and a concurrent pytest
    session resets ``/tmp/pytest-of-root`` to 0700."""
    path = Path(tempfile.mkdtemp(prefix="engine-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._refusing = False
        self._cut_budget: int | None = None
        self._closed = False
        self.connections_accepted = 0
        threading.Thread(target=self._accept_loop, name="pg-proxy", daemon=True).start()

    @classmethod
    def for_dsn(cls, dsn: str) -> TcpProxy:
        parts = urllib.parse.urlsplit(dsn)
        return cls((parts.hostname or "127.0.0.1", parts.port or 5432))

    def dsn(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by this proxy's."""
        parts = urllib.parse.urlsplit(dsn)
        user = f"{parts.username}@" if parts.username else ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def cut_after(self, nbytes: int) -> None:
        with self._lock:
            self._cut_budget = nbytes

    def refuse(self) -> None:
        self._refusing = True

    def resume(self) -> None:
        with self._lock:
            self._refusing = False
            self._cut_budget = None

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()

    # -- threads ---------------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()  # upstream down: the client sees a dropped connection
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns |= {client, upstream}
                self.connections_accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream_bound: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream_bound and self._spend(len(data)):
                    self.refuse()
                    self.cut()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with self._lock:
                    self._conns.discard(sock)
                sock.close()

    def _spend(self, nbytes: int) -> bool:
        with self._lock:
            if self._cut_budget is None:
                return False
            self._cut_budget -= nbytes
            return self._cut_budget <= 0


# -- blocking query helpers for assertions (own connection, own event loop) ---------------------------------


def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    rows = fetch(dsn, sql, *args)
    return rows[0][0] if rows else None


def execute(dsn: str, sql: str, *args: Any) -> None:
    async def run() -> None:
        conn = await connect(dsn)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    asyncio.run(run())


class HeldConnection:
    """One connection kept open across a test's steps (a transaction or a lock held while the engine runs).
    Blocking; its own event loop, run only while a statement runs."""

    def __init__(self, dsn: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection = self._loop.run_until_complete(connect(dsn))

    def execute(self, sql: str, *args: Any) -> str:
        status: str = self._loop.run_until_complete(self._conn.execute(sql, *args))
        return status

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(self._conn.close(timeout=5))
        self._loop.close()

    def __enter__(self) -> HeldConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
