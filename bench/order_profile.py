"""Where one API order's cost goes, in this process: CPU and statements per order.

Places orders through the WSGI application in this process (the whole middleware stack, the
API, the order service, the paper exchange), on the same fixtures as ``bench/order_api.py``
(MariaDB with durable commits, Redis), and prints per order: Python CPU, MariaDB CPU, SQL
statements by kind, commits, Redis round trips and commands. ``--list`` prints one order's statements in the
order they ran (the placing thread's and the background threads' alike). ``--threads N`` places
from N threads at once, as a server's threads would.

``--instructions`` runs the same under valgrind's callgrind and adds the CPU instructions this
process ran per order (the placing threads' and the background threads', the measured orders
only): the same code gives the same count to about half a percent however busy the machine is,
where its CPU seconds vary by a sixth from one run to the next. It is about 30 times slower (use
fewer ``--orders``, ``--warmup`` and ``--accounts``); MariaDB's and Redis's work is not in it.

These are not figures of the issue (``bench/order_api.py`` measures those, through real servers);
they are what to compare before and after a change of the order path, far steadier than a
throughput figure on a shared machine.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_database_options(p, db_name="bench_order_profile", redis_db=5)
    p.add_argument("--accounts", type=int, default=200)
    p.add_argument("--orders", type=int, default=600)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--list", action="store_true", help="print one order's statements")
    p.add_argument("--by-table", action="store_true", help="count statements by kind and table")
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count this process's CPU instructions per order under valgrind's callgrind (repeatable)",
    )
    p.add_argument("--cprofile", metavar="FILE", help="profile the placing threads' calls (cProfile) into FILE")
    p.add_argument(
        "--scheduled",
        action="store_true",
        help="profile scheduled orders instead: --orders one-off orders due together, prepared ahead of their\n"
        "time (measured on their own) and sent at it (measured on their own), in tasks of SCHEDULE_FIRE_BATCH\n"
        "run one after another from each of --threads threads, as worker processes would",
    )
    return p.parse_args(argv)


class Statements:
    """Every statement this process sends, counted by its first word (and listed when asked)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.kinds = collections.Counter()
        self.listing: list[str] | None = None
        self.by_table = False

    def __call__(self, execute, sql, params, many, context):
        kind = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
        if kind in ("UPDATE", "INSERT", "SELECT") and self.by_table:  # with the table written or read
            words = sql.replace("`", "").split()
            at = words.index("FROM") + 1 if kind == "SELECT" and "FROM" in words else 1 if kind == "UPDATE" else 2
            kind = f"{kind} {words[at] if at < len(words) else '?'}"
        with self.lock:
            self.kinds[kind] += 1
            if self.listing is not None:
                self.listing.append(f"{threading.current_thread().name[:12]:12} {sql[:150]}")
        return execute(sql, params, many, context)


# Set in the run under callgrind (``--instructions``): the file its counts are dumped to.
CALLGRIND_OUT = "ORDER_PROFILE_CALLGRIND_OUT"


