"""Benchmark of one monitoring cycle over many paper accounts, with real Celery workers, on MariaDB.

Run from the repository root (MariaDB and Redis must be up; ``--mysql`` / ``--redis-url`` say where):

    python bench/monitoring_cycle.py [--accounts 1000,10000] [--latency-ms 50] [--workers 2]
                                     [--concurrency 4] [--batch 100] [--threads 48] [--timeout 400]
                                     [--py-spy SECONDS] [--help for the rest]

Setup. It creates its own database (``--db-name``, default ``bench_monitoring``; dropped at the end
unless ``--keep-db``), migrates it and loads the platform's instruments from the paper exchange.
For each size in ``--accounts`` it creates a fresh group of traders, each with one paper broker
account, the paper exchange's client (cash enough for anything, ``latency_ms`` = ``--latency-ms``
added to every broker call), a real access token (``engine.session_open``) and a live
``BrokerSession`` holding it sealed, and its opening marked taken (as after its first run ever:
``portfolio/openings.py``); users, accounts, clients and sessions are bulk-inserted. One
account in ``--orders-every`` (default 5) gets one MARKET order (filled at once) and one LIMIT order
resting 10% below the market, placed through ``brokers.paper.engine.order_place``, so the cycle has
fills to record, positions to mark, prices to fetch. Each cycle covers only its own group (the
other groups' accounts are deactivated), so every size is measured in the same state: each
account's first cycle after its orders. The Redis database of ``--redis-url`` (default 7, which
no other bench uses) is flushed before each cycle and at the end; nothing else is touched.

Workers. ``--workers`` Celery worker processes (default 2, one per core) with ``--pool`` threads
and ``--concurrency`` tasks at once each, on a queue of their own, started for each cycle with DEBUG
off and LOG_LEVEL=WARNING; ``start_cycle`` sends one task per ``--batch`` accounts
(MONITORING_BATCH), and each worker process makes its broker calls on up to ``--threads``
threads (MONITORING_THREADS). Each worker process holds up to threads + concurrency database
connections while a cycle runs (MariaDB's max_connections is 151 by default).

Cleanup. Every process it starts (workers, py-spy) runs in its own process group and is stopped
(TERM, then KILL) when the cycle ends, also on an error, Ctrl-C or SIGTERM; its temporary files
are removed, its Redis database flushed and its MariaDB database dropped (unless ``--keep-db``).

Figures (each on its own line as ``name: value unit``; lines starting with ``#`` are context):

- ``cycle_<N>_accounts_s``: from sending ``monitoring.tasks.start_cycle`` to a worker (as beat
  does) to the ``finished_at`` of the last ``AccountRun`` of that run, DB writes included. When
  the cycle is not done within ``--timeout`` seconds the figure is the projected time (the
  fan-out start plus the accounts still to do at the rate measured over the last half of the
  wait), marked ``(projected)`` on a context line with the accounts done per second.
- ``step_share_<step>``: each step's share of the summed ``AccountRun.step_ms`` of the largest
  cycle. Steps done for a whole batch (fetch, PnL) and the query that finds which accounts have
  orders for steps 3-9 record their batch's wall time shared out among its accounts.

Context lines give the cores used by the workers, MariaDB, Redis and everything else on the machine
(it is shared: the other processes' load is part of the conditions), and the CPU per account.
Where the time goes: first (unless ``--no-profile``) ``account_monitor`` runs for one extra account
in this process, counted (SQL statements, Redis commands) and under cProfile; ``--py-spy SECONDS``
samples the workers with py-spy during the largest cycle and prints their Python CPU (samples
holding the GIL) by cycle phase and by kind of work, the paper exchange (which a real broker
runs on its own machines) apart from the platform.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.harness import CpuMeter, flush_redis, start_workers, wait_for_load  # noqa: E402

STEPS = ("1_fetch", "2_pnl", "3_orders", "4_exits", "5_chase", "6_trail", "7_rejections", "8_reentry", "9_retries")


# --- Configuration ---------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    first, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(description=first, epilog=rest, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--accounts", default="1000,10000", help="cycle sizes, comma-separated (one fresh group each)")
    p.add_argument("--latency-ms", type=int, default=50, help="PaperClient.latency_ms: added to every broker call")
    p.add_argument("--orders-every", type=int, default=5, help="every K-th account gets a fill and a resting order")
    p.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    p.add_argument("--pool", default="threads", help="Celery pool of each worker: threads, prefork, solo")
    p.add_argument("--concurrency", type=int, default=4, help="tasks at once per worker (threads or child processes)")
    p.add_argument("--batch", type=int, default=100, help="MONITORING_BATCH: accounts per monitoring task")
    p.add_argument("--threads", type=int, default=48, help="MONITORING_THREADS: broker-call threads per worker process")
    p.add_argument("--conn-max-age", type=int, default=0, help="CONN_MAX_AGE of the workers (the platform's default)")
    p.add_argument("--timeout", type=float, default=400.0, help="stop waiting for a cycle after this many seconds")
    harness.add_database_options(p, db_name="bench_monitoring", redis_db=7)
    harness.add_load_options(p, when="before each cycle")
    p.add_argument(
        "--no-profile", dest="profile", action="store_false", help="skip cProfiling one account_monitor call here"
    )
    p.add_argument("--py-spy", type=float, default=0.0, help="sample the workers with py-spy for this many seconds")
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    return p.parse_args(argv)


def bench_env(args) -> dict[str, str]:
    """The environment of this process's Django and of the workers (secrets derived from the db name)."""
    return harness.bench_env(
        args,
        CONN_MAX_AGE=str(args.conn_max_age),
        MONITORING_BATCH=str(args.batch),
        MONITORING_THREADS=str(args.threads),
        CELERY_QUEUE="bench_monitoring",
        CACHE_KEY_PREFIX="benchmon",
    )


