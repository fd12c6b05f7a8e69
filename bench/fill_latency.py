"""Benchmark of the fill fast path: from a paper fill's commit to its PnL fragment on an open dashboard.

Run from the repository root (MariaDB and Redis must be up; ``--mysql`` / ``--redis-url`` say where):

    python bench/fill_latency.py [--traders 100] [--fills 1000] [--rate 10] [--latency-ms 50] [options below]

Setup. It creates its own database (``--db-name``, default ``bench_fill_latency``; dropped at the
end unless ``--keep-db``), migrates it, loads the instruments, and creates ``--traders`` traders,
each with one paper account connected through the session manager (``session_live``: the
exchange client, a real token, a live ``BrokerSession``), its exchange client given cash and
``latency_ms`` = ``--latency-ms`` per broker call. It starts daphne (``tradingplatform.asgi``, a
free port) and the Celery workers (``--workers`` processes, each ``--pool`` with ``--concurrency``
threads) on a queue of their own, as subprocesses with DEBUG off and LOG_LEVEL=WARNING: the workers
run each account's monitoring steps that every fill also queues (debounced), as in production. It
waits for a quieter machine (``--load-below``), signs every trader in (``force_login``, then the
session cookie) and opens one dashboard websocket per trader (``ws://.../ws/`` with the
``websockets`` package, Origin matching ALLOWED_HOSTS): 100 traders with one account and one open
dashboard each. The sockets are opened all at once first, as after a restart (how many the server
refused is a context line), and the refused ones again one at a time.

Measurement. A probe first sends one message to every trader's group through the channel layer
(the raw group-send latency, a context line). Then ``--fills`` MARKET orders (plus ``--warmup``
unmeasured ones first), each on a random trader's account, arriving as a Poisson process at
``--rate`` per second, are placed in this process through ``brokers.paper.engine.order_place``;
they fill at once, and this process's fast path (``tradingplatform.background``) records each
fill and pushes its trader's dashboard, as the web process or worker that placed an order does.
A fill's time is taken by an ``on_commit`` hook registered before the order, so it is the first
thing that runs after the COMMIT. A fill has arrived when its trader's websocket receives a
message with ``id="pnl-summary"`` that also lists the fill (its exchange order id in the
recent-trades fragment rendered with it, so that PnL includes it). Fills with no such message
``--tail-s`` seconds after the last fill count as infinitely late.

Figures (each on its own line as ``name: value unit``; lines starting with ``#`` are context):
``fill_to_ws_p50_ms`` and ``fill_to_ws_p99_ms`` (nearest rank over the measured fills), with a
breakdown of where the time goes: commit -> the fill's ``Trade`` row built (``recorded_at``: the
hand-over to the background thread and the queue there) and from there to the websocket
(recording, render, coalescing with a trailing push when the trader had a push within
``--push-interval-s``, channel layer, daphne); the load average and CPU use while measuring (the
machine may be shared), and what daphne and the workers logged (channel-layer errors).

Cleanup. Every process it started is stopped (also on Ctrl-C or SIGTERM), its database dropped and
its Redis database (``--redis-url``, database 6 by default, which nothing else uses) flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.harness import (  # noqa: E402
    HOST,
    CpuMeter,
    Managed,
    dashboard_connect,
    flush_redis,
    fmt,
    free_port,
    percentile,
    start_workers,
    wait_for_load,
    wait_healthz,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traders", type=int, default=100, help="traders, each with one paper account and one dashboard")
    p.add_argument("--fills", type=int, default=1000, help="measured fills")
    p.add_argument("--warmup", type=int, default=50, help="fills before the measured ones (not counted)")
    p.add_argument("--rate", type=float, default=10.0, help="fills per second (Poisson arrivals, random traders)")
    p.add_argument("--latency-ms", type=int, default=50, help="PaperClient.latency_ms: added to every broker call")
    p.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    p.add_argument("--pool", default="threads", help="Celery pool: threads, prefork, solo")
    p.add_argument("--concurrency", type=int, default=8, help="threads (or child processes) per worker")
    p.add_argument("--tail-s", type=float, default=15.0, help="wait this long after the last fill for its push")
    p.add_argument(
        "--push-interval-s",
        type=float,
        default=0.1,
        help="DASHBOARD_PUSH_INTERVAL_S: at most one dashboard push per trader per interval (then a trailing push)",
    )
    p.add_argument("--background-threads", type=int, default=4, help="BACKGROUND_THREADS: fast-path threads a process")
    harness.add_database_options(p, db_name="bench_fill_latency", redis_db=6)
    harness.add_load_options(p, when="before measuring")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--verbose", action="store_true", help="show daphne's and the worker's output")
    return p.parse_args(argv)


def bench_env(args) -> dict[str, str]:
    env = harness.bench_env(
        args,
        DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "tradingplatform.settings"),
        CELERY_QUEUE="bench_fill_latency",
        CACHE_KEY_PREFIX="benchfill",
        DASHBOARD_PUSH_INTERVAL_S=str(args.push_interval_s),
        BACKGROUND_THREADS=str(args.background_threads),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


# --- Processes and CPU --------------------------------------------------------------------------------


# --- Setup --------------------------------------------------------------------------------------------


@dataclass
class Trader:
    user_id: int
    account_id: int
    client_pk: int
    cookie: str


def seed(args) -> list[Trader]:
    from django.core.management import call_command
    from django.db import connection

    from bench import seeding
    from brokers.paper.models import PaperClient

    call_command("migrate", verbosity=0, interactive=False)
    call_command("load_instruments", broker="paper", stdout=open(os.devnull, "w"))  # noqa: SIM115
    traders = []
    for i in range(args.traders):
        seeded = seeding.paper_trader(
            username=f"fill{i:04d}", client_id=f"FILL{i:04d}", label=f"Paper {i}", api_key=False, login=True
        )
        traders.append(Trader(seeded.user_id, seeded.account_id, 0, seeded.cookie))
    clients = dict(PaperClient.objects.filter(user_id__startswith="FILL").values_list("user_id", "pk"))
    for i, trader in enumerate(traders):
        trader.client_pk = clients[f"FILL{i:04d}"]
    seeding.fund_paper_clients("FILL", opening_funds=seeding.BENCH_CASH, latency_ms=args.latency_ms)
    connection.close()
    return traders


def start_daphne(port: int, env, verbose: bool) -> Managed:
    cmd = [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), "tradingplatform.asgi:application"]
    return wait_healthz(Managed("daphne", cmd, env, verbose), port, "daphne")


# --- Dashboards (websockets) ---------------------------------------------------------------------------

PNL_MARK = 'id="pnl-summary"'


@dataclass
class Inbox:
    """Every message a trader's websocket received: (arrival time, text)."""

    messages: list = field(default_factory=list)


