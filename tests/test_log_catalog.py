"""docs/log-events.md lists every event name the engine logs.

The source (every ``.py`` under engine/, actors/, adapters/, and run_engine.py) is parsed; every call of a
structlog logger (``log.info("order.submitted", ...)``, ``_log.warning(...)``, ``get_logger(...).error(...)``)
contributes its event name. A name given as an expression rather than a literal is a *dynamic* site: each one
must be listed in ``DYNAMIC_SITES`` with the names it can produce, so a new one fails here until it is
documented. Stdlib ``logging`` loggers (``logging.getLogger``) are not events: their lines arrive as
``lib.log``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "docs" / "log-events.md"
SOURCES = ("engine", "actors", "adapters", "node", "run_engine.py")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
LOGGER_NAME = re.compile(r"^_?(\w+_)?log(ger)?$")
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


def _mapping_values(module: str, attribute: str) -> Callable[[], set[str]]:
    def names() -> set[str]:
        mod = __import__(module, fromlist=[attribute])
        return set(getattr(mod, attribute).values())

    return names


# (file, source of the first argument) -> the event names that site can log.
DYNAMIC_SITES: dict[tuple[str, str], Callable[[], set[str]]] = {
    # SignalRouterActor._finish_without_fanout: FAILED (unknown whale) or EXPIRED.
    ("actors/router.py", "'signal.' + status.value"): lambda: {"signal.failed", "signal.expired"},
    # SignalIntake: a claimed row that fails validation, rejected_status() -> FAILED or EXPIRED.
    ("adapters/signal_intake.py", "'signal.' + status.value"): lambda: {"signal.failed", "signal.expired"},
    # The engine's domain-event log subscriber (engine.events.log_event): event_type -> event name.
    ("engine/events.py", "name"): _mapping_values("engine.events", "_LOG_NAMES"),
}


@dataclass(frozen=True)
class Site:
    path: str
    line: int
    level: str
    name: str | None  # None: dynamic
    expr: str


def source_files() -> Iterator[Path]:
    for entry in SOURCES:
        path = ROOT / entry
        if path.is_file():
            yield path
        else:
            yield from sorted(p for p in path.rglob("*.py") if ".venv" not in p.parts)


def _stdlib_loggers(tree: ast.Module) -> set[str]:
    """Names bound to ``logging.getLogger(...)`` in this module."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr == "getLogger":
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _receiver_is_logger(receiver: ast.expr, stdlib: set[str]) -> bool:
    if isinstance(receiver, ast.Call):  # get_logger("x").error(...)
        func = receiver.func
        return (isinstance(func, ast.Name) and func.id == "get_logger") or (
            isinstance(func, ast.Attribute) and func.attr == "get_logger"
        )
    name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", "")
    return bool(LOGGER_NAME.match(name)) and name not in stdlib


def _event_args(node: ast.Call) -> tuple[str, ast.expr] | None:
    func = node.func
    if not isinstance(func, ast.Attribute):
        return None
    if func.attr in LEVELS and node.args:
        return func.attr, node.args[0]
    if func.attr == "log" and len(node.args) >= 2:  # logger.log(level, "event", ...)
        return "log", node.args[1]
    return None


def _names(expr: ast.expr) -> list[str] | None:
    """The literal event names of ``expr`` (a string, or a conditional between strings), else None."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.IfExp):
        body, orelse = _names(expr.body), _names(expr.orelse)
        if body is not None and orelse is not None:
            return body + orelse
    return None


def scan() -> list[Site]:
    sites: list[Site] = []
    for path in source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        stdlib = _stdlib_loggers(tree)
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            found = _event_args(node)
            if found is None or not _receiver_is_logger(node.func.value, stdlib):
                continue
            level, expr = found
            names = _names(expr)
            if names is None:
                sites.append(Site(rel, node.lineno, level, None, ast.unparse(expr)))
            else:
                sites.extend(Site(rel, node.lineno, level, n, ast.unparse(expr)) for n in names)
    return sites


def catalogued() -> set[str]:
    """Event names in the catalog: the first cell of each table row, in backticks."""
    names: set[str] = set()
    for line in CATALOG.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if match:
            names.add(match.group(1))
    return names


def test_the_scanner_sees_the_engine() -> None:
    names = {s.name for s in scan()}
    # A few events from different areas and kinds of call: if these vanish, the scanner is broken.
    assert {"engine.ready", "signal.routed", "admin.listening", "engine.start_failed", "lib.log"} <= names


def test_every_literal_event_is_catalogued() -> None:
    documented = catalogued()
    missing = sorted({f"{s.name}  ({s.path}:{s.line})" for s in scan() if s.name and s.name not in documented})
    assert not missing, "log events missing from docs/log-events.md:\n" + "\n".join(missing)


def test_event_names_are_dotted_facts() -> None:
    bad = sorted(f"{s.name!r}  ({s.path}:{s.line})" for s in scan() if s.name and not EVENT_NAME.match(s.name))
    assert not bad, "event names must look like `area.fact`:\n" + "\n".join(bad)


def test_every_dynamic_event_site_is_covered() -> None:
    documented = catalogued()
    problems: list[str] = []
    for site in scan():
        if site.name is not None:
            continue
        names = DYNAMIC_SITES.get((site.path, site.expr))
        if names is None:
            problems.append(f"{site.path}:{site.line}: dynamic event name `{site.expr}`: add it to DYNAMIC_SITES")
            continue
        problems += [f"{n}  ({site.path}:{site.line}, dynamic)" for n in sorted(names() - documented)]
    assert not problems, "dynamic log events not covered by docs/log-events.md:\n" + "\n".join(problems)


def test_dynamic_sites_still_exist() -> None:
    seen = {(s.path, s.expr) for s in scan() if s.name is None}
    stale = sorted(f"{path}: {expr}" for path, expr in DYNAMIC_SITES if (path, expr) not in seen)
    assert not stale, "DYNAMIC_SITES lists call sites that are gone:\n" + "\n".join(stale)


def test_catalog_lists_no_dead_events() -> None:
    emitted = {s.name for s in scan() if s.name}
    for site in scan():
        if site.name is None and (fn := DYNAMIC_SITES.get((site.path, site.expr))):
            emitted |= fn()
    dead = sorted(catalogued() - emitted)
    assert not dead, "docs/log-events.md lists events nothing logs any more:\n" + "\n".join(dead)
