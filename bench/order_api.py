"""Benchmark of order placement through the HTTP API into the paper exchange, on MariaDB.

Run from the repository root (MariaDB and Redis must be up; ``--mysql`` / ``--redis-url`` say where):

    python bench/order_api.py [--server gunicorn-gthread:2x4] [--compare [SETUP,...]] [--accounts 200]
                              [--latency-seconds 15] [--scheduled 500] [--keep-db] [--help for the rest]

Setup. It creates its own database (``--db-name``, default ``bench_orders``; dropped at the end
unless ``--keep-db``), migrates it, loads the paper instruments, and creates one trader per
account, each with an API key and a paper account whose exchange client has plenty of cash
(``--accounts`` for the API, ``--scheduled-accounts`` more for the scheduled orders, so their
reconciliation does not meet the API phases' orders). Redis database 5 (``--redis-url``) is
flushed before each phase and at the end; no other database is touched. Every server, Celery
worker and beat is a subprocess this script starts and stops, with DEBUG off, LOG_LEVEL=WARNING
and MariaDB's durable commits (``innodb_flush_log_at_trx_commit`` 1, and ``sync_binlog=1`` with the
binary log on: the script measures nothing otherwise; the settings are printed).
Server setups (``--server``, ``--compare``): gunicorn sync or gthread workers (WSGI), uvicorn
workers or daphne (ASGI; run with CONN_MAX_AGE=0, see ``--conn-max-age``); ``bare/<gunicorn
setup>`` serves the issue's yardstick instead of the platform (``bench/bare_endpoint.py``).

Figures (each on its own line as ``name: value unit``; lines starting with ``#`` are context):

1. ``api_max_orders_per_s``: the highest sustained rate with no errors and no duplicates. A
   closed-loop probe (``--probe-concurrency`` requests in flight) estimates the capacity C; then
   open-loop steps at fixed arrival rates (``--ramp`` fractions of C) of ``--step-seconds`` each,
   up to the second rate in a row that fails (a failing step is run once more when other
   processes took more than ``--disturbed-cores`` meanwhile). A step passes when every request got a 2xx with a broker
   order id, the database check (below) is clean, the last answer came at most ``--max-lag-s``
   after the last arrival and p99 stayed under ``--max-p99-ms``. The figure is the achieved
   rate of the best passing step below the first failing one (0 when none passed): a step that
   passes above a failed one is shown, not counted.
2. ``api_p50_ms_at_300`` / ``api_p99_ms_at_300``: open loop at ``--rate`` (300/s) for
   ``--latency-seconds`` (named after the rate: ``api_p50_ms_at_20`` with ``--rate 20``).
   Latency runs from each request's *scheduled* send time to its answer, so a slow server
   cannot hide behind a waiting client (no coordinated omission); requests still unanswered
   ``--patience-s`` after the last arrival are abandoned and, like a request answered with an
   error or without an order at the exchange, count as infinitely late (so a percentile can be
   ``inf``: a quick refusal is no fast order).
3. ``scheduled_lateness_p50_ms`` / ``scheduled_lateness_p99_ms``: ``--scheduled`` one-off
   scheduled MARKET orders on ``--scheduled-accounts`` accounts, all due in the same second,
   placed by a real Celery worker (``--worker-pool``, ``--worker-concurrency``) after a
   dispatcher claims them: ``--dispatcher beat`` (default) runs the real Celery beat with the
   database scheduler and SCHEDULE_DISPATCH_INTERVAL_S=``--dispatch-interval-s``; ``loop``
   calls the body of ``orders.tasks.dispatch_scheduled`` from this script every
   ``--dispatch-interval-s`` (a stand-in for a dispatcher that wakes at due times). Lateness
   is, per scheduled order, the time the paper exchange received its order (``placed_at`` of the
   ``PaperOrder`` tagged with the order's reference) minus the due time; one whose order the
   exchange never took counts as infinitely late. A scheduled order placed twice (two orders, or
   two exchange orders for one reference), one at the exchange before its time, or a fire due at
   another time is reported on a ``# scheduled: check FAILED`` line.

Database check, after each stretch: every request carries a unique ``Idempotency-Key``; per
key the platform's ``Order`` rows are counted, and per order reference (the broker tag) the
paper exchange's ``PaperOrder`` rows. An answered key without an order is lost; a key with two
orders or a reference with two exchange orders is a duplicate; an order that the exchange did
not take (not SUBMITTED, OPEN or FILLED: the exchange's own update may beat the answer) or that
has no exchange order counts as an error.

The load generator is asyncio with a small HTTP/1.1 client on raw streams in this process
(keep-alive where the server allows it; a request that meets a kept-alive connection the server
has just closed is sent again once on a new one, which the Idempotency-Key makes safe). It
shares the two cores with the server and MariaDB; each stretch prints the cores used by the
server, MariaDB, the load generator and every other process (this machine is shared, and before
each stretch the script waits up to ``--quiet-wait-s`` for the others to quieten).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import math
import os
import random
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.harness import (  # noqa: E402
    HOST,
    CpuMeter,
    CpuUse,
    Managed,
    django_setup,
    flush_redis,
    fmt,
    free_port,
    percentile,
    tree_cpu_seconds,
    wait_healthz,
    wait_quiet,
)

# What a stretch's CPU line says before anything was measured.
NO_CPU = CpuUse(1.0, {"server": 0.0, "mariadb": 0.0, "load generator": 0.0})

# --- Configuration ---------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    harness.add_database_options(
        p, db_name="bench_orders", redis_db=5, keep_db_help="reuse the database if it is there, and keep it afterwards"
    )
    p.add_argument("--port", type=int, default=0, help="HTTP port for the server (default: a free one)")
    p.add_argument(
        "--server",
        default="gunicorn-gthread:2x4",
        help=f"server setup (default: gunicorn-gthread:2x4, the best measured here), one of:\n{SERVER_SETUPS}",
    )
    p.add_argument(
        "--compare",
        nargs="?",
        const="gunicorn-sync:2,gunicorn-sync:4,gunicorn-gthread:4x4,uvicorn:2,daphne",
        default="",
        help="also run phases 1-2 for each of these setups (comma-separated), then the main one",
    )
    p.add_argument(
        "--conn-max-age",
        type=int,
        default=None,
        help="CONN_MAX_AGE of the servers (default 60 for WSGI; 0 for ASGI, where Django runs each request's sync\n"
        "code in a thread of its own, so persistent connections pile up)",
    )
    p.add_argument("--accounts", type=int, default=200, help="traders, each with one paper account and one API key")
    p.add_argument("--warmup-seconds", type=float, default=3.0)
    p.add_argument("--probe-concurrency", type=int, default=16, help="requests in flight in the capacity probe")
    p.add_argument("--probe-seconds", type=float, default=6.0)
    p.add_argument("--ramp", default="0.5,0.65,0.8,0.9,1.0,1.1", help="open-loop steps, as fractions of the probe")
    p.add_argument(
        "--disturbed-cores",
        type=float,
        default=0.25,
        help="a step that fails while other processes used more cores than this is run once more",
    )
    p.add_argument(
        "--quiet-wait-s",
        type=float,
        default=20.0,
        help="before each measured stretch, wait up to this long for other processes to leave the cores alone\n"
        "(this machine is shared: the 'other processes' figure on each line says how much they took)",
    )
    p.add_argument("--step-seconds", type=float, default=8.0)
    p.add_argument("--max-p99-ms", type=float, default=500.0, help="a sustained step keeps p99 under this")
    p.add_argument("--max-lag-s", type=float, default=0.5, help="... and answers the last arrival within this")
    p.add_argument("--rate", type=float, default=300.0, help="arrival rate of the latency phase (orders/s)")
    p.add_argument("--latency-seconds", type=float, default=15.0)
    p.add_argument("--max-connections", type=int, default=64, help="client connections at most (open loop)")
    p.add_argument("--patience-s", type=float, default=15.0, help="abandon answers this late after the last arrival")
    p.add_argument("--skip-api", action="store_true", help="skip phases 1-2")
    p.add_argument("--skip-max", action="store_true", help="skip phase 1")
    p.add_argument("--scheduled", type=int, default=500, help="scheduled orders due in the same second (0: skip)")
    p.add_argument("--scheduled-accounts", type=int, default=100)
    p.add_argument("--worker-concurrency", type=int, default=2)
    p.add_argument("--worker-pool", default="prefork", help="Celery pool: prefork or threads")
    p.add_argument("--dispatcher", choices=("beat", "loop"), default="beat")
    p.add_argument("--dispatch-interval-s", type=float, default=1.0, help="SCHEDULE_DISPATCH_INTERVAL_S / loop period")
    p.add_argument("--scheduled-lead-s", type=float, default=20.0, help="seconds from setup to the due time")
    p.add_argument("--scheduled-timeout-s", type=float, default=120.0, help="give up this long after the due time")
    p.add_argument("--verbose", action="store_true", help="show the servers' output")
    return p.parse_args(argv)


def bench_env(args) -> dict[str, str]:
    """The environment of this process's Django and of every server or worker it starts."""
    return harness.bench_env(
        args,
        CONN_MAX_AGE=str(60 if args.conn_max_age is None else args.conn_max_age),
        CELERY_LOG_LEVEL="WARNING",
        CELERY_QUEUE="bench_orders",
        CACHE_KEY_PREFIX="benchorders",
        SCHEDULE_DISPATCH_INTERVAL_S=str(args.dispatch_interval_s),
    )


