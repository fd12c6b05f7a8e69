"""The whole platform as real processes, for browser journeys, fault scenarios and load runs.

``Stack`` starts what ``bin/run`` starts, from the same ``Procfile`` lines (run by bash, as
honcho runs them): daphne (``bin/web``), the paper exchange's Kite face, a Celery worker and
Celery beat, plus the Procfile's embedded Redis when no ``REDIS_URL`` is given. Each run is
isolated, so several can share this machine and its MariaDB and Redis:

- with ``DATABASE_URL=mysql://...`` a fresh database named ``<name>_<hex>`` is created on
  that server, migrated, loaded with the paper instruments and dropped at the end; without
  it, a fresh SQLite file under ``var/e2e-run/<run id>/``;
- with ``REDIS_URL`` that server is used under a unique ``CACHE_KEY_PREFIX`` and
  ``CELERY_QUEUE`` (the run's keys are deleted at the end); without it, the Procfile's
  embedded Redis on a free port;
- free random ports for the web process and the face; fresh ``SECRET_KEY`` and
  ``FIELD_ENCRYPTION_KEYS``; ``DEBUG=true`` as ``bin/run`` (plain-HTTP cookies, static files
  from the finders).

Every process runs in its own process group with its output in ``var/e2e-run/<run id>/<name>.log``
(kept after the run, for CI artifacts). ``close()`` (also the context manager's exit, atexit,
and SIGTERM to the calling process) stops every process group and drops the database.

    from e2e.stack import Stack

    with Stack(env={"MONITORING_INTERVAL_S": "5"}) as stack:
        stack.base_url                      # http://127.0.0.1:<port>
        stack.shell("from accounts.models import User; print(User.objects.count())")
        stack.manage("load_instruments", "--broker", "paper")
        stack.kill("worker")                # SIGKILL its process group (mid-task)
        stack.start("worker")               # the Procfile's worker again
        stack.start("beat2", stack.procfile["beat"])   # a second beat, by mistake
        stack.restart("web"); stack.wait_ready()

Run ``python -m e2e.stack`` to start one and keep it up until Ctrl-C (prints the URL).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
RUN_DIR = ROOT / "var" / "e2e-run"

# The processes bin/run starts (besides the embedded Redis, which the stack adds when needed).
DEFAULT_PROCESSES = ("web", "face", "worker", "beat")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def read_procfile(path: Path = ROOT / "Procfile") -> dict[str, str]:
    """``name: command`` lines of the Procfile (the commands are bash, run as honcho runs them)."""
    commands = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Process:
    """One named subprocess of the stack, in its own process group, output to a log file (``echo``: to this
    process's output instead)."""

    def __init__(self, name: str, command: str, env: dict[str, str], log_path: Path, *, echo: bool = False):
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.echo = echo
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%H:%M:%S')} start: {self.command}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(  # noqa: S603  (our own Procfile commands)
                ["bash", "-c", f"exec {self.command}"],  # noqa: S607
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=None if self.echo else log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509  (no threads start processes here)
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (daphne or celery and anything they started)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, no chance to clean up (a crash, OOM): what ``acks_late`` must survive."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a Celery worker finishes its current tasks, a warm shutdown), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        self.wait_or_kill(timeout)

    def wait_or_kill(self, timeout: float) -> None:
        """Wait for an exit already asked for; SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        try:
            self.proc.wait(max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Stack:
    """The platform as ``bin/run`` starts it, isolated per run. See the module docstring.

    ``env``: extra environment for every process (``MONITORING_INTERVAL_S``, ...).
    ``database_url`` / ``redis_url``: default to ``DATABASE_URL`` / ``REDIS_URL`` from the
    environment (a mysql:// URL names the server; the database name in it is ignored).
    ``processes``: which Procfile entries to start (``DEFAULT_PROCESSES``).
    """

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        processes: tuple[str, ...] = DEFAULT_PROCESSES,
        name: str = "e2e",
        ready_timeout_s: float = 120.0,
    ):
        self.run_id = f"{name}_{uuid.uuid4().hex[:8]}"
        self.dir = RUN_DIR / self.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procfile = read_procfile()
        self.initial_processes = processes
        self.ready_timeout_s = ready_timeout_s
        self.processes: dict[str, Process] = {}
        self._closed = False
        self._db_created = False

        database_url = os.environ.get("DATABASE_URL", "") if database_url is None else database_url
        redis_url = os.environ.get("REDIS_URL", "") if redis_url is None else redis_url
        self.web_port, self.face_port = free_port(), free_port()
        self.base_url = f"http://{HOST}:{self.web_port}"
        self.face_url = f"http://{HOST}:{self.face_port}"

        self.mysql: dict | None = None
        if database_url.startswith(("mysql://", "mysql2://")):
            import environ

            self.mysql = environ.Env.db_url_config(database_url)
            self.db_name = self.run_id
            auth = self.mysql["USER"] + (f":{self.mysql['PASSWORD']}" if self.mysql["PASSWORD"] else "")
            database_url = f"mysql://{auth}@{self.mysql['HOST']}:{self.mysql['PORT'] or 3306}/{self.db_name}"
        elif database_url:
            raise ValueError(f"DATABASE_URL: only mysql:// or none (SQLite) is supported, not {database_url!r}")
        else:
            self.db_name = str(self.dir / "db.sqlite3")
            database_url = f"sqlite:///{self.db_name}"

        self.embedded_redis = not redis_url
        extra = {}
        if self.embedded_redis:
            extra["EMBEDDED_REDIS_PORT"] = str(free_port())
            redis_url = f"redis://{HOST}:{extra['EMBEDDED_REDIS_PORT']}/0"
        self.redis_url = redis_url

        base = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        bin_dir = str(Path(sys.executable).parent)
        self.env: dict[str, str] = {
            **base,
            "PATH": f"{bin_dir}{os.pathsep}{base.get('PATH', '/usr/bin:/bin')}",
            "DJANGO_SETTINGS_MODULE": "tradingplatform.settings",
            "PYTHONUNBUFFERED": "1",
            "DEBUG": "true",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "FIELD_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": self.run_id,
            "CELERY_QUEUE": self.run_id,
            "WEB_PORT": str(self.web_port),
            "PAPER_FACE_PORT": str(self.face_port),
            "PAPER_FACE_URL": self.face_url,
            "CELERY_LOG_LEVEL": "INFO",
            **extra,
            **(env or {}),
        }
        atexit.register(self.close)
        _install_sigterm_handler()

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def up(self) -> Stack:
        """Create and fill the database, start the processes, wait until ready."""
        t0 = time.monotonic()
        if self.embedded_redis:
            self.start("redis")
            self._wait(lambda: _redis_ping(self.redis_url), "the embedded Redis", 30, ["redis"])
        if self.mysql:
            self._mysql(f"CREATE DATABASE `{self.db_name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            self._db_created = True
        self.manage("migrate", "--noinput", "-v0")
        self.manage("load_instruments", "--broker", "paper")
        self.setup_s = time.monotonic() - t0
        for name in self.initial_processes:
            self.start(name)
        self.wait_ready()
        self.up_s = time.monotonic() - t0
        info = self.dir / "stack.json"
        info.touch(mode=0o600)
        info.write_text(json.dumps({"run_id": self.run_id, "base_url": self.base_url, "env": self.env}))
        return self

    @classmethod
    def attach(cls, run_dir: str | Path) -> Stack:
        """A stack another process runs (``python -m e2e.stack``): its URL, env, manage and shell.

        It owns none of the processes: ``close`` leaves them alone (for quick test iterations).
        """
        info = json.loads((Path(run_dir) / "stack.json").read_text())
        stack = cls.__new__(cls)
        stack.run_id, stack.base_url, stack.env = info["run_id"], info["base_url"], info["env"]
        stack.dir, stack.procfile, stack.processes = Path(run_dir), read_procfile(), {}
        stack.face_url = stack.env["PAPER_FACE_URL"]
        stack.redis_url = stack.env["REDIS_URL"]
        stack.ready_timeout_s, stack.up_s, stack.setup_s = 30.0, 0.0, 0.0
        stack._closed = True
        return stack

    def close(self) -> None:
        """Stop every process (TERM, then KILL), drop the database and the run's Redis keys."""
        if self._closed:
            return
        self._closed = True
        # All at once (a Celery worker's warm shutdown takes seconds), each then waited for.
        running = [proc for proc in self.processes.values() if proc.name != "redis"]
        for proc in running:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in running:
            proc.wait_or_kill(deadline - time.monotonic())
        if self.mysql and self._db_created:
            with contextlib.suppress(Exception):
                self._mysql(f"DROP DATABASE IF EXISTS `{self.db_name}`")
        if not self.embedded_redis:
            with contextlib.suppress(Exception):
                _redis_delete_matching(self.redis_url, f"*{self.run_id}*")
        if "redis" in self.processes:
            self.processes["redis"].stop()
        with contextlib.suppress(OSError):
            for path in self.dir.glob("db.sqlite3*"):
                path.unlink()

    # --- processes ------------------------------------------------------------------------------

    def start(self, name: str, command: str | None = None, env: dict[str, str] | None = None) -> Process:
        """Start ``name``: its Procfile command, or ``command`` (bash) for an extra process.

        A name already used is started again with its earlier command (after ``stop``/``kill``).
        """
        if name in self.processes and command is None and env is None:
            return self.processes[name].start()
        if command is None:
            command = self.procfile[name]
        process = Process(name, command, {**self.env, **(env or {})}, self.dir / f"{name}.log")
        self.processes[name] = process
        return process.start()

    def stop(self, name: str, timeout: float = 15.0) -> None:
        self.processes[name].stop(timeout)

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    def restart(self, name: str) -> Process:
        self.stop(name)
        return self.start(name)

    def __getitem__(self, name: str) -> Process:
        return self.processes[name]

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"=== {p.name} ({p.log_path})\n{p.tail(lines)}" for p in self.processes.values())

    # --- readiness ------------------------------------------------------------------------------

    def readyz(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=5) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until /readyz answers 200 and this run's own worker has run a task sent to its queue.

        (/readyz's worker ping is answered by any worker on the same Redis, so the stack also
        sends the heartbeat task on its own queue and waits for the heartbeat it records.)
        """
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        watched = [n for n in ("web", "worker") if n in self.processes]

        def ready():
            with contextlib.suppress(OSError, ValueError):
                return self.readyz()[0] == 200
            return False

        self._wait(ready, "/readyz", deadline - time.monotonic(), watched)
        if "worker" in self.processes:
            self.shell(
                "from django.core.cache import cache; from monitoring import services, tasks; "
                "from tradingplatform import locks; cache.delete(services.HEARTBEAT_KEY); "
                "locks.redis_client().delete(locks._key('periodic:monitoring.tasks.heartbeat')); "
                "tasks.heartbeat.delay()"
            )
            self._wait(
                lambda: self.readyz()[1].get("beat_heartbeat_age_s") is not None,
                "this run's worker to run a task",
                deadline - time.monotonic(),
                watched,
            )

    def _wait(self, check, what: str, timeout_s: float, watched: list[str]) -> None:
        deadline = time.monotonic() + max(timeout_s, 1.0)
        while True:
            for name in watched:
                if not self.processes[name].alive():
                    raise RuntimeError(f"{name} exited while waiting for {what}:\n{self.logs()}")
            if check():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s:\n{self.logs()}")
            time.sleep(0.2)

    # --- Django in the stack's environment --------------------------------------------------------

    def manage(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess:
        """``python manage.py ARGS`` with the stack's environment; raises with its output on failure."""
        result = subprocess.run(  # noqa: S603
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"manage.py {shlex.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def shell(self, code: str, timeout: float = 120.0) -> str:
        """Run Python ``code`` in ``manage.py shell`` against the stack; returns what it printed."""
        return self.manage("shell", "--no-imports", "-c", code, timeout=timeout).stdout

    def shell_json(self, code: str, timeout: float = 120.0):
        """Run ``code``, which must print one JSON document as its last line, and return it parsed."""
        return json.loads(self.shell(code, timeout).strip().splitlines()[-1])

    def _mysql(self, statement: str) -> None:
        import MySQLdb

        conn = MySQLdb.connect(
            host=self.mysql["HOST"] or HOST,
            port=int(self.mysql["PORT"] or 3306),
            user=self.mysql["USER"],
            passwd=self.mysql["PASSWORD"] or "",
        )
        try:
            conn.cursor().execute(statement)
        finally:
            conn.close()


def django_setup(env: dict[str, str]) -> None:
    """Django in this process, on ``env`` (a stack's or a bench's: its database, Redis, secrets)."""
    os.environ.update(env)
    import django

    django.setup()


# The caller's test settings must not leak into the stack (settings_test sets some of these).
_NOT_INHERITED = {
    "DJANGO_SETTINGS_MODULE",
    "CELERY_TASK_ALWAYS_EAGER",
    "READYZ_CHECK_CELERY",
    "READYZ_CHECK_BEAT",
    "CACHE_KEY_PREFIX",
    "CELERY_QUEUE",
    "EMBEDDED_REDIS_PORT",
    "WEB_PORT",
    "PAPER_FACE_PORT",
    "PAPER_FACE_URL",
}


def _redis_ping(url: str) -> bool:
    import redis

    with contextlib.suppress(Exception):
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    return False


def _redis_delete_matching(url: str, pattern: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _install_sigterm_handler() -> None:
    """SIGTERM to the caller (a CI timeout, kill) stops it as Ctrl-C would: pytest ends the session
    and finalizes its fixtures, ``with`` blocks exit, atexit runs; so the stack is stopped too."""
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, _sigterm):
            signal.signal(signal.SIGTERM, _sigterm)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Start the platform isolated (see e2e/stack.py) until Ctrl-C.")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background (`&`)
    with Stack(env=extra) as stack:
        print(f"up in {stack.up_s:.1f} s: {stack.base_url} (face {stack.face_url}); logs in {stack.dir}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.alive() for p in stack.processes.values()):
                time.sleep(1)
            print(f"a process exited:\n{stack.logs()}", file=sys.stderr)


if __name__ == "__main__":
    main()