async def open_dashboard(port: int, trader: Trader, inbox: Inbox, errors: list):
    ws = await dashboard_connect(port, trader.cookie)

    async def reader():
        try:
            async for text in ws:
                inbox.messages.append((time.time(), text))
        except Exception as error:  # noqa: BLE001  (a dropped socket is reported, not raised)
            errors.append(f"trader {trader.user_id}: {type(error).__name__}: {error}")

    asyncio.get_running_loop().create_task(reader())
    return ws


async def open_dashboards(port: int, traders: list[Trader], inboxes: dict[int, Inbox], errors: list):
    """Open every dashboard at once (as after a restart); open the ones that failed again, one at a time.

    Returns the sockets and how many failed at first (a socket the server accepted and closed at once
    counts as failed).
    """

    async def attempt(trader):
        try:
            ws = await open_dashboard(port, trader, inboxes[trader.user_id], errors)
        except Exception:  # noqa: BLE001
            return None
        await asyncio.sleep(1.0)
        return ws if ws.state.name == "OPEN" else None

    first = await asyncio.gather(*(attempt(t) for t in traders))
    failed = sum(1 for ws in first if ws is None)
    sockets = []
    for trader, ws in zip(traders, first, strict=True):
        while ws is None:
            ws = await attempt(trader)
        sockets.append(ws)
    return sockets, failed


