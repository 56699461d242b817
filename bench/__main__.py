"""``python -m bench [SCENARIO ...] [--quick] [--write | --no-write]``: run the scenarios, print the table and,
for a full run (every scenario, not ``--quick``), rewrite the results block of docs/benchmarks.md. A partial or
quick run writes only with ``--write``: the block is one run's table, not a mix of runs.

One embedded PostgreSQL (fsync on) serves the whole run; each scenario runs in a child process
(``python -m bench --child NAME``) that prints its rows as JSON on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters import database as db
from adapters.embedded_pg import EmbeddedPostgres
from bench import _report, configure_logs

SCENARIOS = {
    "fanout": ("bench.fanout", False),  # (module, needs PostgreSQL)
    "durable": ("bench.durable", True),
    "persistence": ("bench.persistence_mixed", True),
    "startstop": ("bench.startstop", True),
    "logging": ("bench.logging_decode", False),
    "sustained": ("bench.sustained", True),
    "price_tick": ("bench.bench_price_tick", True),
}
_CHILD_TIMEOUT_S = 1200


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help="default: all")
    parser.add_argument("--quick", action="store_true", help="smaller N and fewer repeats")
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write", action="store_true", help="update docs/benchmarks.md even for a partial run")
    write.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _child(name: str, *, quick: bool) -> None:
    module = importlib.import_module(SCENARIOS[name][0])
    rows = module.run(quick=quick)
    sys.stdout.flush()
    print("\n" + json.dumps(rows))
    sys.stdout.flush()
    os._exit(0)  # daemon threads (pooled workers, the I/O loop) must not hold the exit


def _run_child(name: str, *, quick: bool, env: dict[str, str]) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "bench", "--child", name, *(["--quick"] if quick else [])]
    started = time.monotonic()
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return [_report.row(name, "ERROR", [], unit="", target=f"timed out after {_CHILD_TIMEOUT_S} s", ok=False)]
    print(f"  {name}: {time.monotonic() - started:.0f} s", flush=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stderr[-4000:])
        return [
            _report.row(
                name,
                "ERROR",
                [],
                unit="",
                target=f"exit {out.returncode}",
                ok=False,
                note=(out.stderr.strip().splitlines() or ["?"])[-1],
            )
        ]
    rows: list[dict[str, Any]] = json.loads(lines[-1])
    return rows


def _pg_version(dsn: str) -> str:

    async def show() -> str:
        conn = await db.connect(dsn)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return asyncio.run(show())


def main(argv: list[str]) -> int:
    args = _parse(argv)
    if args.child:
        _child(args.child, quick=args.quick)
        return 0
    names = args.scenarios or list(SCENARIOS)

    configure_logs(on=False)
    command = "python -m bench" + "".join(f" {n}" for n in args.scenarios) + (" --quick" if args.quick else "")
    started = time.monotonic()
    env = dict(os.environ)
    server = None
    pg_version = None
    data_dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    try:
        if any(SCENARIOS[n][1] for n in names):
            server = EmbeddedPostgres(data_dir, durable=True)
            env["BENCH_PG_DSN"] = server.start()
            pg_version = _pg_version(env["BENCH_PG_DSN"])
        rows: list[dict[str, Any]] = []
        for name in names:
            print(f"running {name} ...", flush=True)
            rows.extend(_run_child(name, quick=args.quick, env=env))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    info = _report.machine(pg_version)
    print()
    print(f"{info['cores']} cores, Python {info['python']}, PostgreSQL {info['postgresql']}; {elapsed:.0f} s")
    print(_report.table(rows))
    print(_report.notes(rows))
    full_run = set(names) == set(SCENARIOS) and not args.quick
    if args.write or (full_run and not args.no_write):
        path = _report.write_docs(rows, info, command, elapsed)
        print(f"\nwritten to {path}")
    else:
        print("\ndocs/benchmarks.md not updated (a partial or quick run; --write to update it)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
