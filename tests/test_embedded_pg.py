"""EmbeddedPostgres: start, stop, restart on an existing data dir, recovery from a crashed run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from adapters.embedded_pg import EmbeddedPostgres
from tests.kit import execute, fetchval


def test_start_stop_restart_keeps_data(pg_data_dir: Path) -> None:
    server = EmbeddedPostgres(pg_data_dir, durable=False)
    dsn = server.start()
    pid = server.pid
    assert pid is not None and server.start() == dsn  # idempotent
    execute(dsn, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (pg_data_dir / "postgres" / "postmaster.pid").exists()

    again = EmbeddedPostgres(pg_data_dir, durable=False)  # a new run on the same data dir
    dsn2 = again.start()
    try:
        assert fetchval(dsn2, "SELECT v FROM kept") == 42
    finally:
        again.stop()
    server.stop()  # stopping twice is harmless


def test_stale_pid_file_naming_a_live_unrelated_process(pg_data_dir: Path) -> None:
    server = EmbeddedPostgres(pg_data_dir, durable=False)
    server.start()
    server.stop()
    # As after a crash and a reboot: postmaster.pid names a pid that now belongs to someone else (us).
    pid_file = pg_data_dir / "postgres" / "postmaster.pid"
    pid_file.write_text(f"{os.getpid()}\n{pg_data_dir / 'postgres'}\n0\n5432\n\n127.0.0.1\n0 0\nready\n")
    dsn = server.start()
    try:
        assert fetchval(dsn, "SELECT 1") == 1
    finally:
        server.stop()


def test_leftover_server_from_crashed_run_is_replaced(pg_data_dir: Path) -> None:
    first = EmbeddedPostgres(pg_data_dir, durable=False)
    first.start()
    leftover_pid = first.pid
    assert leftover_pid is not None
    # A new process (here: a new launcher) finds that server still running on the cluster.
    second = EmbeddedPostgres(pg_data_dir, durable=False)
    dsn = second.start()
    try:
        assert fetchval(dsn, "SELECT 1") == 1
        assert second.pid != leftover_pid
        assert not psutil.pid_exists(leftover_pid) or psutil.Process(leftover_pid).status() == psutil.STATUS_ZOMBIE
    finally:
        second.stop()
        first.stop()


def test_killed_server_recovers(pg_data_dir: Path) -> None:
    server = EmbeddedPostgres(pg_data_dir, durable=False)
    dsn = server.start()
    execute(dsn, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # a crash: postmaster.pid stays behind, backends may linger
    psutil.wait_procs([psutil.Process(pid)], timeout=10)
    dsn = server.start()
    try:
        assert fetchval(dsn, "SELECT v FROM t") == 1
    finally:
        server.stop()