def probe_channel_layer(traders: list[Trader], inboxes: dict[int, Inbox], loop) -> list[float]:
    """One group send to each trader's group (the raw channel-layer path); ms until its socket has it."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from monitoring.consumers import user_group

    layer = get_channel_layer()
    sent = {}
    for trader in traders:
        marker = f"probe-{trader.user_id}-{time.time_ns()}"
        sent[trader.user_id] = (marker, time.time())
        async_to_sync(layer.group_send)(user_group(trader.user_id), {"type": "fragment.push", "html": marker})
        time.sleep(0.01)
    deadline = time.time() + 10
    latencies = []
    for trader in traders:
        marker, at = sent[trader.user_id]
        while time.time() < deadline:
            hit = next((t for t, text in list(inboxes[trader.user_id].messages) if text == marker), None)
            if hit is not None:
                latencies.append((hit - at) * 1000)
                break
            time.sleep(0.01)
    return latencies


# --- Fills ---------------------------------------------------------------------------------------------


@dataclass
class Fill:
    user_id: int
    account_id: int
    order_id: str
    committed: float
    measured: bool


def place_fills(args, traders: list[Trader], n: int, measured: bool, rng: random.Random, fills: list[Fill]) -> None:
    """``n`` MARKET orders at Poisson arrivals of ``--rate``, each on a random trader's account."""
    from django.db import connection, transaction

    from brokers.paper import engine
    from brokers.paper.models import PaperClient, PaperInstrument

    symbols = list(PaperInstrument.objects.filter(instrument_type="EQ", lot_size=1).order_by("pk"))
    clients = {c.pk: c for c in PaperClient.objects.filter(pk__in=[t.client_pk for t in traders])}
    sides = defaultdict(int)
    next_at = time.monotonic()
    try:
        for _ in range(n):
            next_at += rng.expovariate(args.rate)
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            trader = traders[rng.randrange(len(traders))]
            instrument = symbols[rng.randrange(len(symbols))]
            sides[trader.user_id] += 1
            stamp = []
            with transaction.atomic():
                # Registered first, so it runs first after the COMMIT (before the platform's hooks).
                transaction.on_commit(lambda stamp=stamp: stamp.append(time.time()))
                order = engine.order_place(
                    client=clients[trader.client_pk],
                    exchange=instrument.exchange,
                    tradingsymbol=instrument.tradingsymbol,
                    transaction_type="BUY" if sides[trader.user_id] % 2 else "SELL",
                    order_type="MARKET",
                    quantity=instrument.lot_size,
                    product="MIS",
                )
            fills.append(Fill(trader.user_id, trader.account_id, order.order_id, stamp[0], measured))
    finally:
        connection.close()


def arrival(fill: Fill, inbox: Inbox) -> float | None:
    for at, text in inbox.messages:
        if at >= fill.committed and PNL_MARK in text and fill.order_id in text:
            return at
    return None


def recorded_times(fills: list[Fill]) -> tuple[dict[str, float], dict[str, int]]:
    """When each fill's ``Trade`` row was built by the fast path ({exchange order id: time}), and the
    statuses of the accounts' monitoring runs since the first fill (they run too, a moment later)."""
    from collections import Counter
    from datetime import UTC, datetime

    from django.db import connection

    from monitoring.models import AccountRun
    from portfolio.models import Trade

    order_ids = [f.order_id for f in fills]
    recorded = {}
    for start in range(0, len(order_ids), 500):
        rows = Trade.objects.filter(broker_order_id__in=order_ids[start : start + 500])
        recorded.update(
            {order_id: at.timestamp() for order_id, at in rows.values_list("broker_order_id", "recorded_at")}
        )
    since = datetime.fromtimestamp(min(f.committed for f in fills), tz=UTC)
    statuses = Counter(
        AccountRun.objects.filter(account_id__in={f.account_id for f in fills}, started_at__gte=since).values_list(
            "status", flat=True
        )
    )
    connection.close()
    return recorded, dict(statuses)


# --- Main ----------------------------------------------------------------------------------------------


