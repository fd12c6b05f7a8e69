"""Load test: N traders, each with a dashboard websocket open and a steady order flow through the API.

Run from the repository root (MariaDB and Redis up; one command, at most about 8 minutes):

    python bench/load.py [--steps 5,10,20,40,80,160] [--step-seconds 20] [--interval-s 2] [options below]

The stack. The real platform as ``e2e/stack.py`` starts it from the Procfile, as real processes
isolated for this run: daphne (``bin/web``: websockets, and HTTP too), the paper exchange's Kite
face, a Celery worker and Celery beat, on a fresh MariaDB database (``--database-url``, default
``$DATABASE_URL`` or mysql://root@127.0.0.1:3306/) and Redis (``--redis-url``, default ``$REDIS_URL``
or redis://127.0.0.1:6379/0) under the run's own key prefix and queue, free ports, DEBUG off. HTTP
(the API) goes, as in production, to gunicorn (``bin/web-http``, gthread ``--http-workers`` x
``--http-threads``, ``CONN_MAX_AGE=--conn-max-age``), started as one more process of the stack;
``--http daphne`` sends it to daphne instead. ``--attach var/e2e-run/<run id>`` uses a stack that
``python -m e2e.stack`` keeps running (HTTP then goes to its daphne; its traders are left there).
At the end every process is stopped, the database dropped and the run's Redis keys deleted (also
on Ctrl-C or SIGTERM); the processes' logs stay in ``var/e2e-run/<run id>/``.

The traders. ``bench/seeding.py`` (shared with bench/order_api.py) creates each trader: a user
with a paper account connected through the session manager, an API key and a signed-in session.
Each trader opens the dashboard websocket (``/ws/`` with the session cookie and an Origin in
ALLOWED_HOSTS) and keeps it open across steps, and places MARKET orders of one lot on a random
instrument (sides alternating) every ``--interval-s`` through ``POST /api/v1/orders`` with an
``Idempotency-Key``, on its own keep-alive connections; each trader starts at a random phase of
the interval, so arrivals are spread evenly.

Steps. For each N of ``--steps`` (upward), the first N traders run ``--warmup-seconds`` (not
measured) then ``--step-seconds`` (measured). A step passes when every order got a 2xx with a
broker order id, the database holds exactly one order per key and one exchange order per
reference (none lost, none twice, none rejected or failed), order p99 < ``--max-p99-ms`` and
every order's websocket update came, none later than ``--max-ws-lateness-s``. A failing step is
run again ``--retries`` times (the machine may be shared) before it counts as failed; the steps
stop at the first failure, then ``--refine`` bisections between the largest passing and the
smallest failing N (0 when none passed) look for the limit more closely; ``--all-steps`` then
runs the larger steps too, once each, to show the shape past the limit.

Measurement (open loop, no coordinated omission): an order's latency runs from its *scheduled*
send time to its answer, whatever the server's pace; an order unanswered ``--patience-s`` after
the step's last arrival counts as infinitely late. Websocket lateness: from the API's answer to
the first message on the trader's socket carrying the order's row (``id="order-<id>"``, pushed
by ``orders.services._broadcast`` after the commit), 0 when it came before the answer; an
update that has not come ``--ws-wait-s`` after the last answer is missing.

Output: one line per step (``#`` context lines: cores used by each process of the stack,
MariaDB, this load generator and the rest of the machine; warnings and tracebacks the stack
logged), then ``name: value unit`` lines: ``load_max_traders`` (the largest N that passed, 0 if
none), ``load_order_p99_ms_at_max`` and ``load_ws_max_lateness_ms_at_max`` (that step's order
p99 and the latest websocket update).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import seeding  # noqa: E402
from bench.harness import HOST, CpuMeter, dashboard_connect, fmt, free_port, percentile, wait_quiet  # noqa: E402
from bench.order_api import OrderMaker, Pool, instruments, verify  # noqa: E402
from e2e.stack import Stack  # noqa: E402

ORDER_ROW = re.compile(r'id="order-(\d+)"')
GOOD_STATUSES = {"SUBMITTED", "OPEN", "PARTIALLY_FILLED", "FILLED"}
LOG_PROBLEMS = ("Traceback", " ERROR ", " CRITICAL ", " WARNING ")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default="5,10,20,40,80,160", help="trader counts to try, upward (comma-separated)")
    p.add_argument("--step-seconds", type=float, default=20.0, help="measured seconds per step")
    p.add_argument("--warmup-seconds", type=float, default=3.0, help="unmeasured seconds at the start of each step")
    p.add_argument("--interval-s", type=float, default=2.0, help="each trader places one order every this many s")
    p.add_argument("--max-p99-ms", type=float, default=100.0, help="a passing step keeps order p99 under this")
    p.add_argument("--max-ws-lateness-s", type=float, default=1.0, help="... and every update within this")
    p.add_argument("--retries", type=int, default=1, help="run a failing step again this many times")
    p.add_argument("--refine", type=int, default=2, help="bisections between the last passing and first failing N")
    p.add_argument(
        "--all-steps",
        action="store_true",
        help="after the first failing step, run the larger ones too (once each, for the record)",
    )
    p.add_argument("--patience-s", type=float, default=10.0, help="abandon answers this late after the last arrival")
    p.add_argument(
        "--drain-s", type=float, default=60.0, help="after a step, wait up to this long for its orders to settle"
    )
    p.add_argument("--ws-wait-s", type=float, default=5.0, help="wait this long after the last answer for updates")
    p.add_argument("--http", choices=("gunicorn", "daphne"), default="gunicorn", help="what serves the API")
    p.add_argument("--http-workers", type=int, default=2, help="gunicorn workers (HTTP_WORKERS)")
    p.add_argument("--http-threads", type=int, default=4, help="threads per gunicorn worker (HTTP_THREADS)")
    p.add_argument("--conn-max-age", type=int, default=60, help="CONN_MAX_AGE of gunicorn (persistent connections)")
    p.add_argument("--connections-per-trader", type=int, default=4, help="keep-alive connections a trader may open")
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or "mysql://root@127.0.0.1:3306/load",
        help="MariaDB server (a fresh database is created on it and dropped); '' for SQLite",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        help="Redis (the run uses its own key prefix and queue, deleted at the end)",
    )
    p.add_argument("--attach", metavar="RUN_DIR", help="use a running stack (python -m e2e.stack) instead")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for the stack")
    p.add_argument(
        "--quiet-wait-s", type=float, default=0.0, help="before each step, wait up to this long for a quiet machine"
    )
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


# --- Traders and their sockets ----------------------------------------------------------------------


@dataclass
class LoadTrader:
    user_id: int
    account_id: int
    key: str
    cookie: str
    pool: Pool
    ws: object = None
    arrivals: dict = field(default_factory=dict)  # order id -> monotonic time of its first row on the socket
    messages: int = 0
    drops: list = field(default_factory=list)


def seed_traders(start: int, count: int) -> list[seeding.SeededTrader]:
    """Traders ``load<start>`` .. (runs on the Django thread)."""
    from django.db import connection

    try:
        seeded = [
            seeding.paper_trader(username=f"load{i:04d}", client_id=f"LOAD{i:04d}", label=f"Load {i}", login=True)
            for i in range(start, start + count)
        ]
        seeding.fund_paper_clients("LOAD")
        return seeded
    finally:
        connection.close()


async def open_dashboard(ws_port: int, trader: LoadTrader) -> None:
    ws = await dashboard_connect(ws_port, trader.cookie)
    loop = asyncio.get_running_loop()

    async def read():
        try:
            async for text in ws:
                now = loop.time()
                trader.messages += 1
                for match in ORDER_ROW.finditer(text):
                    trader.arrivals.setdefault(int(match.group(1)), now)
        except Exception as error:  # noqa: BLE001  (a dropped socket is reported, not raised)
            trader.drops.append(f"{type(error).__name__}: {error}")
        else:
            trader.drops.append(f"closed by the server ({ws.close_code})")

    trader.ws = ws
    loop.create_task(read())


async def open_dashboards(ws_port: int, traders: list[LoadTrader]) -> int:
    """Open the sockets of the traders without an open one, all at once; retry failures. Returns failures."""

    async def attempt(trader) -> bool:
        try:
            await open_dashboard(ws_port, trader)
        except Exception:  # noqa: BLE001
            return False
        await asyncio.sleep(0.5)
        return trader.ws.state.name == "OPEN"

    todo = [t for t in traders if t.ws is None or t.ws.state.name != "OPEN"]
    failures = 0
    for _ in range(5):
        if not todo:
            break
        results = await asyncio.gather(*(attempt(t) for t in todo))
        failures += results.count(False)
        todo = [t for t, ok in zip(todo, results, strict=True) if not ok]
    if todo:
        raise SystemExit(f"{len(todo)} dashboards would not open (5 attempts)")
    return failures


def settle(prefix: str, timeout_s: float) -> None:
    """Until the orders of keys ``prefix*`` stop appearing and none is NEW (being sent), for 2 s.

    (The server's CPU use is no sign of that on a starved machine: waiting threads use none.)
    """
    from django.db import connection

    from orders.models import Order

    deadline = time.monotonic() + timeout_s
    seen, since = None, time.monotonic()
    try:
        while time.monotonic() < deadline:
            rows = Order.objects.filter(idempotency_key__contains=f":api:{prefix}")
            now = (rows.count(), rows.filter(status=Order.Status.NEW).count())
            if now != seen:
                seen, since = now, time.monotonic()
            elif now[1] == 0 and time.monotonic() - since >= 2:
                return
            time.sleep(0.5)
    finally:
        connection.close()


# --- One step ---------------------------------------------------------------------------------------


@dataclass
class Sent:
    trader: LoadTrader
    key: str
    due: float
    measured: bool
    answered: float | None = None
    order_id: int | None = None
    error: str = ""


@dataclass
class StepResult:
    n: int
    seconds: float
    sent: int = 0
    errors: Counter = field(default_factory=Counter)
    latencies: list = field(default_factory=list)  # ms, sorted, inf for unanswered
    lateness: list = field(default_factory=list)  # ms, sorted, inf for missing
    early: int = 0  # updates that came before the API's answer
    warmup: str = ""  # the warm-up's orders and their errors (not measured)
    drained_s: float = 0.0  # how long until the step's orders settled (abandoned requests done)
    late: int = 0  # later than the limit (missing ones not included)
    missing: int = 0
    drops: int = 0
    db: object = None  # order_api.Verdict
    bad_statuses: int = 0
    cpu: str = ""
    logged: str = ""
    max_p99_ms: float = 0.0

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)

    @property
    def ws_max(self) -> float:
        return self.lateness[-1] if self.lateness else float("nan")

    def reasons(self) -> list[str]:
        checks = [
            (sum(self.errors.values()), f"{sum(self.errors.values())} order errors"),
            (self.db and (self.db.lost or self.db.duplicated or self.db.not_at_exchange), "database check failed"),
            (self.bad_statuses, f"{self.bad_statuses} orders rejected/failed"),
            (not self.p99 < self.max_p99_ms, f"p99 not under {self.max_p99_ms:.0f} ms"),
            (self.late, f"{self.late} updates late"),
            (self.missing, f"{self.missing} updates missing"),
            (self.drops, f"{self.drops} sockets dropped"),
        ]
        return [text for bad, text in checks if bad]

    def line(self, interval_s: float) -> str:
        pct = lambda values, q: fmt(percentile(values, q))  # noqa: E731
        verdict = "PASS" if not self.reasons() else "FAIL (" + ", ".join(self.reasons()) + ")"
        db = self.db.line() if self.db else "not checked"
        return (
            f"step N={self.n}: {self.sent} orders in {self.seconds:.0f} s ({self.n / interval_s:.1f}/s offered); "
            f"order p50 {pct(self.latencies, 0.5)} ms, p99 {pct(self.latencies, 0.99)} ms, "
            f"max {pct(self.latencies, 1.0)} ms; ws lateness p50 {pct(self.lateness, 0.5)} ms, "
            f"p99 {pct(self.lateness, 0.99)} ms, max {pct(self.lateness, 1.0)} ms, later than the limit {self.late}, "
            f"missing {self.missing}; {verdict}\n"
            f"#     errors {dict(self.errors) or 0}; {self.warmup}; {self.early} updates came before the answer; "
            f"sockets dropped {self.drops}; orders settled {self.drained_s:.1f} s after the step; db: {db}\n"
            f"#     {self.cpu}" + (f"\n#     {self.logged}" if self.logged else "")
        )


class LogWatch:
    """What the stack's processes logged since the last call: warnings, errors, tracebacks."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.offsets = {name: self._size(p.log_path) for name, p in stack.processes.items()}

    @staticmethod
    def _size(path: Path) -> int:
        with contextlib.suppress(OSError):
            return path.stat().st_size
        return 0

    def since(self) -> str:
        found = []
        for name, process in self.stack.processes.items():
            with contextlib.suppress(OSError), open(process.log_path, "rb") as log:
                log.seek(self.offsets.get(name, 0))
                text = log.read().decode(errors="replace")
                self.offsets[name] = log.tell()
                problems = [line for line in text.splitlines() if any(p in line for p in LOG_PROBLEMS)]
                if problems:
                    kinds = Counter(p.strip() for line in problems for p in LOG_PROBLEMS if p in line)
                    found.append(f"{name} logged {dict(kinds)}, e.g. {problems[0][:200]}")
        return "; ".join(found)


async def run_step(
    args,
    n: int,
    traders: list[LoadTrader],
    maker: OrderMaker,
    phase: str,
    rng,
    meter_pids,
    in_django,
    logs: LogWatch | None,
) -> StepResult:
    loop = asyncio.get_running_loop()
    active = traders[:n]
    for trader in active:
        trader.drops.clear()
    start = loop.time() + 0.2
    measure_from = start + args.warmup_seconds
    end = measure_from + args.step_seconds
    plan = []
    for idx in range(n):
        offset, k = rng.uniform(0, args.interval_s), 0
        while (due := start + offset + k * args.interval_s) < end:
            plan.append((due, idx, k))
            k += 1
    plan.sort()

    async def send(sent: Sent, data: bytes) -> None:
        try:
            status, body = await sent.trader.pool.request(data)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            sent.error = type(exc).__name__
            return
        sent.answered = loop.time()
        if status not in (200, 201):
            sent.error = f"HTTP {status}: {body[:80].decode(errors='replace')}"
            return
        order = json.loads(body)
        sent.order_id = order["id"]
        if order.get("status") not in GOOD_STATUSES or not order.get("broker_order_id"):
            sent.error = f"2xx with status {order.get('status')}, broker order id {order.get('broker_order_id')!r}"

    meter = CpuMeter(meter_pids, own="load_generator")
    sends, tasks = [], []
    for due, idx, k in plan:
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        key, data = maker.make(phase, k * n + idx)
        sent = Sent(active[idx], key, due, due >= measure_from)
        sends.append(sent)
        tasks.append(asyncio.create_task(send(sent, data)))
    _, pending = await asyncio.wait(tasks, timeout=max(0.1, end + args.patience_s - loop.time()))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)

    # The updates: until every answered order's row has come, or --ws-wait-s after the last answer.
    answered = [s for s in sends if s.order_id is not None]
    last_answer = max((s.answered for s in answered), default=loop.time())
    while loop.time() < last_answer + args.ws_wait_s:
        if all(s.order_id in s.trader.arrivals for s in answered):
            break
        await asyncio.sleep(0.1)
    result = StepResult(n, args.step_seconds, max_p99_ms=args.max_p99_ms)
    result.cpu = f"{meter.stop().line()} (of {os.cpu_count()}; load average {os.getloadavg()[0]:.1f})"
    measured = [s for s in sends if s.measured]
    result.sent = len(measured)
    limit_ms = args.max_ws_lateness_s * 1000
    for s in measured:
        if s.answered is None:
            result.latencies.append(math.inf)
            result.errors[s.error or f"no answer within {args.patience_s:.0f} s"] += 1
            continue
        result.latencies.append((s.answered - s.due) * 1000)
        if s.error:
            result.errors[s.error] += 1
        if s.order_id is None:
            continue
        arrived = s.trader.arrivals.get(s.order_id)
        if arrived is None:
            result.missing += 1
            result.lateness.append(math.inf)
            continue
        result.early += arrived < s.answered
        lateness = max(0.0, arrived - s.answered) * 1000
        result.late += lateness > limit_ms
        result.lateness.append(lateness)
    result.latencies.sort()
    result.lateness.sort()
    result.drops = sum(bool(t.drops) for t in active)
    warmup = [s for s in sends if not s.measured]
    warmup_errors = Counter(s.error or "no answer" for s in warmup if s.error or s.answered is None)
    result.warmup = f"warm-up {len(warmup)} orders, errors {dict(warmup_errors) or 0}"
    # Requests abandoned above are still queued at the server: let it finish them before the
    # database check (and before the next step, which they would otherwise slow down).
    for trader in active:
        trader.pool.close()
    t0 = time.monotonic()
    await in_django(settle, f"{maker.run_id}-{phase}-", args.drain_s)
    result.drained_s = time.monotonic() - t0
    ok_keys = {s.key for s in sends if s.order_id is not None and not s.error}
    result.db = await in_django(verify, f"{maker.run_id}-{phase}-", ok_keys)
    result.bad_statuses = sum(v for k, v in result.db.statuses.items() if k not in GOOD_STATUSES)
    if logs is not None:
        result.logged = logs.since()
    return result


