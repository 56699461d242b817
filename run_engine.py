"""Start the copy-trading engine, or talk to a running one.

    python run_engine.py [--config FILE] [--demo]
    python run_engine.py admin COMMAND [ARGS] [--json] [--socket PATH] [--config FILE]

Exit codes: 0 clean stop; 1 failed at run time; 2 bad configuration (or, for ``admin``, engine not reachable).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from engine.config import ConfigError, EngineConfig, load_config


def _load(path: str | None) -> EngineConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _admin(argv: list[str]) -> int:
    from adapters.admin_cli import main as admin_main

    parser = argparse.ArgumentParser(prog="run_engine.py admin", add_help=False)
    parser.add_argument("--socket")
    parser.add_argument("--config")
    known, rest = parser.parse_known_args(argv)
    if known.socket:
        from pathlib import Path

        socket_path = Path(known.socket)
    else:
        socket_path = _load(known.config).admin_socket_path
    return admin_main(rest, socket_path=socket_path)


def _serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run_engine.py", description="Run the copy-trading engine.")
    parser.add_argument("--config", help="TOML config file (ENGINE_* environment variables override it)")
    parser.add_argument("--demo", action="store_true", help="seed demo whales/followers and drive a demo feed")
    args = parser.parse_args(argv)
    config = _load(args.config)

    from engine import logs
    from node.system import EngineSystem

    logs.configure(config.logging.level, open(config.logging.file, "ab") if config.logging.file else None)  # noqa: SIM115 - lives as long as the process
    stop_requested = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    system = EngineSystem(config, demo=args.demo)
    try:
        system.start()
    except Exception as exc:  # noqa: BLE001 - whatever failed, stop what did start and say why
        logs.get_logger("run_engine").error("engine.start_failed", error=f"{type(exc).__name__}: {exc}")
        system.stop()
        return 1
    # Wake up now and then so the admin `shutdown` command can end the process too.
    while not stop_requested.wait(0.2):
        if system.shutdown_requested:
            break
    system.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "admin":
        return _admin(argv[1:])
    return _serve(argv)


if __name__ == "__main__":
    raise SystemExit(main())
