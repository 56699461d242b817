"""The admin command line: ``python run_engine.py admin COMMAND [ARGS] [--json] [--socket PATH]``.

Its arguments are parsed by ``run_engine.py``'s one parser (``engine/cli_args.py``). Sends one command to the
engine's admin socket and prints the reply: a readable table by default (lists of objects as aligned columns,
objects as ``key: value`` lines), the raw reply line with ``--json``.

Exit codes: 0 the engine said ok; 1 the command was refused (by the engine, or locally because it would not
decode); 2 the engine could not be reached (no socket, nobody listening, no reply).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson

from engine.admin_commands import CommandError
from engine.cli_args import AdminArgs, admin_usage, parse_admin_args

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 2

_MAX_REPLY_BYTES = 256 * 1024 * 1024  # a reply bigger than this is a bug, not something to print


def main(
    argv: list[str],
    *,
    socket_path: Path,
    timeout_s: float = 60.0,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one admin command (the arguments after ``admin``) against the engine listening on ``socket_path``
    (``--socket`` overrides it)."""
    try:
        args = parse_admin_args(argv)
    except CommandError as exc:
        print(f"error: {exc}", file=stderr or sys.stderr)
        return EXIT_ERROR
    return run_command(args, socket_path=args.socket or socket_path, timeout_s=timeout_s, stdout=stdout, stderr=stderr)


def run_command(
    args: AdminArgs,
    *,
    socket_path: Path,
    timeout_s: float = 60.0,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Send an already parsed admin command to the engine listening on ``socket_path``; print the reply."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    request, as_json, path = args.request, args.as_json, socket_path
    if request is None:
        print(admin_usage(), file=out)
        return EXIT_OK
    try:
        raw = _exchange(path, orjson.dumps(request) + b"\n", timeout_s)
    except _Unreachable as exc:
        print(f"error: engine not reachable: {exc}", file=err)
        return EXIT_UNREACHABLE
    try:
        reply = orjson.loads(raw)
    except orjson.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        print(f"error: the engine sent a reply that is not a JSON object with 'ok': {raw[:200]!r}", file=err)
        return EXIT_ERROR
    try:
        if as_json:
            print(raw.decode(errors="replace").rstrip("\n"), file=out)
        elif reply["ok"]:
            text = render({k: v for k, v in reply.items() if k != "ok"})
            print(text or "ok", file=out)
        else:
            print(f"error: {reply.get('error', 'unknown error')}", file=err)
    except BrokenPipeError:
        # The reader went away (`... | head`): nothing left to say, and no traceback for it.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK if reply["ok"] else EXIT_ERROR


class _Unreachable(Exception):
    pass


def _exchange(path: Path, request: bytes, timeout_s: float) -> bytes:
    """Send one line, read one line back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise _Unreachable(f"no engine listening on {path} (is it running? is --socket right?)") from None
        except PermissionError:
            raise _Unreachable(f"permission denied on {path} (run as the engine's user)") from None
        except OSError as exc:
            raise _Unreachable(f"cannot connect to {path}: {exc}") from None
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # A refused connection (too many, wrong uid) is closed at once, maybe before we could send:
                # its one-line refusal is still waiting to be read.
                sock.sendall(request)
            return _read_line(sock, path)
        except TimeoutError:
            raise _Unreachable(f"no reply from {path} within {timeout_s:g} s") from None
        except OSError as exc:
            raise _Unreachable(f"connection to {path} failed: {exc}") from None


def _read_line(sock: socket.socket, path: Path) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Unreachable(f"{path} closed the connection without a reply")
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[: end + 1])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_REPLY_BYTES:
            raise _Unreachable(f"the reply from {path} is larger than {_MAX_REPLY_BYTES} bytes")


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------


def render(value: dict[str, Any], indent: int = 0) -> str:
    """Reply fields as text: scalars ``key: value``, objects indented below their key, lists of objects as an
    aligned table, lists of scalars comma-separated."""
    pad = " " * indent
    lines: list[str] = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f"{pad}{key}:" if item else f"{pad}{key}: {{}}")
            if item:
                lines.append(render(item, indent + 2))
        elif isinstance(item, list) and item and all(isinstance(row, dict) for row in item):
            lines.append(f"{pad}{key}:")
            lines.extend(f"{pad}  {row}" for row in table(item))
        elif isinstance(item, list):
            lines.append(f"{pad}{key}: {', '.join(_cell(v) for v in item) if item else '(none)'}")
        else:
            lines.append(f"{pad}{key}: {_cell(item)}")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as aligned columns (every key that occurs, in order of first use); numbers right-aligned."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    numeric = [all(_is_number(row.get(col)) for row in rows) for col in columns]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    header = line([c.upper() for c in columns])
    return [header, *(line(r) for r in cells)]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _is_number(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        text = value.lstrip("-")
        return text.replace(".", "", 1).isdigit()
    return False


if __name__ == "__main__":
    # Stand-alone use: ``python -m adapters.admin_cli status --socket var/admin/engine.sock``.
    raise SystemExit(main(sys.argv[1:], socket_path=Path("var/admin/engine.sock")))