# --- The run ----------------------------------------------------------------------------------------


async def run(args, stack: Stack, http_port: int, ws_port: int) -> StepResult | None:
    loop = asyncio.get_running_loop()
    django = ThreadPoolExecutor(
        1, thread_name_prefix="django"
    )  # one thread: its own connection, closed after each call

    async def in_django(fn, *a):
        return await loop.run_in_executor(django, functools.partial(fn, *a))

    def symbols():
        from django.db import connection

        try:
            return instruments()
        finally:
            connection.close()

    rng = random.Random(args.seed)
    maker = OrderMaker([], await in_django(symbols), f"load{int(time.time())}")
    maker.rng = random.Random(args.seed)
    traders: list[LoadTrader] = []
    meter_pids = {name: p.pid for name, p in stack.processes.items() if p.alive()}
    logs = LogWatch(stack) if stack.processes else None
    steps = sorted({int(x) for x in args.steps.split(",") if x.strip()})
    results: dict[int, StepResult] = {}
    best, first_fail = 0, None
    phases = iter(range(10**6))

    async def step(n: int, retries: int = args.retries) -> bool:
        if len(traders) < n:
            t0 = time.monotonic()
            seeded = await in_django(seed_traders, len(traders), n - len(traders))
            traders.extend(
                LoadTrader(s.user_id, s.account_id, s.key, s.cookie, Pool(http_port, args.connections_per_trader))
                for s in seeded
            )
            seeded_s = time.monotonic() - t0
            t0 = time.monotonic()
            failed = await open_dashboards(ws_port, traders[:n])
            print(
                f"# {n} traders: {len(seeded)} seeded in {seeded_s:.1f} s; dashboards open in "
                f"{time.monotonic() - t0:.1f} s ({failed} attempts failed and were retried)",
                flush=True,
            )
        else:
            await open_dashboards(ws_port, traders[:n])  # reopen any the server dropped
        maker.traders = traders[:n]
        for attempt in range(retries + 1):
            if args.quiet_wait_s > 0:
                await loop.run_in_executor(None, wait_quiet, args.quiet_wait_s, list(meter_pids.values()))
            result = await run_step(args, n, traders, maker, f"p{next(phases)}", rng, meter_pids, in_django, logs)
            print(result.line(args.interval_s), flush=True)
            if not result.reasons():
                results[n] = result
                return True
            if attempt < retries:
                print(f"#     N={n} failed; once more (the machine may be shared)", flush=True)
                await asyncio.sleep(2)
        results.setdefault(n, result)
        return False

    try:
        remaining = list(steps)
        while remaining:
            n = remaining.pop(0)
            if await step(n):
                best = n
            else:
                first_fail = n
                break
        for _ in range(args.refine):
            if first_fail is None or first_fail - best <= 1:
                break
            middle = (best + first_fail) // 2
            if await step(middle):
                best = middle
            else:
                first_fail = middle
        for n in remaining if args.all_steps else []:
            await step(n, retries=0)  # the shape beyond the limit, for the record; the answer stays
    finally:
        for trader in traders:
            trader.pool.close()
            if trader.ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(trader.ws.close(), 5)
        django.shutdown(wait=True)
    print(
        f"# largest N that passed: {best}"
        + (f"; smallest that failed: {first_fail}" if first_fail else "; none failed"),
        flush=True,
    )
    return results.get(best) if best else None