# --- Fixtures ----------------------------------------------------------------------------------------


def seed_group(args, tag: str, n: int) -> dict:
    """``n`` traders with one paper account each, a live session, and (every K-th) a fill and a resting order."""
    from django.contrib.auth.hashers import make_password
    from django.db import connection, transaction
    from django.utils import timezone

    from accounts.crypto import Sealed
    from accounts.models import BrokerAccount, User
    from brokers import services as broker_services
    from brokers.models import BrokerSession
    from brokers.paper import engine
    from brokers.paper.models import PaperClient, PaperInstrument
    from portfolio.models import Opening

    t0 = time.monotonic()
    timings = {}
    unusable = make_password(None)
    names = [f"mon{tag}{i:05d}" for i in range(n)]
    User.objects.bulk_create([User(username=name, password=unusable) for name in names], batch_size=2000)
    users = dict(User.objects.filter(username__in=names).values_list("username", "pk"))
    BrokerAccount.objects.bulk_create(
        [
            BrokerAccount(owner_id=users[name], broker="paper", client_id=name.upper(), label=f"Paper {name}")
            for name in names
        ],
        batch_size=2000,
    )
    accounts = dict(
        BrokerAccount.objects.filter(client_id__in=[x.upper() for x in names]).values_list("client_id", "pk")
    )
    PaperClient.objects.bulk_create(
        [PaperClient(user_id=name.upper(), name=name, cash=Decimal(10**12)) for name in names], batch_size=2000
    )
    clients = {c.user_id: c for c in PaperClient.objects.filter(user_id__in=list(accounts))}
    # Met before (an account's opening is taken once, in its first run ever): the cycle measured is
    # the one every account has from then on.
    day = timezone.now()
    Opening.objects.bulk_create(
        [Opening(account_id=pk, trading_date=day.date(), taken_at=day, outcome="seeded") for pk in accounts.values()],
        batch_size=2000,
    )
    timings["rows"] = time.monotonic() - t0

    # Real access tokens from the exchange, then the platform's sessions holding them sealed.
    t1 = time.monotonic()
    tokens = {}
    ids = sorted(clients)
    for start in range(0, len(ids), 1000):
        with transaction.atomic():
            for client_id in ids[start : start + 1000]:
                tokens[client_id] = engine.session_open(client=clients[client_id])
    now = timezone.now()
    BrokerSession.objects.bulk_create(
        [
            BrokerSession(
                account_id=accounts[client_id],
                tokens=Sealed.seal({"access_token": token, "refresh_token": None}),
                status=BrokerSession.Status.ACTIVE,
                active_for=accounts[client_id],
                broker_user_id=client_id,
                expires_at=expires,
                last_validated_at=now,
            )
            for client_id, (token, expires) in tokens.items()
        ],
        batch_size=2000,
    )
    timings["sessions"] = time.monotonic() - t1

    # Orders, placed at the exchange directly: a filled MARKET BUY and a LIMIT BUY resting 10% below.
    t2 = time.monotonic()
    symbols = list(PaperInstrument.objects.filter(instrument_type="EQ").order_by("pk"))
    # The setup's orders and fills go unannounced: no fast-path runs, applying or recording (the
    # measured cycle does all of it).
    announced = (
        broker_services.account_activity_listeners,
        broker_services.order_update_listeners,
        broker_services.fill_listeners,
    )
    kept = [list(listeners) for listeners in announced]
    for listeners in announced:
        listeners.clear()
    placed = 0
    try:
        with_orders = ids[:: max(1, args.orders_every)]
        for start in range(0, len(with_orders), 250):
            with transaction.atomic():
                for j, client_id in enumerate(with_orders[start : start + 250], start):
                    instrument = symbols[j % len(symbols)]
                    common = {
                        "client": clients[client_id],
                        "exchange": instrument.exchange,
                        "tradingsymbol": instrument.tradingsymbol,
                        "transaction_type": "BUY",
                        "quantity": instrument.lot_size,
                        "product": "MIS",
                    }
                    engine.order_place(**common, order_type="MARKET")
                    limit = engine.round_to_tick(instrument.previous_close * Decimal("0.9"), instrument.tick_size)
                    engine.order_place(**common, order_type="LIMIT", price=limit)
                    placed += 2
    finally:
        from tradingplatform import background

        background.wait_idle()  # the setup's fills are announced after commit, on background threads
        for listeners, saved in zip(announced, kept, strict=True):
            listeners[:] = saved
    PaperClient.objects.filter(user_id__in=ids).update(latency_ms=args.latency_ms)
    timings["orders"] = time.monotonic() - t2
    connection.close()
    return {"tag": tag, "accounts": n, "orders": placed, "seconds": time.monotonic() - t0, "timings": timings}


