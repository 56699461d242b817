"""Shared fixtures.

PostgreSQL (one server per test session, one fresh database per test module):

``pg_server`` (session)
    DSN of a private PostgreSQL started with ``adapters.embedded_pg.EmbeddedPostgres`` in a pytest tmp dir
    (fsync off: fast, nothing to keep), stopped when the session ends; a killed session cannot leave it
    running either (parent-death signal). Each pytest session has its own server on its own free port, so
    parallel sessions never collide. Set ``ENGINE_TEST_DATABASE_URL`` to use an existing server (15+)
    instead; the fixture then only creates databases on it.
``pg_dsn`` (module)
    DSN of a fresh database named after the test module with ``schema.sql`` (all migrations) applied.
    Tests of one module share it: use distinct ids/keys per test or clean up what you insert. For a
    private database inside a test: ``asyncio.run(adapters.database.create_database(pg_server, name))``.
``io_loop`` (function)
    A started ``adapters.ioloop.IoLoop``, stopped after the test.
``pg_data_dir`` (function)
    An empty directory for your own ``EmbeddedPostgres(pg_data_dir, durable=False)``, removed afterwards.
    Use it rather than ``tmp_path``: as root the server runs as another user that must traverse the path,
    and a concurrent pytest session resets ``/tmp/pytest-of-root`` to 0700 (so it lives under ``/tmp``).

Helpers for assertions and fault injection live in ``tests/pg.py`` (``fetch``, ``fetchval``, ``execute``,
``TcpProxy``)::

    def test_something(pg_dsn, io_loop):
        actor = PersistenceActor.start(io_loop=io_loop, dsn=pg_dsn)
        ...
        assert fetchval(pg_dsn, "SELECT count(*) FROM trades") == 3
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from adapters.database import apply_schema, connect, create_database
from adapters.embedded_pg import EmbeddedPostgres
from adapters.ioloop import IoLoop
from engine import logs


@contextlib.contextmanager
def _server_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="engine-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    external = os.environ.get("ENGINE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with _server_dir() as path:
        server = EmbeddedPostgres(path, durable=False)
        try:
            yield server.start()
        finally:
            server.stop()


@pytest.fixture
def pg_data_dir() -> Iterator[Path]:
    with _server_dir() as path:
        yield path


async def _fresh_database(server_dsn: str, name: str) -> str:
    dsn = await create_database(server_dsn, name)
    conn = await connect(dsn)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
    return dsn


@pytest.fixture(scope="module")
def pg_dsn(pg_server: str, request: pytest.FixtureRequest) -> str:
    module = re.sub(r"[^a-z0-9_]", "_", request.module.__name__.lower())[-40:]
    # The suffix keeps names unique when several sessions share one external server.
    return asyncio.run(_fresh_database(pg_server, f"t_{module}_{uuid.uuid4().hex[:8]}"))


@pytest.fixture
def io_loop() -> Iterator[IoLoop]:
    loop = IoLoop().start()
    try:
        yield loop
    finally:
        loop.stop()


@pytest.fixture(autouse=True)
def _fresh_log_config() -> Iterator[None]:
    """A test that configures the engine's (cached) JSON logging must not leave it behind: later tests use
    ``structlog.testing.capture_logs``, which only sees loggers built under its own configuration."""
    yield
    if logs.current_level() != "info" or structlog.get_config().get("cache_logger_on_first_use"):
        logs.reset_for_tests()
