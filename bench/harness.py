"""What the benchmarks share: their environment, database and Redis, subprocesses, CPU accounting, figures.

Used by ``bench/order_api.py``, ``bench/monitoring_cycle.py``, ``bench/fill_latency.py`` and
``bench/load.py``. Subprocesses are ``e2e.stack.Process`` (own process group, TERM then KILL, output
to a log file); ``Managed`` starts one from an argument list with a temporary log removed at ``stop``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import os
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e2e.stack import HOST, Process, django_setup, free_port  # noqa: E402

__all__ = [
    "HOST",
    "CpuMeter",
    "CpuUse",
    "Managed",
    "bench_env",
    "dashboard_connect",
    "django_setup",
    "flush_redis",
    "fmt",
    "free_port",
    "machine_busy_seconds",
    "mariadb_cpu_seconds",
    "mysql_connect",
    "mysql_exec",
    "named_cpu_seconds",
    "not_durable",
    "percentile",
    "proc_cpu_seconds",
    "require_durable",
    "start_workers",
    "tree_cpu_seconds",
    "tree_pids",
    "wait_for_load",
    "wait_healthz",
    "wait_quiet",
]


# --- Environment, MariaDB, Redis ---------------------------------------------------------------------


def _mysql_parts(mysql: str) -> tuple[str, str, str, int]:
    """``user:password@host:port`` -> (user, password, host, port)."""
    user_password, _, host_port = mysql.rpartition("@")
    user, _, password = user_password.partition(":")
    host, _, port = host_port.partition(":")
    return user, password, host, int(port or 3306)


def add_database_options(p, *, db_name: str, redis_db: int, keep_db_help: str = "keep the database afterwards"):
    """The options every benchmark has: where MariaDB and Redis are, and its own database."""
    p.add_argument("--mysql", default="root:@127.0.0.1:3306", help="user:password@host:port of MariaDB/MySQL")
    p.add_argument("--db-name", default=db_name, help="the bench's own database (dropped and re-created)")
    p.add_argument(
        "--redis-url", default=f"redis://127.0.0.1:6379/{redis_db}", help="Redis database for the bench (flushed)"
    )
    p.add_argument("--keep-db", action="store_true", help=keep_db_help)


def add_load_options(p, *, when: str) -> None:
    """Waiting for a quiet machine before measuring (``when``: e.g. "before measuring")."""
    p.add_argument(
        "--load-below",
        type=float,
        default=1.0,
        help=f"{when}, wait (polling every 30 s) for the 1-minute load average to drop below this\n(0: do not wait)",
    )
    p.add_argument("--load-wait-s", type=float, default=600.0, help="... for at most this long")


def bench_env(args, **extra: str) -> dict[str, str]:
    """The environment of the bench's own Django and of every process it starts: DEBUG off, LOG_LEVEL=WARNING,
    the database ``args.db_name`` on ``args.mysql``, Redis ``args.redis_url``; ``extra`` on top (the queue,
    key prefix and knobs of each bench). The secrets are derived from the database name, so a kept
    database can be read again.
    """
    user, password, host, port = _mysql_parts(args.mysql)
    fernet = base64.urlsafe_b64encode(hashlib.sha256(f"bench-fernet:{args.db_name}".encode()).digest()).decode()
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tradingplatform.settings",
        DEBUG="false",
        SECRET_KEY=hashlib.sha256(f"bench-secret:{args.db_name}".encode()).hexdigest(),
        ALLOWED_HOSTS=f"{HOST},localhost",
        FIELD_ENCRYPTION_KEYS=fernet,
        DATABASE_URL=f"mysql://{user}:{password}@{host}:{port}/{args.db_name}",
        REDIS_URL=args.redis_url,
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)
    return env


def mysql_connect(mysql: str, db: str | None = None):
    import MySQLdb

    user, password, host, port = _mysql_parts(mysql)
    kwargs = {"host": host, "user": user, "passwd": password, "port": port}
    if db:
        kwargs["db"] = db
    return MySQLdb.connect(**kwargs)


def mysql_exec(mysql: str, *statements: str) -> list:
    """Run the statements on one connection; returns every row they returned."""
    conn = mysql_connect(mysql)
    try:
        cur = conn.cursor()
        rows = []
        for statement in statements:
            cur.execute(statement)
            rows.extend(cur.fetchall())
        return rows
    finally:
        conn.close()


def not_durable(variables: dict[str, str]) -> str:
    """Why a MariaDB/MySQL server with these variables (``SHOW VARIABLES``) may lose a commit it
    acknowledged in a crash or power cut; "" when its commits are durable: the redo log flushed at
    every commit (``innodb_flush_log_at_trx_commit`` 1, or MariaDB's 3) and, with the binary log on,
    the binary log too (``sync_binlog=1``)."""
    reasons = []
    flush = variables.get("innodb_flush_log_at_trx_commit")
    if flush not in ("1", "3"):
        reasons.append(f"innodb_flush_log_at_trx_commit={flush} (the redo log is not flushed at every commit)")
    if variables.get("log_bin") == "ON" and variables.get("sync_binlog") != "1":
        reasons.append(f"log_bin=ON with sync_binlog={variables.get('sync_binlog')} (the binary log is not synced)")
    return "; ".join(reasons)


def require_durable(mysql: str) -> dict[str, str]:
    """The server's variables; exits, measuring nothing, when its commits are not durable (the
    figures are of durable commits: a faster, lossy setting would flatter them)."""
    variables = {name: str(value) for name, value in mysql_exec(mysql, "SHOW VARIABLES")}
    reasons = not_durable(variables)
    if reasons:
        raise SystemExit(
            f"MariaDB at {mysql} does not commit durably: {reasons}. The figures are of durable commits: "
            "set innodb_flush_log_at_trx_commit=1 (and sync_binlog=1 with the binary log on) and run again."
        )
    return variables


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


# --- Processes -------------------------------------------------------------------------------------------


class Managed(Process):
    """``cmd`` started at once in its own process group, its output in a temporary log (or, ``verbose``,
    on this process's), stopped (TERM, then KILL) by ``stop``, which also removes the log."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], verbose: bool, stop_timeout: float = 15.0):
        self.stop_timeout = stop_timeout
        log = tempfile.NamedTemporaryFile(prefix=f"bench_{name}_", suffix=".log", delete=False)  # noqa: SIM115
        log.close()
        super().__init__(name, shlex.join(cmd), env, Path(log.name), echo=verbose)
        self.start()

    def tail(self, lines: int = 30) -> str:
        return super().tail(lines)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def stop(self, timeout: float | None = None) -> None:
        super().stop(self.stop_timeout if timeout is None else timeout)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def wait_healthz(server: Managed, port: int, what: str, timeout_s: float = 60.0) -> Managed:
    """Until ``server`` answers ``GET /healthz`` with 200 on ``port``; stops it and exits when it does not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise SystemExit(f"{what} exited:\n{server.tail()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=2) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return server
        time.sleep(0.2)
    server.stop()
    raise SystemExit(f"{what} did not answer /healthz within {timeout_s:.0f} s:\n{server.tail()}")


def start_workers(args, env: dict[str, str], prefix: str) -> list[Managed]:
    """``args.workers`` Celery workers (``args.pool``, ``args.concurrency``) on ``env``'s CELERY_QUEUE, named
    ``<prefix><k>-<pid>@<host>``; returns when every one answers a ping (90 s at most)."""
    from tradingplatform.celery import app

    workers, names = [], []
    for k in range(args.workers):
        name = f"{prefix}{k}-{os.getpid()}@{os.uname().nodename}"
        cmd = [
            *(sys.executable, "-m", "celery", "-A", "tradingplatform", "worker", "--loglevel", "WARNING"),
            *("--pool", args.pool, "--concurrency", str(args.concurrency), "-n", name, "-Q", env["CELERY_QUEUE"]),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ]
        workers.append(Managed(f"worker{k}", cmd, env, args.verbose))
        names.append(name)
    deadline = time.monotonic() + 90
    waiting = set(names)
    while waiting:
        for w in workers:
            if not w.alive():
                raise SystemExit(f"a Celery worker exited:\n{w.tail()}")
        for reply in app.control.ping(destination=list(waiting), timeout=0.5):
            waiting -= set(reply)
        if time.monotonic() > deadline:
            raise SystemExit(f"Celery workers did not answer within 90 s:\n{workers[0].tail()}")
    return workers


async def dashboard_connect(port: int, session_cookie: str):
    """A trader's dashboard websocket (``ws://HOST:port/ws/``, signed in by the session cookie, Origin
    matching ALLOWED_HOSTS), opened with the ``websockets`` package."""
    from websockets.asyncio.client import connect

    return await connect(
        f"ws://{HOST}:{port}/ws/",
        origin=f"http://{HOST}:{port}",
        additional_headers={"Cookie": f"sessionid={session_cookie}"},
        max_size=None,
        open_timeout=30,
        compression=None,
    )


# --- CPU accounting (from /proc) ------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (and its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def tree_pids(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return pids


def tree_cpu_seconds(pid: int) -> float:
    return sum(proc_cpu_seconds(p) for p in tree_pids(pid))


def named_cpu_seconds(*names: str) -> float:
    """CPU of every process whose command name is one of ``names``."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    total += proc_cpu_seconds(int(entry.name))
    return total