def activate_only(tag: str) -> int:
    """Leave only this group's accounts active (the cycle covers active accounts with a live session)."""
    from django.db import connection

    from accounts.models import BrokerAccount

    prefix = f"MON{tag.upper()}"
    BrokerAccount.objects.exclude(client_id__startswith=prefix).update(is_active=False)
    active = BrokerAccount.objects.filter(client_id__startswith=prefix).update(is_active=True)
    connection.close()
    return active


# --- Processes and CPU ---------------------------------------------------------------------------------


# --- The cycle -------------------------------------------------------------------------------------------


@dataclass
class CycleResult:
    accounts: int
    done: int = 0
    seconds: float = float("nan")
    projected: bool = False
    rate: float = float("nan")
    first_run_s: float = float("nan")
    statuses: dict = field(default_factory=dict)
    step_ms: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    progress: list = field(default_factory=list)


def run_cycle(args, env, group: dict, spy_seconds: float = 0.0) -> CycleResult:
    from django.db import connection
    from django.db.models import Max

    from monitoring.models import AccountRun, MonitoringRun
    from monitoring.tasks import start_cycle
    from tradingplatform import locks

    active = activate_only(group["tag"])
    flush_redis(args.redis_url)  # cached sessions, rate windows, locks and queued tasks of an earlier cycle
    workers = start_workers(args, env, "benchmon")
    spy = None
    result = CycleResult(accounts=active)
    try:
        load = wait_for_load(args.load_below, args.load_wait_s)
        print(
            f"# cycle of {active} accounts: {args.workers} worker(s) --pool {args.pool} --concurrency "
            f"{args.concurrency}, CONN_MAX_AGE={args.conn_max_age}; load average {load:.2f} before it",
            flush=True,
        )
        locks.redis_client().delete(locks._key("periodic:monitoring.tasks.start_cycle"))
        before = MonitoringRun.objects.aggregate(last=Max("pk"))["last"] or 0
        meter = CpuMeter({"workers": [w.proc.pid for w in workers]}, redis=True)
        sent = time.time()
        start_cycle.apply_async()
        if spy_seconds:
            spy = start_py_spy([w.proc.pid for w in workers], spy_seconds)
        run = None
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            for w in workers:
                if not w.alive():
                    raise SystemExit(f"a Celery worker exited:\n{w.tail()}")
            if run is None:
                run = MonitoringRun.objects.filter(pk__gt=before).order_by("pk").first()
                if run is None:
                    continue
            done = AccountRun.objects.filter(run_id=run.pk).count()
            queued = locks.redis_client().llen(env["CELERY_QUEUE"])
            result.progress.append((time.time() - sent, done, queued))
            connection.close()
            if done >= run.accounts:
                break
        use = meter.stop()
        result.cpu = {name: use.cores(name) for name in use.seconds}
        result.cpu.update(
            wall=use.wall,
            other=use.other,
            workers_cpu_s=use.seconds["workers"],
            mariadb_cpu_s=use.seconds["mariadb"],
        )
        runs = AccountRun.objects.filter(run_id=run.pk) if run else AccountRun.objects.none()
        result.done = runs.count()
        last = runs.aggregate(finished=Max("finished_at"), started=Max("started_at"))
        first = runs.order_by("started_at").values_list("started_at", flat=True).first()
        if first:
            result.first_run_s = first.timestamp() - sent
        if run is not None and result.done >= run.accounts and last["started"]:
            ends = [x for x in (last["finished"], last["started"]) if x]
            result.seconds = max(ends).timestamp() - sent
        else:
            # Not done in time: project from the rate over the second half of the wait.
            points = [p[:2] for p in result.progress if p[0] >= result.progress[-1][0] / 2] if result.progress else []
            if len(points) >= 2 and points[-1][1] > points[0][1]:
                result.rate = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
                result.seconds = points[-1][0] + (active - points[-1][1]) / result.rate
            result.projected = True
        if result.done and not result.projected:
            result.rate = result.done / result.seconds
        result.statuses = dict(Counter(runs.values_list("status", flat=True)))
        sums = defaultdict(float)
        for step_ms, errors in runs.values_list("step_ms", "errors").iterator(chunk_size=2000):
            for name, ms in (step_ms or {}).items():
                sums[name] += ms
            for error in errors or []:
                result.errors[f"{error.get('step')}: {str(error.get('error'))[:90]}"] += 1
        result.step_ms = dict(sums)
        connection.close()
    finally:
        if spy is not None:
            spy_report(spy)
        for w in workers:
            w.stop(timeout=5 if result.projected else 15)
        flush_redis(args.redis_url)
    return result


