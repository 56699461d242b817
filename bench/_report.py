"""Results of a bench run: statistics, the table, the machine, and the docs/benchmarks.md writer.

A scenario returns a list of ``Row`` dicts (JSON, because every scenario runs in its own process)::

    {"scenario": "1 fan-out", "name": "engine N=10,000", "unit": "s", "samples": [...],
     "ratio": 2.1, "ratio_label": "engine / plain loop", "target": "ratio ≤ 3", "verdict": "PASS",
     "note": "..."}

``samples`` are the repeated measurements (seconds, rows/s, KB, ...); the table shows their median, p99
(nearest rank: with a handful of repeats it is the worst one) and min–max.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DOCS_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
_RESULTS_START = "<!-- bench:results:start -->"
_RESULTS_END = "<!-- bench:results:end -->"


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (the same definition as ``engine.metrics.percentile``)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def row(
    scenario: str,
    name: str,
    samples: list[float],
    *,
    unit: str,
    ratio: float | None = None,
    ratio_label: str = "",
    target: str = "",
    ok: bool | None = None,
    note: str = "",
    stats: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One line of the table. ``ok``: None when the line has no target (a baseline or a detail).
    ``stats``: the summary when ``samples`` would be too many to carry (e.g. every order's latency)."""
    return {
        "stats": stats,
        "scenario": scenario,
        "name": name,
        "unit": unit,
        "samples": [float(v) for v in samples],
        "ratio": ratio,
        "ratio_label": ratio_label,
        "target": target,
        "verdict": "" if ok is None else ("PASS" if ok else "MISS"),
        "note": note,
    }


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit in ("rows/s", "msg/s"):
        return f"{value:,.0f} {unit}"
    if unit == "µs":
        return f"{value:.2f} µs"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.1f} {unit}".rstrip()


def _fmt_ratio(r: dict[str, Any]) -> str:
    if r.get("ratio") is None:
        return ""
    return f"{r['ratio']:.2f}x ({r['ratio_label']})" if r.get("ratio_label") else f"{r['ratio']:.2f}x"


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (also what the terminal shows)."""
    head = "| scenario | measurement | median | p99 | min–max | runs | ratio, same run | target | verdict |"
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for r in rows:
        if not r["samples"] and not r.get("stats"):
            lines.append(f"| {r['scenario']} | {r['name']} | | | | 0 | | {r['target']} | {r['verdict']} |")
            continue
        s, unit = r.get("stats") or summary(r["samples"]), r["unit"]
        lines.append(
            f"| {r['scenario']} | {r['name']} | {_fmt(s['median'], unit)} | {_fmt(s['p99'], unit)} "
            f"| {_fmt(s['min'], unit)} – {_fmt(s['max'], unit)} | {int(s['n'])} | {_fmt_ratio(r)} "
            f"| {r['target']} | {r['verdict']} |"
        )
    return "\n".join(lines)


def notes(rows: list[dict[str, Any]]) -> str:
    lines = [f"* **{r['scenario']} / {r['name']}**: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines)


def machine(pg_version: str | None) -> dict[str, str]:
    return {
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "postgresql": pg_version or "not started",
        "platform": platform.platform(),
        "cpu": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render_results(rows: list[dict[str, Any]], info: dict[str, str], command: str, elapsed_s: float) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        _RESULTS_START,
        f"Measured {when} with `{command}` (whole run {elapsed_s:.0f} s).",
        "",
        f"Machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
        f"PostgreSQL {info['postgresql']} (embedded, fsync on), {info['platform']}.",
        "",
        table(rows),
        "",
        notes(rows),
        _RESULTS_END,
    ]
    return "\n".join(parts)


def write_docs(rows: list[dict[str, Any]], info: dict[str, str], command: str, elapsed_s: float) -> Path:
    """Replace the results block of docs/benchmarks.md (the prose around it is kept)."""
    block = render_results(rows, info, command, elapsed_s)
    text = DOCS_PATH.read_text(encoding="utf-8") if DOCS_PATH.exists() else ""
    if _RESULTS_START in text and _RESULTS_END in text:
        head, rest = text.split(_RESULTS_START, 1)
        tail = rest.split(_RESULTS_END, 1)[1]
        text = head + block + tail
    else:
        text = (text or "# Benchmarks\n") + "\n## Latest results\n\n" + block + "\n"
    DOCS_PATH.write_text(text, encoding="utf-8")
    return DOCS_PATH
