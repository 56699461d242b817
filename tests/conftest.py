"""Fixture registrations: every fixture lives in the test kit (``tests/kit/fixtures.py`` documents them)."""

from tests.kit.fixtures import captured_logs, emulator, fresh_log_config, io_loop, pg_data_dir, pg_dsn, pg_server

__all__ = ["captured_logs", "emulator", "fresh_log_config", "io_loop", "pg_data_dir", "pg_dsn", "pg_server"]