# --- Where the time goes -------------------------------------------------------------------------------

PLATFORM_DIRS = ("accounts/", "brokers/", "monitoring/", "orders/", "portfolio/", "tradingplatform/")
# Where in a cycle a sample is: the innermost of these platform functions on its stack.
PHASES = [
    ("read", "1_fetch: broker calls (pool threads)"),
    ("_snapshots_save", "1_fetch: BrokerSnapshot upsert"),
    ("_pnl_many", "2_pnl"),
    ("_accounts_with_work", "steps 3-9: which accounts have orders to look at"),
    ("_account_steps", "steps 3-9 for accounts with orders"),
    ("dashboard_push", "dashboard push (dashboard_of, render, send)"),
    ("sessions_live", "sessions of the batch"),
    ("accounts_monitor", "accounts_monitor itself (locks, AccountRun insert, presence)"),
    ("monitor_accounts", "monitor_accounts task (accounts lookup, MonitoringRun update)"),
    ("start_cycle", "start_cycle (run row, fan-out of the tasks)"),
    ("_work", "pool thread (waiting for jobs)"),
]
# What kind of work: the paper exchange (anything under brokers/paper/, which a real broker would do
# on its own machines), else the innermost library frame.
LAYERS = [
    ("django/template/", "templates"),
    ("cryptography/", "Fernet"),
    ("MySQLdb/", "MariaDB client"),
    ("redis/", "Redis client"),
    ("kombu/", "Celery/kombu"),
    ("celery/", "Celery/kombu"),
    ("django/db/", "Django ORM"),
    ("django/", "Django (other)"),
]