def stack_env(args) -> dict[str, str]:
    env = {
        "DEBUG": "false",
        "ALLOWED_HOSTS": f"{HOST},localhost",
        "CELERY_LOG_LEVEL": "WARNING",
    }
    env.update(item.split("=", 1) for item in args.env)
    return env


def start_http(args, stack: Stack) -> int:
    """gunicorn (bin/web-http) as one more process of the stack; returns its port once /healthz answers."""
    import urllib.request

    port = free_port()
    env = {
        "HTTP_PORT": str(port),
        "HTTP_WORKERS": str(args.http_workers),
        "HTTP_THREADS": str(args.http_threads),
        "CONN_MAX_AGE": str(args.conn_max_age),
    }
    stack.start("http", "bin/web-http", env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not stack["http"].alive():
            raise RuntimeError(f"gunicorn exited:\n{stack['http'].tail()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2):  # noqa: S310
            return port
        time.sleep(0.2)
    raise TimeoutError(f"gunicorn did not answer /healthz within 60 s:\n{stack['http'].tail()}")


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    t0 = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        if args.attach:
            stack = Stack.attach(args.attach)
        else:
            stack = Stack(env=stack_env(args), database_url=args.database_url, redis_url=args.redis_url, name="load")
            # The metrics of this run's processes in their own directory (bin/web-http's default is shared).
            stack.env["PROMETHEUS_MULTIPROC_DIR"] = str(stack.dir / "prometheus")
            cleanup.enter_context(stack)
        ws_port = urlsplit(stack.base_url).port
        if args.attach or args.http == "daphne":
            http_port, http = ws_port, "daphne (bin/web, the same process as the websockets)"
        else:
            http_port = start_http(args, stack)
            http = (
                f"gunicorn gthread {args.http_workers}x{args.http_threads} "
                f"(bin/web-http, CONN_MAX_AGE={args.conn_max_age})"
            )
        os.environ.update(stack.env)
        import django

        django.setup()
        from django.db import connection

        db = connection.settings_dict
        print(
            f"# stack {stack.run_id} ({stack.dir}) up in {time.monotonic() - t0:.0f} s: HTTP by {http} on port "
            f"{http_port}, websockets by daphne (bin/web) on port {ws_port}, Celery worker and beat, paper face; "
            f"{db['ENGINE'].rsplit('.', 1)[-1]} database {db['NAME']}, Redis {stack.redis_url} prefix "
            f"{stack.env.get('CACHE_KEY_PREFIX')}; DEBUG={stack.env.get('DEBUG')}; {os.cpu_count()} cores, load "
            f"average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        print(
            f"# each trader: one dashboard websocket, one MARKET order every {args.interval_s:g} s through the API; "
            f"steps {args.steps} ({args.warmup_seconds:g} s warm-up + {args.step_seconds:g} s each); pass: no errors, "
            f"p99 < {args.max_p99_ms:g} ms, every update within {args.max_ws_lateness_s:g} s",
            flush=True,
        )
        at_max = asyncio.run(run(args, stack, http_port, ws_port))
        connection.close()
    figures = {
        "load_max_traders": at_max.n if at_max else 0,
        "load_order_p99_ms_at_max": at_max.p99 if at_max else float("nan"),
        "load_ws_max_lateness_ms_at_max": at_max.ws_max if at_max else float("nan"),
    }
    print(f"# whole run {time.monotonic() - t0:.0f} s")
    print(f"load_max_traders: {figures['load_max_traders']} traders")
    print(f"load_order_p99_ms_at_max: {fmt(figures['load_order_p99_ms_at_max'])} ms")
    print(f"load_ws_max_lateness_ms_at_max: {fmt(figures['load_ws_max_lateness_ms_at_max'])} ms")
    return figures


if __name__ == "__main__":
    main()