def main(argv=None):
    args = parse_args(argv)
    if args.instructions and not os.environ.get(CALLGRIND_OUT):
        raise SystemExit(under_callgrind(sys.argv[1:] if argv is None else argv))
    instructions = Instructions(os.environ[CALLGRIND_OUT]) if args.instructions else None
    from bench import order_api

    env = harness.bench_env(args, CONN_MAX_AGE="60", CACHE_KEY_PREFIX="benchprofile", CELERY_QUEUE="bench_profile")
    order_api.prepare_database(argparse.Namespace(mysql=args.mysql, db_name=args.db_name, keep_db=False))
    harness.flush_redis(args.redis_url)
    harness.django_setup(env)
    from tradingplatform import startup

    startup.app_loaded()  # as a server's worker is set up (tradingplatform.wsgi)

    import redis
    from django.db.backends.signals import connection_created
    from django.test import Client

    from tradingplatform import background

    statements = Statements()
    statements.by_table = args.by_table

    def wrap(sender, connection, **kwargs):
        if statements not in connection.execute_wrappers:
            connection.execute_wrappers.append(statements)

    connection_created.connect(wrap)
    round_trips = redis_round_trips()
    traders = order_api.seed(
        argparse.Namespace(
            accounts=args.accounts, scheduled=0, scheduled_accounts=0, db_name=args.db_name, keep_db=False
        )
    )
    symbols = order_api.instruments()
    maker = order_api.OrderMaker(traders, symbols, f"p{int(time.time())}")
    r = redis.Redis.from_url(args.redis_url)

    def body_of(i):
        key, raw = maker.make("profile", i)
        head, _, body = raw.partition(b"\r\n\r\n")
        token = [line for line in head.decode().split("\r\n") if line.startswith("Authorization:")][0]
        return key, token.split(" ", 2)[2], body

    def place(client, i):
        key, token, body = body_of(i)
        response = client.post(
            "/api/v1/orders",
            data=body,
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
        )
        if response.status_code not in (200, 201):
            raise SystemExit(f"order {i}: {response.status_code} {response.content[:300]!r}")

    def run(start, count):
        per_thread = count // args.threads

        def placer(t):
            client = Client(SERVER_NAME=harness.HOST)
            profile = cProfile.Profile() if args.cprofile and start else None
            profile and profile.enable()
            for i in range(start + t * per_thread, start + (t + 1) * per_thread):
                place(client, i)
            if profile:
                profile.disable()
                profile.dump_stats(f"{args.cprofile}.{t}")

        on_threads(args.threads, placer)
        background.drain() if hasattr(background, "drain") else time.sleep(0.5)
        return per_thread * args.threads

    run(0, args.warmup)  # the API's and the order path's first calls, for either profile
    time.sleep(1)
    if args.list:
        statements.listing = []
        place(Client(SERVER_NAME=harness.HOST), args.warmup)
        time.sleep(1)
        print("\n".join(statements.listing))
        statements.listing = None

    def mariadb_status():
        cur = harness.mysql_connect(args.mysql).cursor()
        cur.execute("SHOW GLOBAL STATUS")
        return {k: int(v) for k, v in cur.fetchall() if v.isdigit()}

    def measured(what, work, settle_s=1.0):
        """Run ``work()`` (it returns how many orders it did) and print what they cost each."""
        statements.kinds.clear()
        trips_before = next(round_trips)
        redis_before = r.info("commandstats")
        status_before = mariadb_status()
        instructions and instructions.start()
        db_cpu, cpu, wall = harness.mariadb_cpu_seconds(), time.process_time(), time.perf_counter()
        n = work()
        wall = time.perf_counter() - wall
        time.sleep(settle_s)  # the fills' bookkeeping on the background threads
        ran = instructions.stop() if instructions else None
        cpu = time.process_time() - cpu
        db_cpu = harness.mariadb_cpu_seconds() - db_cpu
        status_after = mariadb_status()
        trips = next(round_trips) - trips_before - 1
        redis_after = r.info("commandstats")
        redis_calls = sum(v["calls"] for v in redis_after.values()) - sum(v["calls"] for v in redis_before.values())

        def calls_before(name):
            return redis_before.get(name, {}).get("calls", 0)

        def delta(name):
            return (status_after.get(name, 0) - status_before.get(name, 0)) / n

        print(
            json.dumps(
                {
                    "what": what,
                    "orders": n,
                    "threads": args.threads,
                    **({"python_instructions_per_order": round(ran / n)} if ran is not None else {}),
                    "python_cpu_ms_per_order": round(cpu / n * 1000, 2),
                    "mariadb_cpu_ms_per_order": round(db_cpu / n * 1000, 2),
                    "wall_ms_per_order": round(wall / n * 1000, 2),
                    "statements_per_order": round(sum(statements.kinds.values()) / n, 2),
                    "by_kind": {k: round(v / n, 2) for k, v in statements.kinds.most_common()},
                    "mariadb_commits_per_order": round(delta("Com_commit"), 2),
                    "mariadb_fsyncs_per_order": round(delta("Innodb_data_fsyncs"), 2),
                    "mariadb_questions_per_order": round(delta("Questions"), 2),
                    "mariadb_com_per_order": {
                        name.removeprefix("Com_").lower(): round(delta(name), 2)
                        for name in sorted(status_after)
                        if name.startswith("Com_") and delta(name) >= 0.05
                    },
                    "redis_round_trips_per_order": round(trips / n, 2),
                    "redis_commands_per_order": round(redis_calls / n, 2),
                    "redis_by_command": {
                        name.removeprefix("cmdstat_"): round((v["calls"] - calls_before(name)) / n, 2)
                        for name, v in sorted(redis_after.items())
                        if v["calls"] != calls_before(name)
                    },
                },
                indent=1,
            ),
            flush=True,
        )

    if args.scheduled:
        scheduled_profile(args, traders, measured)
    else:
        measured("API orders", lambda: run(args.warmup + 1, args.orders))
    order_api.drop_database(args)