def _classify(frames: list[str]) -> tuple[str, str]:
    files = [f.rpartition("(")[2] for f in frames]
    phase = "Celery worker (receive, ack, between tasks)"
    for frame in reversed(frames):
        function = frame.split(" (", 1)[0].rsplit(".", 1)[-1]  # "_fetch_many.<locals>.read" -> "read"
        hit = next((label for needle, label in PHASES if function == needle), None)
        if hit:
            phase = hit
            break
    if any(f.startswith("brokers/paper/") for f in files):
        return phase, "paper exchange (engine, adapter; its queries)"
    for f in reversed(files):
        hit = next((label for needle, label in LAYERS if f.startswith(needle)), None)
        if hit:
            return phase, hit
        if f.startswith(PLATFORM_DIRS):
            return phase, "platform code"
    return phase, "interpreter, threads, other libraries"


def start_py_spy(pids: list[int], seconds: float):
    from shutil import which

    exe = which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("# py-spy not found (pip install py-spy); no sampling")
        return None
    spies = []
    for pid in pids:
        out = tempfile.NamedTemporaryFile(prefix="bench_pyspy_", suffix=".txt", delete=False)  # noqa: SIM115
        out.close()
        cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50"]
        cmd += ["--format", "raw", "--output", out.name, "--subprocesses", "--nonblocking", "--gil"]
        spies.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out.name))  # noqa: S603
    return spies


def spy_report(spies) -> None:
    """The workers' samples holding the GIL (their Python CPU), by cycle phase and by kind of work."""
    phases, layers = Counter(), Counter()
    for proc, path in spies:
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if count.isdigit():
                    phase, layer = _classify(stack.split(";")[1:])
                    phases[phase] += int(count)
                    layers[layer] += int(count)
            if not os.environ.get("BENCH_KEEP_SPY"):
                os.unlink(path)
    total = sum(phases.values())
    if not total:
        print("# py-spy: no samples (ptrace not permitted?)")
        return
    print(f"# py-spy: {total} samples of the workers holding the GIL, by cycle phase:")
    for label, count in phases.most_common():
        print(f"#     {count / total * 100:5.1f} %  {label}")
    print("# py-spy: the same samples by kind of work:")
    for label, count in layers.most_common():
        print(f"#     {count / total * 100:5.1f} %  {label}")