def mariadb_cpu_seconds() -> float:
    return named_cpu_seconds("mariadbd", "mysqld")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuUse:
    """CPU seconds over ``wall`` seconds: of each process tree, MariaDB (Redis), this process, in that order,
    and of the whole machine (``busy``)."""

    wall: float = 1.0
    seconds: dict[str, float] = field(default_factory=dict)
    busy: float = 0.0

    def cores(self, name: str) -> float:
        return self.seconds[name] / self.wall

    @property
    def other_s(self) -> float:
        """CPU seconds of every other process on the machine."""
        return max(0.0, self.busy - sum(self.seconds.values()))

    @property
    def other(self) -> float:
        return self.other_s / self.wall

    def line(self) -> str:
        parts = ", ".join(f"{name} {value / self.wall:.2f}" for name, value in self.seconds.items())
        return f"cores: {parts}, other processes {self.other:.2f}"


class CpuMeter:
    """Cores used from now until ``stop``: by each named process tree (a pid or several), MariaDB, Redis
    (``redis=True``), this process (named ``own``) and the rest of the machine (it is shared)."""

    def __init__(self, trees: dict[str, int | list[int]], *, own: str = "bench", redis: bool = False):
        self.trees = {name: [pids] if isinstance(pids, int) else list(pids) for name, pids in trees.items()}
        self.own, self.redis = own, redis
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        values = {name: sum(tree_cpu_seconds(pid) for pid in pids) for name, pids in self.trees.items()}
        values["mariadb"] = mariadb_cpu_seconds()
        if self.redis:
            values["redis"] = named_cpu_seconds("redis-server")
        values[self.own] = time.process_time()
        values["busy"] = machine_busy_seconds()
        values["wall"] = time.monotonic()
        return values

    def stop(self) -> CpuUse:
        end = self._read()
        delta = {k: end[k] - self.start[k] for k in end}
        wall, busy = max(delta.pop("wall"), 1e-6), delta.pop("busy")
        return CpuUse(wall, delta, busy)


def wait_quiet(max_wait_s: float, own_pids: list[int], *, below: float = 0.3) -> float:
    """Wait (up to ``max_wait_s``) for a second in which processes other than ours use < ``below`` cores."""
    deadline = time.monotonic() + max_wait_s
    while True:

        def own() -> float:
            return sum(tree_cpu_seconds(p) for p in own_pids) + time.process_time()

        busy0, own0 = machine_busy_seconds(), own()
        time.sleep(1.0)
        other = machine_busy_seconds() - busy0 - (own() - own0)
        if other < below or time.monotonic() >= deadline:
            return max(0.0, other)


def wait_for_load(below: float, max_wait_s: float) -> float:
    """Poll the 1-minute load average every 30 s until it is below ``below`` (or the wait is over)."""
    deadline = time.monotonic() + max_wait_s
    while below > 0 and os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
    return os.getloadavg()[0]


# --- Figures ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the values need not be sorted); nan for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, min(len(ordered), math.ceil(q * len(ordered)))) - 1]


def fmt(value: float, digits: int = 1) -> str:
    """A figure with ``digits`` decimals; ``inf`` and ``nan`` spelled so."""
    return "inf" if math.isinf(value) else "nan" if math.isnan(value) else f"{value:.{digits}f}"
