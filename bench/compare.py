"""``python -m bench.compare BASE_TREE [SCENARIO ...] [--rounds N] [--quick]``: this tree against another checkout
of the project (e.g. the commit before a refactor), in one run, as ratios.

Both trees' scenarios run as children (``python -m bench --child NAME``, each tree with its own ``.venv``) against
one embedded PostgreSQL, interleaved base/this/base/this… so drift in the machine's load hits both alike. Each row
of a scenario is matched by its name; the ratio is this tree's median over the base's (for times: > 1 is slower;
for rates such as rows/s the unit says so and the ratio reads the other way).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from adapters.embedded_pg import EmbeddedPostgres
from bench import configure_logs
from bench.__main__ import SCENARIOS

_CHILD_TIMEOUT_S = 1200
_HIGHER_IS_BETTER = ("/s",)  # units of a rate: a lower ratio is the slower one


def _child(tree: Path, name: str, *, quick: bool, env: dict[str, str]) -> dict[str, float]:
    python = tree / ".venv" / "bin" / "python"
    cmd = [str(python), "-m", "bench", "--child", name, *(["--quick"] if quick else [])]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S, env=env, cwd=tree)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{tree}: {name} exited {out.returncode}: {out.stderr[-2000:]}")
    medians: dict[str, float] = {}
    for row in json.loads(lines[-1]):
        samples = row["samples"] or ([row["stats"]["p50"]] if row.get("stats") and "p50" in row["stats"] else [])
        if samples:
            medians[f"{row['name']} [{row['unit']}]"] = statistics.median(samples)
    return medians


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("base", type=Path, help="the other checkout (with its own .venv)")
    parser.add_argument("scenarios", nargs="*", help="default: all")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tree per scenario (interleaved)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parent.parent
    names = args.scenarios or list(SCENARIOS)
    configure_logs(on=False)
    env = dict(os.environ)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-compare-pg-"))
    server = EmbeddedPostgres(data_dir, durable=True)
    env["BENCH_PG_DSN"] = server.start()
    results: list[tuple[str, str, float, float]] = []
    try:
        for name in names:
            runs: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
            for _ in range(args.rounds):
                runs["base"].append(_child(args.base.resolve(), name, quick=args.quick, env=env))
                runs["this"].append(_child(here, name, quick=args.quick, env=env))
            for key in runs["this"][0]:
                base_runs = [r[key] for r in runs["base"] if key in r]
                this_runs = [r[key] for r in runs["this"] if key in r]
                if base_runs and this_runs:
                    results.append((name, key, statistics.median(base_runs), statistics.median(this_runs)))
            print(f"  {name}: done", flush=True)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"\n{'scenario':<12} {'measurement':<58} {'base':>12} {'this':>12} {'this/base':>9}  slower by")
    for name, key, base, this in results:
        ratio = this / base if base else float("nan")
        slower = (1 / ratio if key.endswith(tuple(f"{u}]" for u in _HIGHER_IS_BETTER)) else ratio) - 1
        print(f"{name:<12} {key[:58]:<58} {base:>12.4g} {this:>12.4g} {ratio:>9.3f}  {slower:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