def profile_one(args, tag: str) -> None:
    """Where one ``account_monitor`` call's time goes, in this process (after a warm-up account).

    SQL statements and Redis commands are counted from every thread (the fetch step's too);
    cProfile sees the calling thread only (the fetch threads show as waiting).
    """
    import threading

    import redis
    from django.db import connection
    from django.db.backends import utils as db_utils

    from accounts.models import BrokerAccount
    from monitoring import cycle

    seed_group(args, tag, 2)
    accounts = list(BrokerAccount.objects.select_related("owner").filter(client_id__startswith=f"MON{tag.upper()}"))
    cycle.account_monitor(account=accounts[0])  # imports, templates, connections: not part of the figure

    counts, lock = Counter(), threading.Lock()
    real_execute, real_command = db_utils.CursorWrapper._execute, redis.Redis.execute_command

    def counted_execute(self, sql, *a, **kw):
        started = time.perf_counter()
        try:
            return real_execute(self, sql, *a, **kw)
        finally:
            with lock:
                counts[f"sql {str(sql).split(None, 1)[0].upper()}"] += 1
                counts["sql ms"] += (time.perf_counter() - started) * 1000

    def counted_command(self, *a, **kw):
        started = time.perf_counter()
        try:
            return real_command(self, *a, **kw)
        finally:
            with lock:
                counts["redis commands"] += 1
                counts["redis ms"] += (time.perf_counter() - started) * 1000

    db_utils.CursorWrapper._execute, redis.Redis.execute_command = counted_execute, counted_command
    profiler = cProfile.Profile()
    try:
        runs = []
        for label in ("first cycle (records the fill)", "steady state (nothing new)"):
            counts.clear()
            time.sleep(1.1)  # the account's quote budget is 1/s
            wall, cpu = time.perf_counter(), time.process_time()
            profiler.enable()
            run = cycle.account_monitor(account=accounts[1])
            profiler.disable()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            runs.append((label, wall, cpu, dict(counts), run.step_ms))
    finally:
        db_utils.CursorWrapper._execute, redis.Redis.execute_command = real_execute, real_command
        connection.close()
    for label, wall, cpu, n, step_ms in runs:
        sql = {k[4:]: v for k, v in n.items() if k.startswith("sql ") and k != "sql ms"}
        print(
            f"# profile, one account_monitor in this process, {label}: wall {wall * 1000:.0f} ms, CPU {cpu * 1000:.0f} "
            f"ms (all threads); {sum(sql.values())} SQL statements {sql} taking {n.get('sql ms', 0):.0f} ms; "
            f"{n.get('redis commands', 0)} Redis commands taking {n.get('redis ms', 0):.0f} ms; step_ms {step_ms}"
        )
    stats = pstats.Stats(profiler)
    wanted = {
        "_fetch_many": "step 1 fetch (broker calls on the pool's threads, snapshot upsert)",
        "_pnl_many": "step 2 pnl",
        "accounts_monitor": "accounts_monitor, in all (both calls)",
        "dashboard_push": "dashboard_push (dashboard_of + render + send)",
        "dashboard_of": "  dashboard_of (the dashboard's queries)",
        "render_to_string": "  render_to_string (the dashboard fragment)",
        "bulk_create": "bulk_create (snapshots, PnL points, AccountRun)",
    }
    found = {}
    for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in stats.stats.items():
        if name in wanted and (str(ROOT) + "/" in filename or name in ("bulk_create", "render_to_string")):
            if name == "bulk_create" and "django/db/models/query.py" not in filename:
                continue
            calls, total = found.get(name, (0, 0.0))
            found[name] = (calls + nc, total + ct)
    print("# profile, cumulative time of the two calls (calling thread):")
    for name, text in wanted.items():
        if name in found:
            print(f"#     {found[name][1] * 1000:7.1f} ms  {found[name][0]:3d} calls  {text}")
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(12)
    print("# profile, top functions by own time (calling thread):")
    for line in stream.getvalue().splitlines():
        if line.strip() and ("{" in line or "/" in line):
            short = line.rstrip().replace(str(ROOT) + "/", "").replace(".venv/lib/python3.11/site-packages/", "")
            print("#   " + short[:150])


# --- Main --------------------------------------------------------------------------------------------------


def describe(args, n: int, result: CycleResult) -> None:
    cpu, done = result.cpu, max(1, result.done)
    state = f"NOT DONE within {args.timeout:.0f} s" if result.projected else "done"
    print(
        f"# cycle of {n}: {state}: {result.done}/{n} AccountRuns {result.statuses}; first AccountRun at "
        f"+{result.first_run_s:.1f} s; {result.rate:.1f} accounts/s\n"
        f"#     cores: workers {cpu['workers']:.2f}, mariadb {cpu['mariadb']:.2f}, redis {cpu['redis']:.2f}, "
        f"bench {cpu['bench']:.2f}, other processes {cpu['other']:.2f} (over {cpu['wall']:.1f} s); per account: "
        f"workers {cpu['workers_cpu_s'] / done * 1000:.1f} ms CPU, mariadb {cpu['mariadb_cpu_s'] / done * 1000:.1f} "
        f"ms CPU",
        flush=True,
    )
    if result.progress:
        # Fan-out: start_cycle sends one task per account; it is over when done + queued reaches the
        # accounts, less the tasks the workers hold (at most one per thread or child).
        # start_cycle sends one task per batch; it is over when the batches done, queued and held
        # by the workers (at most one per worker thread or child) cover every account.
        held = args.workers * args.concurrency
        fanned = next((t for t, d, q in result.progress if d + (q + held) * args.batch >= result.accounts), None)
        n = len(result.progress)
        marks = [result.progress[max(0, min(n - 1, round(n * f) - 1))] for f in (0.25, 0.5, 0.75, 1)]
        print(
            "#     progress (s: AccountRuns done): "
            + ", ".join(f"{t:.0f}: {d}" for t, d, _q in marks)
            + "; start_cycle had sent every task by "
            + (f"+{fanned:.1f} s" if fanned is not None else "the end of the wait: not yet")
        )
    if result.step_ms:
        per = {k: v / done for k, v in sorted(result.step_ms.items())}
        print(
            "#     step_ms per account (wall, mean): "
            + ", ".join(f"{k} {v:.1f}" for k, v in per.items())
            + f"; sum {sum(per.values()):.0f} ms"
        )
    if result.errors:
        print("#     errors: " + "; ".join(f"{c} x {e}" for e, c in result.errors.most_common(4)))