def _stop_on_sigterm(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # so the cleanup below runs
    env = bench_env(args)
    harness.mysql_exec(
        args.mysql,
        f"DROP DATABASE IF EXISTS `{args.db_name}`",
        f"CREATE DATABASE `{args.db_name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
    )
    flush_redis(args.redis_url)
    os.environ.update(env)
    import django

    django.setup()

    procs: list[Managed] = []
    figures: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        traders = seed(args)
        port = free_port()
        procs.append(start_daphne(port, env, args.verbose))
        procs.extend(start_workers(args, env, "benchfill"))
        print(
            f"# {args.traders} traders, one paper account and one open dashboard each; latency_ms={args.latency_ms}; "
            f"daphne on port {port}, {args.workers} Celery worker(s) --pool {args.pool} --concurrency "
            f"{args.concurrency}; {os.cpu_count()} cores; setup {time.monotonic() - t0:.1f} s",
            flush=True,
        )
        load = wait_for_load(args.load_below, args.load_wait_s)
        inboxes = {t.user_id: Inbox() for t in traders}
        ws_errors: list[str] = []
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="websockets", daemon=True).start()
        t1 = time.monotonic()
        sockets, failed = asyncio.run_coroutine_threadsafe(
            open_dashboards(port, traders, inboxes, ws_errors), loop
        ).result(600)
        print(
            f"# {len(sockets)} websockets open in {time.monotonic() - t1:.1f} s; of the first attempt, all at once, "
            f"{failed} failed (opened again one at a time)",
            flush=True,
        )
        dropped_before = len(ws_errors)
        probe = probe_channel_layer(traders, inboxes, loop)
        print(
            f"# raw channel-layer group send to each trader's socket: {len(probe)}/{len(traders)} arrived, "
            f"p50 {fmt(percentile(probe, 0.5))} ms, p99 {fmt(percentile(probe, 0.99))} ms",
            flush=True,
        )
        rng = random.Random(args.seed)
        fills: list[Fill] = []
        place_fills(args, traders, args.warmup, False, rng, fills)
        time.sleep(1)
        meter = CpuMeter({"daphne": procs[0].proc.pid, **{p.name: p.proc.pid for p in procs[1:]}}, redis=True)
        started = time.monotonic()
        place_fills(args, traders, args.fills, True, rng, fills)
        placing = time.monotonic() - started
        measured = [f for f in fills if f.measured]
        from tradingplatform import background

        background.wait_idle(args.tail_s)
        deadline = time.time() + args.tail_s
        while time.time() < deadline:
            if all(arrival(f, inboxes[f.user_id]) is not None for f in measured[-50:]):
                break
            time.sleep(0.5)
        time.sleep(1.0)
        use = meter.stop()
        cpu = f"{use.line()} (over {use.wall:.0f} s)"
        load_after = os.getloadavg()
        latencies, to_record, to_ws = [], [], []
        recorded, statuses = recorded_times(measured)
        for fill in measured:
            at = arrival(fill, inboxes[fill.user_id])
            latencies.append(math.inf if at is None else (at - fill.committed) * 1000)
            if fill.order_id in recorded:
                to_record.append((recorded[fill.order_id] - fill.committed) * 1000)
                if at is not None:
                    to_ws.append((at - recorded[fill.order_id]) * 1000)
        missing = sum(1 for x in latencies if math.isinf(x))
        pushes = sum(1 for inbox in inboxes.values() for _, text in inbox.messages if PNL_MARK in text)
        print(
            f"# {len(measured)} measured fills at {len(measured) / placing:.1f}/s (Poisson, random traders; "
            f"{args.warmup} warm-up fills before); {len(recorded)} recorded by the fast path; {missing} never "
            f"reached their dashboard within {args.tail_s:.0f} s; {pushes} dashboard pushes with the PnL in all "
            f"(coalesced per trader within {args.push_interval_s * 1000:.0f} ms);\n#     monitoring runs since the "
            f"first fill (queued by the fills, in the workers) {statuses};\n#     load average (1/5/15 min) "
            f"{load:.2f} when the fills started, {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} after; "
            f"{cpu}",
            flush=True,
        )
        print(
            f"# where the time goes (p50 / p99): commit -> the fill's Trade built on a background thread "
            f"{fmt(percentile(to_record, 0.5))} / {fmt(percentile(to_record, 0.99))} ms; -> websocket (record, "
            f"render, coalescing, channel layer, daphne) {fmt(percentile(to_ws, 0.5))} / "
            f"{fmt(percentile(to_ws, 0.99))} ms",
            flush=True,
        )
        for proc in procs:
            text = proc.log_text()
            kinds = {
                kind: text.count(kind)
                for kind in ("Too many connections", "Timeout reading", "ChannelFull", "Traceback")
                if kind in text
            }
            if kinds:
                print(f"# {proc.name} logged: " + ", ".join(f"{n} x {kind}" for kind, n in kinds.items()))
        if ws_errors:
            print(
                f"# dashboards dropped by the server: {len(ws_errors)} ({dropped_before} before the fills), "
                f"e.g. {ws_errors[0][:120]}"
            )
        figures["fill_to_ws_p50_ms"] = percentile(latencies, 0.50)
        figures["fill_to_ws_p99_ms"] = percentile(latencies, 0.99)
        for ws in sockets:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(ws.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
    finally:
        for proc in procs:
            proc.stop()
        from django.db import connections

        connections.close_all()
        flush_redis(args.redis_url)
        if not args.keep_db:
            harness.mysql_exec(args.mysql, f"DROP DATABASE IF EXISTS `{args.db_name}`")
    for name, value in figures.items():
        print(f"{name}: {fmt(value)} ms")
    return figures


if __name__ == "__main__":
    main()