# --- Database and fixtures -----------------------------------------------------------------------


def prepare_database(args) -> bool:
    """Create the bench database; returns whether an existing one was kept."""
    conn = harness.mysql_connect(args.mysql)
    try:
        cur = conn.cursor()
        cur.execute("SHOW DATABASES LIKE %s", (args.db_name,))
        exists = cur.fetchone() is not None
        if exists and args.keep_db:
            return True
        cur.execute(f"DROP DATABASE IF EXISTS `{args.db_name}`")
        cur.execute(f"CREATE DATABASE `{args.db_name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return False
    finally:
        conn.close()


def drop_database(args) -> None:
    conn = harness.mysql_connect(args.mysql)
    try:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{args.db_name}`")
    finally:
        conn.close()


def mysql_settings(args) -> dict[str, str]:
    conn = harness.mysql_connect(args.mysql)
    try:
        cur = conn.cursor()
        names = ("innodb_flush_log_at_trx_commit", "sync_binlog", "log_bin", "innodb_buffer_pool_size", "version")
        cur.execute("SHOW VARIABLES")
        return {name: value for name, value in cur.fetchall() if name in names}
    finally:
        conn.close()


@dataclass
class Trader:
    user_id: int
    account_id: int
    key: str


def seed(args) -> list[Trader]:
    """Migrate, load instruments, and create (or find) the traders, accounts, keys and paper clients."""
    from django.core.management import call_command
    from django.db import connection

    from bench import seeding

    call_command("migrate", verbosity=0, interactive=False)
    call_command("load_instruments", broker="paper", stdout=io.StringIO())
    traders = []
    keys_path = Path(tempfile.gettempdir()) / f"{args.db_name}_keys.json"
    known = json.loads(keys_path.read_text()) if keys_path.exists() and args.keep_db else {}
    for i in range(args.accounts + (args.scheduled_accounts if args.scheduled else 0)):
        username = f"bench{i:04d}"
        seeded = seeding.paper_trader(
            username=username, client_id=f"BENCH{i:04d}", label=f"Bench {i}", known_key=known.get(username)
        )
        known[username] = seeded.key
        traders.append(Trader(seeded.user_id, seeded.account_id, seeded.key))
    keys_path.touch(mode=0o600)
    keys_path.write_text(json.dumps(known))
    seeding.fund_paper_clients("BENCH")
    connection.close()
    return traders


def instruments() -> list[tuple[str, str, int]]:
    """What the orders are for: every instrument still traded (not an expired contract)."""
    from brokers.selectors import instruments_tradable

    return [(i.exchange, i.tradingsymbol, i.lot_size) for i in instruments_tradable().order_by("pk")]


# --- Verification ----------------------------------------------------------------------------------


# An order the exchange took: SUBMITTED by its answer, or already OPEN or FILLED by its own update.
TAKEN = ("SUBMITTED", "OPEN", "PARTIALLY_FILLED", "FILLED")


@dataclass
class Verdict:
    answered: int  # requests that got a 2xx
    orders: int  # Order rows for the phase's keys (answered or not)
    lost: int  # answered keys with no Order
    duplicated: int  # keys with more than one Order, or references with more than one PaperOrder
    not_at_exchange: int  # Orders with no PaperOrder for their reference
    statuses: dict

    @property
    def ok(self) -> bool:
        not_submitted = self.orders - sum(self.statuses.get(status, 0) for status in TAKEN)
        return not (self.lost or self.duplicated or self.not_at_exchange or not_submitted)

    def line(self) -> str:
        return (
            f"answered {self.answered}, orders {self.orders} {self.statuses}, lost {self.lost}, "
            f"duplicated {self.duplicated}, not at the exchange {self.not_at_exchange}"
        )


def verify(prefix: str, answered_keys: set[str], *, bare: bool = False) -> Verdict:
    """Count Orders per idempotency key and PaperOrders per reference for the keys ``{prefix}*``
    (``bare``: the yardstick endpoint's orders, matched in memory, have no PaperOrder)."""
    from django.db import OperationalError

    for attempt in range(10):
        try:
            return _verify(prefix, answered_keys, bare)
        except OperationalError:  # e.g. too many connections for a moment on this shared server
            if attempt == 9:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def _verify(prefix: str, answered_keys: set[str], bare: bool) -> Verdict:
    from collections import Counter

    from django.db import connection
    from django.db.models import Count

    from brokers.paper.models import PaperOrder
    from orders.models import Order

    rows = list(
        Order.objects.filter(idempotency_key__contains=f":api:{prefix}").values_list(
            "idempotency_key", "reference", "status"
        )
    )
    per_key = Counter(key.split(":api:", 1)[1] for key, _, _ in rows)
    references = [reference for _, reference, _ in rows]
    paper = Counter()
    for start in range(0, 0 if bare else len(references), 2000):
        chunk = references[start : start + 2000]
        for tag, n in PaperOrder.objects.filter(tag__in=chunk).values_list("tag").annotate(n=Count("id")):
            paper[tag] += n
    connection.close()
    return Verdict(
        answered=len(answered_keys),
        orders=len(rows),
        lost=sum(1 for key in answered_keys if key not in per_key),
        duplicated=sum(1 for n in per_key.values() if n > 1) + sum(1 for n in paper.values() if n > 1),
        not_at_exchange=0 if bare else sum(1 for r in references if r not in paper),
        statuses=dict(Counter(status for _, _, status in rows)),
    )


# --- Processes and CPU accounting ---------------------------------------------------------------------


def wait_idle(pid: int, *, below: float = 0.05, timeout: float = 60.0) -> None:
    """Wait until the server's processes use less than ``below`` cores over 0.5 s (queued work is done)."""
    deadline = time.monotonic() + timeout
    previous = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = tree_cpu_seconds(pid)
        if current - previous < below * 0.5:
            return
        previous = current


SERVER_SETUPS = """\
gunicorn-sync:W        gunicorn, W sync (prefork) workers, WSGI
gunicorn-gthread:WxT   gunicorn, W workers of T threads each, WSGI
uvicorn:W              uvicorn (uvloop, httptools), W workers, ASGI
daphne                 daphne, one process, ASGI (what bin/web runs)
bare/<gunicorn setup>  the issue's yardstick, not the platform: bench/bare_endpoint.py (a bare
                       Django view that matches in-process and inserts one Order) on that setup"""


def server_command(setup: str, port: int) -> list[str]:
    bare = setup.startswith("bare/")
    kind, _, size = setup.removeprefix("bare/").partition(":")
    if bare and not kind.startswith("gunicorn"):
        raise SystemExit(f"{setup}: the bare endpoint is WSGI, served by gunicorn")
    py, bind = sys.executable, f"{HOST}:{port}"
    app = "bench.bare_endpoint:application" if bare else "tradingplatform.wsgi:application"
    gunicorn = [py, "-m", "gunicorn", app, "-b", bind, "--backlog", "2048"]
    if kind == "gunicorn-sync":
        return [*gunicorn, "-w", str(int(size or 4)), "--no-control-socket"]
    if kind == "gunicorn-gthread":
        workers, _, threads = (size or "2x4").partition("x")
        return [*gunicorn, "-k", "gthread", "-w", workers, "--threads", threads or "4", "--no-control-socket"]
    if kind == "uvicorn":
        return [
            *(py, "-m", "uvicorn", "tradingplatform.asgi:application", "--host", HOST, "--port", str(port)),
            *("--workers", str(int(size or 2)), "--no-access-log", "--log-level", "warning", "--lifespan", "off"),
            *("--loop", "uvloop", "--http", "httptools", "--backlog", "2048"),
        ]
    if kind == "daphne":
        return [py, "-m", "daphne", "-b", HOST, "-p", str(port), "tradingplatform.asgi:application"]
    raise SystemExit(f"unknown server setup {setup!r}; one of:\n{SERVER_SETUPS}")


def start_server(setup: str, port: int, env: dict[str, str], verbose: bool) -> Managed:
    name = setup.replace(":", "_").replace("/", "_")
    server = Managed(name, server_command(setup, port), env, verbose, stop_timeout=20.0)
    return wait_healthz(server, port, setup)


# --- HTTP load generator ----------------------------------------------------------------------------


class Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """Send one request; returns (status, body, whether the server keeps the connection open)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            return status, await self.reader.read(), False
        keep = headers.get("connection", "").lower() != "close" and not lines[0].startswith("HTTP/1.0")
        return status, body, keep

    def close(self) -> None:
        self.writer.close()


class Pool:
    """At most ``limit`` keep-alive connections; a request waits for a free one."""

    def __init__(self, port: int, limit: int):
        self.port = port
        self.idle: list[Connection] = []
        self.slots = asyncio.Semaphore(limit)
        self.retried = 0

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """One request. A kept-alive connection the server closed meanwhile (its keep-alive timeout) is
        retried once on a new connection, as HTTP clients do: safe here, as every request carries an
        Idempotency-Key (and the database check would catch a duplicate)."""
        async with self.slots:
            reused = bool(self.idle)
            conn = self.idle.pop() if reused else await Connection.open(self.port)
            try:
                status, body, keep = await conn.exchange(data)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                    raise
                self.retried += 1
                conn = await Connection.open(self.port)
                try:
                    status, body, keep = await conn.exchange(data)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                conn.close()
                raise
            (self.idle.append if keep else lambda c: c.close())(conn)
            return status, body

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class OrderMaker:
    """Order requests: MARKET, one lot, random instrument, round-robin over the traders, sides alternating."""

    def __init__(self, traders: list[Trader], symbols: list[tuple[str, str, int]], run_id: str):
        self.traders = traders
        self.symbols = symbols
        self.run_id = run_id
        self.rng = random.Random(7)

    def make(self, phase: str, i: int) -> tuple[str, bytes]:
        trader = self.traders[i % len(self.traders)]
        exchange, symbol, lot = self.symbols[self.rng.randrange(len(self.symbols))]
        side = "BUY" if (i // len(self.traders)) % 2 == 0 else "SELL"
        body = json.dumps(
            {
                "account_id": trader.account_id,
                "exchange": exchange,
                "tradingsymbol": symbol,
                "side": side,
                "quantity": lot,
                "order_type": "MARKET",
                "product": "MIS",
            }
        ).encode()
        key = f"{self.run_id}-{phase}-{i}"
        head = (
            f"POST /api/v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {trader.key}\r\n"
            f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return key, head.encode() + body


@dataclass
class LoadResult:
    label: str
    offered_rate: float = 0.0  # 0: closed loop
    sent: int = 0
    ok_keys: set = field(default_factory=set)
    errors: dict = field(default_factory=dict)
    latencies_ms: list = field(default_factory=list)  # orders placed; the other requests count as infinite
    first_due: float = 0.0
    last_due: float = 0.0
    last_done: float = 0.0
    cpu: CpuUse = field(default_factory=lambda: NO_CPU)
    retried: int = 0  # requests sent again after a stale keep-alive connection

    @property
    def ok(self) -> int:
        return len(self.ok_keys)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def achieved_rate(self) -> float:
        span = self.last_done - self.first_due
        return self.ok / span if span > 0 else 0.0

    @property
    def lag_s(self) -> float:
        return self.last_done - self.last_due

    def pct(self, q: float) -> float:
        values = sorted(self.latencies_ms) + [float("inf")] * (self.sent - len(self.latencies_ms))
        return percentile(values, q)

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


async def _one(pool: Pool, key: str, data: bytes, due: float, result: LoadResult, loop) -> None:
    try:
        status, body = await pool.request(data)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        result.error(type(exc).__name__)
        return
    done = loop.time()
    result.last_done = max(result.last_done, done)
    if status not in (200, 201):
        result.error(f"HTTP {status}: {body[:100].decode(errors='replace')}")
        return
    order = json.loads(body)
    if order.get("status") not in TAKEN:
        result.error(f"2xx with status {order.get('status')}: {order.get('reject_reason', '')[:60]}")
    elif not order.get("broker_order_id"):
        result.error("2xx but no broker order id (the broker's answer was lost)")
    else:
        # Only an order placed has a latency: a quick refusal or error is no fast order (it counts
        # as infinitely late, as an unanswered request does).
        result.latencies_ms.append((done - due) * 1000)
        result.ok_keys.add(key)


async def open_loop(port, maker, phase, rate, seconds, limit, server_pid, patience_s) -> LoadResult:
    """Send ``rate * seconds`` requests at fixed arrival times, whatever the server's pace.

    Requests still unanswered ``patience_s`` after the last arrival are abandoned (and count
    as errors with infinite latency).
    """
    loop = asyncio.get_running_loop()
    n = max(1, int(rate * seconds))
    requests = [maker.make(phase, i) for i in range(n)]
    pool = Pool(port, limit)
    result = LoadResult(f"open loop {rate:.0f}/s", offered_rate=rate, sent=n)
    meter = CpuMeter({"server": server_pid}, own="load generator")
    start = loop.time() + 0.05
    result.first_due = result.last_done = start
    tasks = []
    for i, (key, data) in enumerate(requests):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(pool, key, data, due, result, loop)))
    result.last_due = start + (n - 1) / rate
    _, pending = await asyncio.wait(tasks, timeout=max(0.1, result.last_due + patience_s - loop.time()))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
        result.errors[f"no answer within {patience_s:.0f} s of the last arrival"] = len(pending)
    result.cpu = meter.stop()
    result.retried = pool.retried
    pool.close()
    return result


async def closed_loop(port, maker, phase, concurrency, seconds, server_pid) -> LoadResult:
    """``concurrency`` requests always in flight for ``seconds``; latency from each send."""
    loop = asyncio.get_running_loop()
    pool = Pool(port, concurrency)
    result = LoadResult(f"closed loop x{concurrency}")
    counter = iter(range(10**9))
    meter = CpuMeter({"server": server_pid}, own="load generator")
    start = loop.time()
    end = start + seconds
    result.first_due = result.last_done = start

    async def worker():
        while loop.time() < end:
            key, data = maker.make(phase, next(counter))
            result.sent += 1
            await _one(pool, key, data, loop.time(), result, loop)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.last_due = end
    result.cpu = meter.stop()
    result.retried = pool.retried
    pool.close()
    return result


def describe(setup: str, r: LoadResult, v: Verdict) -> str:
    ms = lambda x: "inf" if math.isinf(x) else f"{x:.1f}"  # noqa: E731
    line = (
        f"# {setup} {r.label}: sent {r.sent}, ok {r.ok}, errors {r.error_count}; achieved {r.achieved_rate:.0f}/s; "
        f"latency p50 {ms(r.pct(0.5))} p90 {ms(r.pct(0.9))} p99 {ms(r.pct(0.99))} max {ms(r.pct(1.0))} ms; "
        f"lag {r.lag_s:.2f} s\n#     {r.cpu.line()}"
    )
    if r.ok:
        cpu_ms = (r.cpu.cores("server") + r.cpu.cores("mariadb")) * (r.last_done - r.first_due) / r.ok * 1000
        line += f"; server+mariadb cpu per order {cpu_ms:.1f} ms"
    if r.retried:
        line += f"; {r.retried} sent again after the server closed an idle connection"
    if r.errors:
        line += "\n#     errors: " + "; ".join(f"{n} x {what}" for what, n in list(r.errors.items())[:4])
    if not v.ok:
        line += f"\n#     database check FAILED: {v.line()}"
    return line


# --- Phases 1 and 2 ------------------------------------------------------------------------------


@dataclass
class ApiFigures:
    setup: str
    max_rate: float = float("nan")
    capacity: float = float("nan")
    at_max: str = ""
    p50: float = float("nan")
    p99: float = float("nan")
    clean_at_rate: bool = False
    cpu_per_order_ms: float = float("nan")


def run_api(args, env, setup: str, traders: list[Trader], symbols, run_id: str) -> ApiFigures:
    flush_redis(args.redis_url)
    asgi = setup.startswith(("uvicorn", "daphne"))
    env = {**env, "CONN_MAX_AGE": str(args.conn_max_age if args.conn_max_age is not None else (0 if asgi else 60))}
    port = args.port or free_port()
    maker = OrderMaker(traders, symbols, f"{run_id}{setup.replace(':', '').replace('-', '')}")
    server = start_server(setup, port, env, args.verbose)
    figures = ApiFigures(setup)
    print(f"# --- {setup} on port {port}, CONN_MAX_AGE={env['CONN_MAX_AGE']} ---", flush=True)
    phases = iter(range(1000))
    patience = args.patience_s

    def run(coro_factory, *a) -> tuple[LoadResult, Verdict]:
        phase = f"p{next(phases)}"
        if args.quiet_wait_s > 0:
            wait_quiet(args.quiet_wait_s, [server.proc.pid])
        result = asyncio.run(coro_factory(port, maker, phase, *a))
        wait_idle(server.proc.pid)
        verdict = verify(f"{maker.run_id}-{phase}-", result.ok_keys, bare=setup.startswith("bare/"))
        print(describe(setup, result, verdict), flush=True)
        if not server.alive():
            raise SystemExit(f"{setup} died:\n{server.tail()}")
        return result, verdict

    try:
        # Every worker imports and connects on its first requests: not part of any figure.
        run(closed_loop, 4, args.warmup_seconds, server.proc.pid)
        if not args.skip_max:
            probe, _ = run(closed_loop, args.probe_concurrency, args.probe_seconds, server.proc.pid)
            figures.capacity = probe.achieved_rate
            figures.max_rate = 0.0
            tried = set()
            failed_in_a_row, first_failed = 0, None
            for fraction in (float(x) for x in args.ramp.split(",")):
                step = 5 if figures.capacity >= 100 else 1
                rate = float(max(step, round(figures.capacity * fraction / step) * step))
                if rate in tried:
                    continue
                tried.add(rate)
                for attempt in (1, 2):
                    result, verdict = run(
                        open_loop, rate, args.step_seconds, args.max_connections, server.proc.pid, patience
                    )
                    reasons = [
                        text
                        for bad, text in (
                            (result.error_count, f"{result.error_count} errors"),
                            (not verdict.ok, "database check failed"),
                            (result.pct(0.99) > args.max_p99_ms, f"p99 above {args.max_p99_ms:.0f} ms"),
                            (result.lag_s > args.max_lag_s, f"lag above {args.max_lag_s} s"),
                        )
                        if bad
                    ]
                    if not reasons:
                        break
                    disturbed = result.cpu.other > args.disturbed_cores
                    print(
                        f"#     not sustained at {rate:.0f}/s: {', '.join(reasons)}"
                        + (" (other processes were busy: once more)" if disturbed and attempt == 1 else "")
                    )
                    if not disturbed:
                        break
                if reasons:
                    first_failed = first_failed or rate
                    failed_in_a_row += 1
                    if failed_in_a_row >= 2:
                        break
                    continue
                failed_in_a_row = 0
                if first_failed is not None:
                    # Not sustained: a lower rate failed (errors, a lost or doubled order, too slow).
                    print(f"#     passed at {rate:.0f}/s, but {first_failed:.0f}/s failed: not counted")
                    continue
                if result.achieved_rate > figures.max_rate:
                    figures.max_rate = result.achieved_rate
                    figures.at_max = f"p50 {result.pct(0.5):.1f} ms, p99 {result.pct(0.99):.1f} ms there"
        result, verdict = run(
            open_loop, args.rate, args.latency_seconds, args.max_connections, server.proc.pid, patience
        )
        figures.p50, figures.p99 = result.pct(0.50), result.pct(0.99)
        figures.clean_at_rate = result.error_count == 0 and verdict.ok
        if result.ok:
            span = result.last_done - result.first_due
            figures.cpu_per_order_ms = (
                (result.cpu.cores("server") + result.cpu.cores("mariadb")) * span / result.ok * 1000
            )
    finally:
        server.stop()
    return figures


# --- Phase 3: scheduled orders ------------------------------------------------------------------


def scheduled_write(accounts, count: int, due, *, seed: int) -> list[int]:
    """``count`` one-off scheduled MARKET orders of one lot due at ``due`` (IST), on ``accounts`` in
    turn, BUY and SELL by turns, on random tradable instruments: their ids."""
    from accounts.models import User
    from brokers.selectors import instruments_tradable
    from orders import sources

    owners = {u.pk: u for u in User.objects.filter(pk__in=[a.owner_id for a in accounts])}
    symbols = list(instruments_tradable().order_by("pk"))
    rng = random.Random(seed)
    created = []
    for i in range(count):
        account, instrument = accounts[i % len(accounts)], symbols[rng.randrange(len(symbols))]
        spec = {
            "instrument": instrument,
            "side": "BUY" if i % 2 == 0 else "SELL",
            "quantity": instrument.lot_size,
            "order_type": "MARKET",
            "product": "MIS",
            "price": None,
            "trigger_price": None,
            "validity": "DAY",
        }
        row = sources.scheduled_save(
            owner=owners[account.owner_id],
            account=account,
            spec=spec,
            recurrence="once",
            time_of_day=due.time(),
            timezone_name="Asia/Kolkata",
            run_on=due.date(),
        )
        created.append(row.pk)
    return created


def run_scheduled(args, env, traders: list[Trader]) -> tuple[float, float]:
    from zoneinfo import ZoneInfo

    from django.db import connection
    from django.db.models import Count
    from django.utils import timezone

    from accounts.models import BrokerAccount
    from orders.models import OrderEvent, ScheduledFire, ScheduledOrder
    from orders.tasks import dispatch_due

    flush_redis(args.redis_url)
    celery = [sys.executable, "-m", "celery", "-A", "tradingplatform"]
    worker_cmd = [
        *celery,
        *("worker", "--loglevel", "WARNING", "--concurrency", str(args.worker_concurrency)),
        *("--pool", args.worker_pool, "-n", f"bench-{os.getpid()}@%h", "-Q", env["CELERY_QUEUE"]),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]
    schedule_file = Path(tempfile.gettempdir()) / f"bench_beat_{os.getpid()}"
    beat_cmd = [*celery, "beat", "--loglevel", "WARNING", "-s", str(schedule_file)]

    # Earlier runs' leftovers must not fire now.
    ScheduledOrder.objects.filter(status=ScheduledOrder.Status.ACTIVE).update(
        status=ScheduledOrder.Status.CANCELLED, next_run_at=None
    )
    accounts = list(BrokerAccount.objects.filter(pk__in=[t.account_id for t in traders]).order_by("pk"))
    connection.close()

    # The worker (and beat) first, so that the due time finds them running.
    worker_name = f"bench-{os.getpid()}@{socket.gethostname()}"
    procs = [Managed("worker", worker_cmd, env, args.verbose, stop_timeout=20.0)]
    if args.dispatcher == "beat":
        procs.append(Managed("beat", beat_cmd, env, args.verbose, stop_timeout=20.0))
    try:
        from tradingplatform.celery import app

        ready_by = time.monotonic() + 90
        while not app.control.ping(destination=[worker_name], timeout=0.5):
            if time.monotonic() > ready_by or not procs[0].alive():
                raise SystemExit(f"the Celery worker did not start:\n{procs[0].tail()}")

        # The due time: a whole second, far enough ahead for the rows to be written.
        zone = ZoneInfo("Asia/Kolkata")
        due = (timezone.now() + timedelta(seconds=args.scheduled_lead_s)).astimezone(zone).replace(microsecond=0)
        created = scheduled_write(accounts, args.scheduled, due, seed=11)
        connection.close()
        remaining = (due - timezone.now()).total_seconds()
        print(
            f"# scheduled: {len(created)} orders on {len(accounts)} accounts due at {due:%H:%M:%S} "
            f"(in {remaining:.1f} s); worker {args.worker_pool} x{args.worker_concurrency}, dispatcher "
            + (
                f"celery beat (SCHEDULE_DISPATCH_INTERVAL_S={args.dispatch_interval_s})"
                if args.dispatcher == "beat"
                else f"loop in this script every {args.dispatch_interval_s} s"
            ),
            flush=True,
        )
        if remaining < 1:
            raise SystemExit("setup took too long for the due time; raise --scheduled-lead-s")

        deadline = due + timedelta(seconds=args.scheduled_timeout_s)
        meter = None
        claim_ms = []
        while timezone.now() < deadline:
            for p in procs:
                if not p.alive():
                    raise SystemExit(f"{p.name} exited:\n{p.tail()}")
            now = timezone.now()
            if meter is None and now >= due - timedelta(seconds=0.5):
                meter = CpuMeter({"server": procs[0].proc.pid}, own="load generator")
            if now >= due:
                if args.dispatcher == "loop":
                    t = time.perf_counter()
                    if dispatch_due():  # the body of dispatch_scheduled, without its once-per-interval lock
                        claim_ms.append((time.perf_counter() - t) * 1000)
                done = (
                    ScheduledFire.objects.filter(scheduled_id__in=created)
                    # A fire a worker is still placing is not done: stopping the worker now would cut it off.
                    .exclude(status__in=[*ScheduledFire.WAITING, ScheduledFire.Status.PLACING])
                    .count()
                )
                if done >= len(created):
                    break
                time.sleep(args.dispatch_interval_s if args.dispatcher == "loop" else 0.2)
            else:
                time.sleep(max(0.0005, min(0.2, (due - now).total_seconds())))
        cpu = meter.stop() if meter else NO_CPU
        took = (timezone.now() - due).total_seconds()
    finally:
        for p in procs:
            p.stop()
        with contextlib.suppress(OSError):
            schedule_file.unlink()
    claimed = ScheduledFire.objects.filter(scheduled_id__in=created).values_list("claimed_at", flat=True)
    claimed = sorted((at - due).total_seconds() * 1000 for at in claimed)
    if claimed:
        print(
            f"# scheduled: claimed (ScheduledFire rows written) from +{claimed[0]:.0f} to +{claimed[-1]:.0f} ms"
            + (f"; the claim call took {sum(claim_ms):.0f} ms" if claim_ms else "")
        )
    statuses = dict(
        ScheduledFire.objects.filter(scheduled_id__in=created)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    elsewhen = ScheduledFire.objects.filter(scheduled_id__in=created).exclude(due_at=due).count()
    written = OrderEvent.objects.filter(order__scheduled_id__in=created, kind="created")
    prepared = written.filter(created_at__lt=due).count()
    check = scheduled_check(created, due)
    connection.close()
    lateness = check.lateness_ms
    print(
        f"# scheduled: fires {statuses}; {prepared} orders written ahead of their time (prepared); "
        f"orders {check.orders} {check.statuses}; at the exchange {len(created) - check.missing}/{len(created)}, "
        f"first +{lateness[0]:.0f} ms, last +{lateness[-1]:.0f} ms after their time; the platform recorded "
        f"the exchange's answers up to +{check.recorded_last_ms:.0f} ms; {took:.1f} s until all were done\n"
        f"#     {cpu.line().replace('server', 'celery worker')}",
        flush=True,
    )
    problems = [
        text
        for bad, text in (
            (check.twice, f"{check.twice} placed twice (two orders, or two exchange orders for one reference)"),
            (check.missing, f"{check.missing} never at the exchange or refused there (counted infinitely late)"),
            (check.early, f"{check.early} at the exchange before their time"),
            (elsewhen, f"{elsewhen} fires due at another time than {due:%H:%M:%S}"),
        )
        if bad
    ]
    if problems:
        print(f"# scheduled: check FAILED: {'; '.join(problems)}", flush=True)
    return percentile(lateness, 0.50), percentile(lateness, 0.99)


@dataclass
class ScheduledCheck:
    lateness_ms: list  # per scheduled order, sorted: its order's receipt at the exchange less the due time
    orders: int  # the platform's orders of the scheduled orders
    statuses: dict  # ... by status
    twice: int  # scheduled orders with two orders or more, and references with two exchange orders or more
    missing: int  # scheduled orders with no order the exchange took (inf in lateness_ms)
    early: int  # orders the exchange received before the due time
    recorded_last_ms: float  # the latest answer the platform recorded, after the due time


def scheduled_check(created: list[int], due) -> ScheduledCheck:
    """Each scheduled order's lateness: the time its order reached the paper exchange (the
    ``PaperOrder`` of its reference: ``placed_at``, the exchange's receipt) less ``due``; infinite
    for one with no order the exchange took (none, refused there). Counted per scheduled order, so
    one placed twice cannot stand in for one never placed."""
    from collections import Counter

    from django.db.models import Min

    from brokers.paper.models import PaperOrder
    from orders.models import Order, OrderEvent

    orders = list(Order.objects.filter(scheduled_id__in=created).values_list("scheduled_id", "reference", "status"))
    per_scheduled = Counter(scheduled_id for scheduled_id, _, _ in orders)
    references = [reference for _, reference, _ in orders]
    at_exchange: dict[str, list] = {}
    for start in range(0, len(references), 2000):
        chunk = references[start : start + 2000]
        rows = PaperOrder.objects.filter(tag__in=chunk).values_list("tag", "placed_at", "status")
        for tag, placed_at, status in rows:
            at_exchange.setdefault(tag, []).append((placed_at, status))
    received: dict[int, object] = {}
    for scheduled_id, reference, _ in orders:
        for placed_at, status in at_exchange.get(reference, ()):
            if status != PaperOrder.Status.REJECTED:
                received[scheduled_id] = min(received.get(scheduled_id, placed_at), placed_at)
    lateness = sorted((received[pk] - due).total_seconds() * 1000 if pk in received else float("inf") for pk in created)
    recorded = (
        OrderEvent.objects.filter(order__scheduled_id__in=created, to_status__in=TAKEN)
        .values("order_id")
        .annotate(at=Min("created_at"))
        .values_list("at", flat=True)
    )
    return ScheduledCheck(
        lateness_ms=lateness,
        orders=len(orders),
        statuses=dict(Counter(status for _, _, status in orders)),
        twice=sum(n > 1 for n in per_scheduled.values()) + sum(len(rows) > 1 for rows in at_exchange.values()),
        missing=sum(1 for pk in created if pk not in received),
        early=sum(1 for at in received.values() if at < due),
        recorded_last_ms=max(((at - due).total_seconds() * 1000 for at in recorded), default=float("nan")),
    )


# --- Main -----------------------------------------------------------------------------------------


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    env = bench_env(args)
    setups = [s for s in [*args.compare.split(","), args.server] if s]
    setups = list(dict.fromkeys(setups))  # the main setup last, once
    setups.remove(args.server)
    setups.append(args.server)
    for setup in setups if not args.skip_api else []:
        module = setup.removeprefix("bare/").split("-")[0].split(":")[0]
        if importlib.util.find_spec(module) is None:
            raise SystemExit(f"{setup} needs {module}: pip install {module}")
    harness.require_durable(args.mysql)  # the figures are of durable commits: measure nothing otherwise
    kept = prepare_database(args)
    flush_redis(args.redis_url)  # cached broker sessions of an earlier database would skip the logins below
    django_setup(env)
    t0 = time.monotonic()
    traders = seed(args)
    symbols = instruments()
    db = mysql_settings(args)
    print(
        f"# MariaDB {db.get('version')}: innodb_flush_log_at_trx_commit={db.get('innodb_flush_log_at_trx_commit')}, "
        f"sync_binlog={db.get('sync_binlog')}, log_bin={db.get('log_bin')}; {args.accounts} traders/accounts/keys "
        f"for the API (+{len(traders) - args.accounts} for scheduled orders), "
        f"{len(symbols)} instruments, MARKET orders of one lot; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; setup {time.monotonic() - t0:.1f} s" + (" (kept database)" if kept else ""),
        flush=True,
    )
    run_id = f"r{int(time.time())}"
    figures: dict[str, float] = {}
    try:
        if not args.skip_api:
            results = [run_api(args, env, setup, traders[: args.accounts], symbols, run_id) for setup in setups]
            for r in results:
                print(
                    f"# setup {r.setup}: sustained {fmt(r.max_rate, 0)} orders/s ({r.at_max or 'no step passed'}; "
                    f"closed-loop capacity {fmt(r.capacity, 0)}/s); "
                    f"at {args.rate:.0f}/s p50 {fmt(r.p50, 1)} ms, p99 {fmt(r.p99, 1)} ms"
                    f"{'' if r.clean_at_rate else ' (with errors)'}; server+mariadb cpu {fmt(r.cpu_per_order_ms, 1)} "
                    "ms per order"
                )
            main_result = results[-1]
            if not args.skip_max:
                figures["api_max_orders_per_s"] = main_result.max_rate
            # Named after the rate measured: a run at another --rate is not the 300/s figure.
            figures[f"api_p50_ms_at_{args.rate:g}"] = main_result.p50
            figures[f"api_p99_ms_at_{args.rate:g}"] = main_result.p99
        if args.scheduled:
            figures["scheduled_lateness_p50_ms"], figures["scheduled_lateness_p99_ms"] = run_scheduled(
                args, env, traders[args.accounts :]
            )
    finally:
        flush_redis(args.redis_url)
        if not args.keep_db:
            drop_database(args)
    for name, value in figures.items():
        print(f"{name}: {fmt(value, 0)} 1/s" if name.endswith("per_s") else f"{name}: {fmt(value, 1)} ms")
    return figures


if __name__ == "__main__":
    main()