def _stop_on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")  # so every ``finally`` stops its processes and cleans up


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    sizes = [int(x) for x in args.accounts.split(",") if x.strip()]
    env = bench_env(args)
    harness.require_durable(args.mysql)  # the figures are of durable commits: measure nothing otherwise
    harness.mysql_exec(
        args.mysql,
        f"DROP DATABASE IF EXISTS `{args.db_name}`",
        f"CREATE DATABASE `{args.db_name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
    )
    flush_redis(args.redis_url)
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    figures: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        call_command("migrate", verbosity=0, interactive=False)
        call_command("load_instruments", broker="paper", stdout=open(os.devnull, "w"))  # noqa: SIM115
        variables = dict(harness.mysql_exec(args.mysql, "SHOW VARIABLES"))
        print(
            f"# MariaDB {variables.get('version')}: innodb_flush_log_at_trx_commit="
            f"{variables.get('innodb_flush_log_at_trx_commit')}, innodb_buffer_pool_size="
            f"{int(variables.get('innodb_buffer_pool_size', 0)) // 2**20} MiB, max_connections="
            f"{variables.get('max_connections')}; {os.cpu_count()} cores; migrated in {time.monotonic() - t0:.1f} s",
            flush=True,
        )
        if args.profile:
            profile_one(args, "p")
        results = {}
        for k, n in enumerate(sizes):
            group = seed_group(args, chr(ord("a") + k), n)
            t = group["timings"]
            print(
                f"# group {group['tag']}: {n} traders/accounts/clients/sessions and {group['orders']} orders (1 in "
                f"{args.orders_every} accounts: 1 filled MARKET + 1 resting LIMIT, fills not yet recorded) in "
                f"{group['seconds']:.1f} s (rows {t['rows']:.1f} s, tokens+sessions {t['sessions']:.1f} s, orders "
                f"{t['orders']:.1f} s); latency_ms={args.latency_ms} on every broker call",
                flush=True,
            )
            results[n] = run_cycle(args, env, group, args.py_spy if k == len(sizes) - 1 else 0.0)
            describe(args, n, results[n])
            figures[f"cycle_{n}_accounts_s"] = results[n].seconds
        largest = results[max(results)]
        total_ms = sum(largest.step_ms.values())
        for n, result in results.items():
            if result.projected:
                print(
                    f"# cycle_{n}_accounts_s is projected: {result.done} of {n} accounts done in {args.timeout:.0f} s "
                    f"at {result.rate:.1f} accounts/s"
                )
        for name, value in figures.items():
            print(f"{name}: {value:.1f} s")
        for step in STEPS:
            if total_ms:
                print(f"step_share_{step}: {largest.step_ms.get(step, 0.0) / total_ms * 100:.1f} %")
    finally:
        from django.db import connections

        connections.close_all()
        flush_redis(args.redis_url)
        if not args.keep_db:
            harness.mysql_exec(args.mysql, f"DROP DATABASE IF EXISTS `{args.db_name}`")
    return figures


if __name__ == "__main__":
    main()
