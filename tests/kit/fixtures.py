"""The kit's pytest fixtures; ``tests/conftest.py`` registers them (import them the same way elsewhere).

PostgreSQL (one server per test session, one fresh database per test module):

``pg_server`` (session)
    DSN of a private PostgreSQL started with ``adapters.embedded_pg.EmbeddedPostgres`` (fsync off: fast,
    nothing to keep), stopped when the session ends; a killed session cannot leave it running either
    (parent-death signal). Each pytest session has its own server on its own free port, so parallel sessions
    never collide. Set ``ENGINE_TEST_DATABASE_URL`` to use an existing server (15+) instead; the fixture then
    only creates databases on it.
``pg_dsn`` (module)
    DSN of a fresh database named after the test module with ``schema.sql`` (all migrations) applied.
    Tests of one module share it: use distinct ids/keys per test or clean up what you insert. For a
    private database inside a test: ``asyncio.run(tests.kit.fresh_database(pg_server, name))``.
``pg_data_dir`` (function)
    An empty directory for your own ``EmbeddedPostgres(pg_data_dir, durable=False)``, removed afterwards.
``io_loop`` (function)
    A started ``adapters.ioloop.IoLoop``, stopped after the test.
``captured_logs`` (function)
    The log entries made during the test (``tests.kit.capture_logs``).
``emulator`` (function)
    A started ``tests.kit.Emulator`` (every venue, on its own loop thread), stopped after the test.
``fresh_log_config`` (autouse)
    Undoes a test's ``engine.logs.configure()``.

Helpers for assertions and fault injection: ``tests.kit`` (``fetch``, ``fetchval``, ``execute``, ``TcpProxy``)::

    def test_something(pg_dsn, io_loop):
        config, database = PersistenceConfig(), DatabaseConfig()
        actor = PersistenceActor.start(
            io_loop=io_loop, dsn=pg_dsn, config=config, database=database, clock=SYSTEM_CLOCK
        )
        ...
        assert fetchval(pg_dsn, "SELECT count(*) FROM trades") == 3
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.embedded_pg import EmbeddedPostgres
from adapters.ioloop import IoLoop
from tests.kit.emulator import Emulator
from tests.kit.logs import LogEntries, capture_logs, reset_log_config
from tests.kit.pg import fresh_database, server_dir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    external = os.environ.get("ENGINE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with server_dir() as path:
        server = EmbeddedPostgres(path, durable=False)
        try:
            yield server.start()
        finally:
            server.stop()


@pytest.fixture
def pg_data_dir() -> Iterator[Path]:
    with server_dir() as path:
        yield path


@pytest.fixture(scope="module")
def pg_dsn(pg_server: str, request: pytest.FixtureRequest) -> str:
    module = re.sub(r"[^a-z0-9_]", "_", request.module.__name__.lower())[-40:]
    # The suffix keeps names unique when several sessions share one external server.
    return asyncio.run(fresh_database(pg_server, f"t_{module}_{uuid.uuid4().hex[:8]}"))


@pytest.fixture
def io_loop() -> Iterator[IoLoop]:
    loop = IoLoop().start()
    try:
        yield loop
    finally:
        loop.stop()


@pytest.fixture
def captured_logs() -> Iterator[LogEntries]:
    with capture_logs() as entries:
        yield entries


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(autouse=True)
def fresh_log_config() -> Iterator[None]:
    """A test that configures the engine's (cached) JSON logging must not leave it behind: later tests capture
    logs, which only sees loggers built under its own configuration."""
    yield
    reset_log_config()
