"""Start the copy-trading engine, or talk to a running one.

    python run_engine.py [run] [--config FILE] [--demo]
    python run_engine.py admin COMMAND [ARGS] [--json] [--socket PATH] [--config FILE]

One argparse parser reads both (``engine/cli_args.py``). Exit codes: 0 clean stop; 1 failed at run time; 2 bad
arguments or configuration. For ``admin``: 0 ok, 1 refused (bad arguments included), 2 engine not reachable
(``adapters/admin_cli.py``).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from adapters.admin_cli import run_command
from engine import logs
from engine.admin_commands import CommandError
from engine.cli_args import AdminArgs, RunArgs, parse_command_line
from engine.config import ConfigError, EngineConfig, load_config


def _load(path: str | None) -> EngineConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _admin(args: AdminArgs) -> int:
    socket_path = args.socket or _load(args.config).admin_socket_path
    return run_command(args, socket_path=socket_path)


def _serve(args: RunArgs) -> int:
    config = _load(args.config)
    # The whole engine (ccxt, asyncpg, pykka: ~0.8 s) is imported only to run it: ``admin`` starts in ~0.1 s.
    from node.system import EngineSystem  # noqa: PLC0415 - optional at run time: the admin sub-command never needs it

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
    try:
        args = parse_command_line(sys.argv[1:] if argv is None else argv)
    except CommandError as exc:  # a bad admin command line: refused before anything is sent
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if isinstance(args, AdminArgs):
        return _admin(args)
    return _serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