def under_callgrind(argv: list[str]) -> int:
    """Run this bench again under callgrind, counting nothing until ``Instructions.start``."""
    with tempfile.TemporaryDirectory(prefix="order_profile.") as folder:
        out = str(Path(folder) / "callgrind.out")
        command = ["valgrind", "-q", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        env = {**os.environ, CALLGRIND_OUT: out}
        return subprocess.call([*command, sys.executable, __file__, *argv], env=env)  # noqa: S603


class Instructions:
    """This process's instruction count under callgrind, between ``start`` and ``stop``."""

    def __init__(self, out: str):
        self.out = out
        self.dumps = 0

    def _control(self, *options: str) -> None:
        command = ["callgrind_control", *options, str(os.getpid())]
        subprocess.run(command, check=True, capture_output=True, timeout=300)  # noqa: S603, S607

    def start(self) -> None:
        self._control("--zero")
        self._control("--instr=on")

    def stop(self) -> int:
        self._control("--dump")
        self._control("--instr=off")
        self.dumps += 1
        text = Path(f"{self.out}.{self.dumps}").read_text()
        return int(re.search(r"^(?:totals|summary): (\d+)", text, re.MULTILINE).group(1))


def redis_round_trips() -> itertools.count:
    """Counts every request this process sends to Redis (a command, a pipeline or a script call
    each is one round trip; the commands a script runs inside Redis are not): ``next()`` reads and
    counts one."""
    from redis.connection import AbstractConnection

    sent = itertools.count()
    send = AbstractConnection.send_packed_command

    def counted(self, command, *args, **kwargs):
        next(sent)
        return send(self, command, *args, **kwargs)

    AbstractConnection.send_packed_command = counted
    return sent


def on_threads(n: int, work) -> None:
    """``work(t)`` on ``n`` threads at once (t = 0..n-1), each closing its database connections at
    the end; the first failure is raised once all are done."""
    from django.db import connections

    failures = []

    def run(t):
        try:
            work(t)
        except BaseException as error:  # a thread's SystemExit would end only the thread
            failures.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(t,), name=f"worker-{t}") for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


def scheduled_profile(args, traders, measured) -> None:
    """Scheduled orders: ``args.orders`` one-off orders on the traders' accounts, all due at one
    time, claimed, prepared in tasks, and sent at the time in tasks (``orders.tasks.fire_scheduled``'s
    two steps, called here), each step measured on its own."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from django.conf import settings
    from django.utils import timezone

    from accounts.models import BrokerAccount
    from bench import order_api
    from orders import sources
    from orders.models import ScheduledFire

    accounts = list(BrokerAccount.objects.filter(pk__in=[t.account_id for t in traders]).order_by("pk"))
    # Far enough ahead for the orders to be written and prepared; claimed as the dispatcher would.
    due = (timezone.now() + timedelta(seconds=30)).astimezone(ZoneInfo("Asia/Kolkata")).replace(microsecond=0)
    order_api.scheduled_write(accounts, args.orders, due, seed=7)
    wait = (due - timezone.now()).total_seconds() - settings.SCHEDULE_LEAD_S
    if wait < 0:
        raise SystemExit("writing the scheduled orders took too long; use fewer --orders")
    time.sleep(wait)
    fire_ids = sources.scheduled_claim_due(lead_s=settings.SCHEDULE_LEAD_S, limit=args.orders)
    batches = [
        fire_ids[i : i + settings.SCHEDULE_FIRE_BATCH] for i in range(0, len(fire_ids), settings.SCHEDULE_FIRE_BATCH)
    ]

    def tasks(step):
        def work():
            on_threads(args.threads, lambda t: [step(fire_ids=batch) for batch in batches[t :: args.threads]])
            return len(fire_ids)

        return work

    measured("scheduled: prepared ahead of their time", tasks(sources.scheduled_prepare), settle_s=0)
    left = (due - timezone.now()).total_seconds()
    if left < 0:
        raise SystemExit("preparing took longer than SCHEDULE_LEAD_S: the send is not measured alone")
    time.sleep(left)
    measured("scheduled: sent at their time", tasks(sources.scheduled_fires))
    statuses = collections.Counter(ScheduledFire.objects.filter(pk__in=fire_ids).values_list("status", flat=True))
    print(f"# fires: {dict(statuses)}")


if __name__ == "__main__":
    main()
