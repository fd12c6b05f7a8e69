"""Fault scenarios against the real processes: nothing lost, nothing doubled, every failure shown.

Run from the repository root (``DATABASE_URL=mysql://...`` for MariaDB, else SQLite):

    python e2e/faults.py [--only NAME[,NAME...]] [--keep-logs]

It starts the platform with ``e2e.stack.Stack`` (daphne, Kite face, Celery worker, beat) on its
own database and its own Redis server (the Procfile's embedded one on a free port, so it can be
restarted without touching anybody else's), then runs each scenario on a trader and paper account
of its own:

- ``broker faults``: the paper exchange answers 5xx, 429 and loses answers (the work done, the
  answer lost, as after a timeout) while six API clients place orders; the clients retry with
  the same ``Idempotency-Key`` as a good client does.
- ``worker killed``: scheduled orders fire while the exchange is slow; the worker is SIGKILLed
  mid-call and a new one started; the unacknowledged tasks (``acks_late``) come back.
- ``redis restarted``: Redis is killed during a monitoring cycle and started again (empty, as a
  Redis without persistence comes back) while clients place orders.
- ``db dropped``: every MariaDB connection of the platform is KILLed three times during order
  flow (skipped on SQLite).
- ``dispatch twice``: each claimed scheduled fire is delivered two more times, concurrently.
- ``same key twice``: two clients send each idempotency key at the same moment.
- ``two beats``: a second beat runs for a while; periodic jobs still run once per interval and
  scheduled orders fire once.

After each, through the database: every order the trader asked for (an API idempotency key, a
scheduled order) is one platform ``Order`` and at most one paper exchange ``PaperOrder`` (by the
order's reference, the broker tag); the exchange has no order the platform does not know; their
statuses agree; and where something failed the trader was shown it (the order is FAILED or
REJECTED with a reason, or the API answered an error). Outcomes that take the platform time
(an order whose answer was lost is looked up by its tag; an order whose sender died is closed
after a minute) are waited for, up to a deadline per scenario.

Prints one table (scenario, orders asked, orders at broker, duplicates, lost, errors shown) and
exits 1 if any scenario lost or doubled an order, left statuses disagreeing or hid an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import seeding  # noqa: E402
from e2e.stack import Stack, django_setup  # noqa: E402

MONITORING_INTERVAL_S = 5
VISIBILITY_TIMEOUT_S = 8
STACK_ENV = {
    "MONITORING_INTERVAL_S": str(MONITORING_INTERVAL_S),
    "CELERY_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
    "LOG_LEVEL": "WARNING",
}
# An order whose sender died is closed as FAILED a minute after it was created (orders_sync_account).
STALE_ORDER_S = 60
KITE_TIMEOUT_S = 1.0


# --- Django in this process, on the stack's database (django_setup) -----------------------------------


def db(fn: Callable, *args, attempts: int = 20, **kwargs):
    """Run a database read/write, reconnecting when the scenario has just dropped the connection."""
    from django.db import InterfaceError, OperationalError, connection

    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except (OperationalError, InterfaceError):
            connection.close()
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


@dataclass
class Trader:
    name: str
    user_id: int
    account_id: int
    client_id: str
    key: str


def trader_create(name: str, **knobs) -> Trader:
    """A trader with an API key and a connected paper account (plenty of cash), knobs set."""
    from brokers.paper.models import PaperClient

    seeded = seeding.paper_trader(
        username=f"fault_{name.replace(' ', '_')}",
        client_id=lambda user_pk: f"F{user_pk:05d}",
        label=f"Faults {name}",
        key_name="faults",
    )
    PaperClient.objects.filter(user_id=seeded.client_id).update(cash=Decimal("1000000000"))
    knobs_set(seeded.client_id, **knobs)
    return Trader(name, seeded.user_id, seeded.account_id, seeded.client_id, seeded.key)


def knobs_set(client_id: str, **knobs) -> None:
    """The paper exchange's fault knobs for one client (what staff set in admin)."""
    from brokers.paper.models import PaperClient

    defaults = {"latency_ms": 0, "error_rate": 0, "timeout_rate": 0, "rejection_rate": 0, "rate_limit_per_s": 0}
    db(lambda: PaperClient.objects.filter(user_id=client_id).update(**{**defaults, **knobs}))


@dataclass(frozen=True)
class Spec:
    tradingsymbol: str
    side: str
    order_type: str
    quantity: int
    price: Decimal | None


def order_specs(n: int, seed: int) -> list[Spec]:
    """Half MARKET (fill at once), half LIMIT buys 8 % under the market (rest open)."""
    from brokers.models import Instrument

    rng = random.Random(seed)
    instruments = list(
        Instrument.objects.filter(exchange="NSE", instrument_type="EQ", last_price__gt=0).order_by("tradingsymbol")
    )[:10]
    specs = []
    for i in range(n):
        instrument = rng.choice(instruments)
        if i % 2:
            tick = instrument.tick_size
            steps = (instrument.last_price * Decimal("0.92") / tick).to_integral_value(ROUND_DOWN)
            price = (steps * tick).quantize(Decimal("0.01"))
            specs.append(Spec(instrument.tradingsymbol, "BUY", "LIMIT", instrument.lot_size, price))
        else:
            specs.append(
                Spec(instrument.tradingsymbol, rng.choice(["BUY", "SELL"]), "MARKET", instrument.lot_size, None)
            )
    return specs


# --- The trader's API client ---------------------------------------------------------------------------------


@dataclass
class Asked:
    """What one client saw for one order it asked for."""

    key: str
    errors_seen: list[str] = field(default_factory=list)  # error answers along the way (then retried)
    final_error: str | None = None  # it gave up: the trader was told the order failed
    order_ids: set[int] = field(default_factory=set)


def api_place(stack: Stack, trader: Trader, spec: Spec, asked: Asked, *, deadline_s: float = 40.0) -> None:
    """POST /api/v1/orders as a good client: same Idempotency-Key on every retry of a transient error."""
    import requests

    body = {
        "account_id": trader.account_id,
        "exchange": "NSE",
        "tradingsymbol": spec.tradingsymbol,
        "side": spec.side,
        "quantity": spec.quantity,
        "order_type": spec.order_type,
        "product": "MIS",
    }
    if spec.price is not None:
        body["price"] = str(spec.price)
    headers = {"Authorization": f"Bearer {trader.key}", "Idempotency-Key": asked.key}
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while True:
        attempt += 1
        try:
            response = requests.post(f"{stack.base_url}/api/v1/orders", json=body, headers=headers, timeout=30)
        except requests.RequestException as error:
            problem, retry_after = f"{type(error).__name__}", 0.0
        else:
            if response.status_code in (200, 201):
                asked.order_ids.add(response.json()["id"])
                return
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code < 500 and response.status_code != 429:
                asked.final_error = problem  # a refusal: shown, not retried
                return
            retry_after = float(response.headers.get("Retry-After") or 0)
        asked.errors_seen.append(problem)
        if time.monotonic() > deadline:
            asked.final_error = problem
            return
        time.sleep(max(retry_after, min(2.0, 0.2 * attempt)) + random.uniform(0, 0.2))


def api_flow(stack: Stack, trader: Trader, n: int, *, threads: int, prefix: str, seed: int) -> list[Asked]:
    """``n`` orders from ``threads`` concurrent clients; returns what each asked and saw."""
    specs = order_specs(n, seed)
    asked = [Asked(key=f"{prefix}-{i:03d}") for i in range(n)]
    jobs = list(zip(specs, asked, strict=True))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not jobs:
                    return
                spec, one = jobs.pop(0)
            api_place(stack, trader, spec, one)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return asked


def scheduled_create(trader: Trader, n: int, *, in_s: float, seed: int) -> list[int]:
    """``n`` one-off scheduled orders due in ``in_s`` seconds (a minute of grace for late fires)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from accounts.models import BrokerAccount, User
    from brokers.models import Instrument
    from orders import sources

    user = User.objects.get(pk=trader.user_id)
    account = BrokerAccount.objects.get(pk=trader.account_id)
    zone = ZoneInfo("Asia/Kolkata")
    due = (datetime.now(tz=zone) + timedelta(seconds=in_s + 1)).replace(microsecond=0)
    ids = []
    for spec in order_specs(n, seed):
        instrument = Instrument.objects.get(exchange="NSE", tradingsymbol=spec.tradingsymbol)
        row = sources.scheduled_save(
            owner=user,
            account=account,
            spec={
                "instrument": instrument,
                "side": spec.side,
                "quantity": spec.quantity,
                "order_type": spec.order_type,
                "product": "MIS",
                "validity": "DAY",
                "price": spec.price,
                "trigger_price": None,
            },
            recurrence="once",
            time_of_day=due.time(),
            timezone_name="Asia/Kolkata",
            run_on=due.date(),
            grace_s=60,
        )
        ids.append(row.pk)
    return ids


def unknown_outcomes(trader: Trader) -> int:
    """Placements whose answer was lost and could not be looked up at once (resolved later by tag)."""
    from orders.models import OrderEvent

    return db(lambda: OrderEvent.objects.filter(order__account_id=trader.account_id, kind="outcome_unknown").count())


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.2) -> float:
    """Poll ``check`` until true; returns the seconds it took. Raises TimeoutError naming ``what``."""
    started = time.monotonic()
    while True:
        if db(check):
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(step_s)


# --- The invariant checker ------------------------------------------------------------------------------------

# The platform statuses that agree with an exchange order's status (and fill).
AGREE = {
    ("OPEN", False): {"SUBMITTED", "OPEN"},
    ("TRIGGER PENDING", False): {"SUBMITTED", "OPEN"},
    ("OPEN", True): {"PARTIALLY_FILLED"},
    ("TRIGGER PENDING", True): {"PARTIALLY_FILLED"},
    ("COMPLETE", True): {"FILLED"},
    ("CANCELLED", False): {"CANCELLED"},
    ("CANCELLED", True): {"CANCELLED"},
    ("REJECTED", False): {"REJECTED"},
}


@dataclass
class Verdict:
    asked: int = 0
    at_broker: int = 0
    duplicates: int = 0
    lost: int = 0
    failures: int = 0  # things that failed that the trader must be told about
    shown: int = 0  # of those, told (order FAILED/REJECTED with a reason, or an API error answer)
    disagree: int = 0  # platform status or fill differs from the exchange's
    unsettled: int = 0  # orders still NEW (their outcome not known yet)
    reasons: Counter = field(default_factory=Counter)  # what the trader was told, per failure
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.duplicates or self.lost or self.disagree or self.unsettled or self.failures != self.shown)


def verify(trader: Trader, asked: dict[str, Asked], ask_of: Callable[[object], str | None]) -> Verdict:
    """Compare the trader's asks, the platform's orders and the exchange's orders for one account."""
    from brokers.paper.models import PaperOrder
    from orders.models import Order

    orders = list(Order.objects.filter(account_id=trader.account_id).order_by("pk"))
    paper = list(PaperOrder.objects.filter(client__user_id=trader.client_id))
    v = Verdict(asked=len(asked))
    by_ask = defaultdict(list)
    for order in orders:
        by_ask[ask_of(order)].append(order)
    for order in by_ask.pop(None, []):
        v.duplicates += 1
        v.problems.append(f"{order.reference}: an order nobody asked for")
    for key, one in asked.items():
        placed = by_ask.get(key, [])
        if len(placed) > 1:
            v.duplicates += len(placed) - 1
            v.problems.append(f"{key}: {len(placed)} orders")
        if not placed:
            v.failures += 1
            if one.final_error:
                v.shown += 1
                v.reasons[f"no order: {one.final_error}"] += 1
            else:
                v.lost += 1
                v.problems.append(f"{key}: no order and no error")
        if one.order_ids and {o.pk for o in placed} and not one.order_ids <= {o.pk for o in placed}:
            v.problems.append(f"{key}: the client was given order {sorted(one.order_ids)}, not its own")
            v.lost += 1
        if one.errors_seen and not one.final_error and placed:
            pass  # the client saw errors and retried to success: shown, nothing failed in the end
    tags = Counter(p.tag for p in paper)
    references = {o.reference for o in orders}
    for tag, n in tags.items():
        if n > 1:
            v.duplicates += n - 1
            v.problems.append(f"{tag}: {n} orders at the exchange")
        if tag not in references:
            v.duplicates += n
            v.problems.append(f"{tag}: at the exchange, unknown to the platform")
    by_tag = {p.tag: p for p in paper}
    for order in orders:
        at = by_tag.get(order.reference)
        told = bool(order.reject_reason) and order.events.filter(to_status=order.status).exists()
        if at is not None:
            v.at_broker += 1
            if order.status == "NEW":
                v.unsettled += 1
                v.problems.append(f"{order.reference}: NEW, at the exchange {at.status}")
                continue
            want = AGREE.get((at.status, at.filled_quantity > 0), set())
            if order.status not in want or order.filled_quantity != at.filled_quantity:
                v.disagree += 1
                v.problems.append(
                    f"{order.reference}: platform {order.status} {order.filled_quantity}, "
                    f"exchange {at.status} {at.filled_quantity}"
                )
            if at.status == "REJECTED":
                v.failures += 1
                v.shown += told
                v.reasons[f"{order.status}: {order.reject_reason}"] += 1
        elif order.status in ("FAILED", "REJECTED"):
            v.failures += 1
            v.shown += told
            v.reasons[f"{order.status}: {order.reject_reason}"] += 1
            if not told:
                v.problems.append(f"{order.reference}: {order.status} without a reason")
        elif order.status == "NEW" or (order.status == "SUBMITTED" and not order.broker_order_id):
            v.unsettled += 1
            v.problems.append(f"{order.reference}: {order.status}, not at the exchange (yet)")
        else:
            v.lost += 1
            v.problems.append(f"{order.reference}: {order.status} on the platform, not at the exchange")
    return v


def api_ask_of(trader: Trader) -> Callable:
    prefix = f"{trader.user_id}:api:"
    return lambda order: (
        order.idempotency_key[len(prefix) :] if (order.idempotency_key or "").startswith(prefix) else None
    )


def scheduled_ask_of(order) -> str | None:
    return f"scheduled #{order.scheduled_id}" if order.scheduled_id else None


def scheduled_check(trader: Trader, ids: list[int]) -> Callable[[], Verdict]:
    """The check for scheduled orders: a fire that placed nothing must say why (failed or missed)."""

    def check() -> Verdict:
        from orders.models import ScheduledFire

        asks = {f"scheduled #{pk}": Asked(key=f"scheduled #{pk}") for pk in ids}
        for scheduled_id, status, detail in ScheduledFire.objects.filter(scheduled_id__in=ids).values_list(
            "scheduled_id", "status", "detail"
        ):
            if status in (ScheduledFire.Status.FAILED, ScheduledFire.Status.MISSED) and detail:
                asks[f"scheduled #{scheduled_id}"].final_error = detail
        return verify(trader, asks, scheduled_ask_of)

    return check


# --- Scenarios -------------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)  # scenario-specific checks (not order counts)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.skipped) or (self.verdict is not None and self.verdict.clean and not self.failed_checks)


@dataclass
class Pending:
    """A scenario's check, repeated until clean or its deadline (the platform may still be settling)."""

    result: Result
    check: Callable[[], Verdict]
    deadline: float  # time.monotonic()

    def settle(self, *, until: float | None = None) -> None:
        stop = min(self.deadline, until) if until is not None else self.deadline
        while True:
            self.result.verdict = db(self.check)
            if self.result.verdict.clean or time.monotonic() >= stop:
                return
            time.sleep(1.0)


def s_broker_faults(stack: Stack) -> Pending:
    result = Result("broker 5xx, 429, timeouts")
    trader = trader_create(result.name, latency_ms=30, error_rate=0.25, timeout_rate=0.25, rate_limit_per_s=4)
    asked = api_flow(stack, trader, 24, threads=6, prefix="faults", seed=1)
    knobs_set(trader.client_id)  # the exchange recovers; the platform reconciles what is open
    result.notes.append(f"{unknown_outcomes(trader)} answers lost, looked up later")
    return api_flow_checked(result, trader, asked)


def s_kite_timeouts(stack: Stack) -> Pending:
    """Real HTTP timeouts: a ``kite`` account through the paper exchange's Kite face, which turns
    slower than ``KITE_TIMEOUT_S`` every other second while clients place orders (the face does
    the work after the caller gave up: the answer is lost, the order is at the exchange)."""
    from django.contrib.auth.hashers import make_password
    from django.db import connection

    from accounts import services as account_services
    from accounts.models import User
    from brokers import services as broker_services
    from brokers.paper import engine
    from brokers.paper.models import PaperClient

    result = Result("kite face timeouts")
    user = User.objects.create_user(username="fault_kite", password=None)
    client = PaperClient.objects.create(
        user_id=f"K{user.pk:05d}", name="Faults kite", password=make_password("faults"), cash=Decimal("1000000000")
    )
    account = account_services.broker_account_create(
        owner=user,
        broker="kite",
        client_id=client.user_id,
        label="Faults kite",
        credentials={"api_key": client.api_key, "api_secret": client.api_secret},
    )
    # The trader logs in on the face's page; the platform's callback completes the session.
    _, request_token = engine.login_with_password(api_key=client.api_key, user_id=client.user_id, password="faults")
    broker_services.connect_complete(account=account, request_token=request_token, actor=user)
    _, raw = account_services.api_key_create(owner=user, name="faults")
    trader = Trader(result.name, user.pk, account.pk, client.user_id, raw)

    stop = threading.Event()
    flips = []

    def flap():
        try:
            while not stop.is_set():
                slow = len(flips) % 2 == 0
                knobs_set(client.user_id, latency_ms=int(KITE_TIMEOUT_S * 1000) + 800 if slow else 0)
                flips.append(slow)
                stop.wait(1.5)
        finally:
            connection.close()

    flapper = threading.Thread(target=flap, daemon=True)
    flapper.start()
    asked = api_flow(stack, trader, 12, threads=3, prefix="kite", seed=9)
    stop.set()
    flapper.join()
    knobs_set(client.user_id)
    result.notes.append(f"{len(flips) // 2} slow spells; {unknown_outcomes(trader)} answers lost, looked up later")
    return api_flow_checked(result, trader, asked)


def api_flow_checked(result: Result, trader, asked) -> Pending:
    """The check of an API order flow's scenario, once its orders have settled."""
    result.notes.append(f"{sum(len(a.errors_seen) for a in asked)} error answers retried")
    asks = {a.key: a for a in asked}
    return Pending(result, lambda: verify(trader, asks, api_ask_of(trader)), time.monotonic() + STALE_ORDER_S + 20)


def s_worker_killed(stack: Stack) -> Pending:
    """Kill the worker while its threads wait on a slow exchange inside ``fire_scheduled``."""
    import redis

    from orders.models import Order, ScheduledFire

    result = Result("worker killed mid-task")
    trader = trader_create(result.name, latency_ms=4000)
    ids = scheduled_create(trader, 3, in_s=2, seed=2)
    wait_for(  # prepared ahead (NEW), then taken to be sent at their time: mid-placement
        lambda: (
            ScheduledFire.objects.filter(scheduled_id__in=ids, status="placing").count() == len(ids)
            and Order.objects.filter(scheduled_id__in=ids, status="NEW").count() == len(ids)
        ),
        30,
        "the scheduled orders to be mid-placement",
    )
    client = redis.Redis.from_url(stack.redis_url)
    stack.kill("worker")
    # Fires due at the same time go to a worker as one task: at least it is left unacknowledged,
    # with whatever else the worker held (periodic jobs waiting for a thread).
    unacked = _unacked_tasks(client)
    # Each delivery of a task logs "Task <name>[<id>] received" once.
    received = lambda: {i: _log_count(stack, "worker", f"[{i}] received") for i in unacked}  # noqa: E731
    delivered = received()
    kinds = Counter(name.rsplit(".", 1)[-1] for name in unacked.values())
    held = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    result.notes.append(f"{len(unacked)} unacked after SIGKILL ({held})")
    if not kinds["fire_scheduled"]:
        result.failed_checks.append("the killed worker's fire task was not left unacknowledged")
    knobs_set(trader.client_id)
    killed_at = time.monotonic()
    stack.start("worker")
    try:
        wait_for(
            lambda: all(n > delivered[i] for i, n in received().items()),
            VISIBILITY_TIMEOUT_S + 40,
            "the unacknowledged tasks delivered again",
        )
        result.notes.append(f"its tasks delivered again {time.monotonic() - killed_at:.0f} s after the kill")
        wait_for(
            lambda: not ScheduledFire.objects.filter(scheduled_id__in=ids, status="pending").exists(),
            30,
            "the killed worker's fires to be run again",
        )
    except TimeoutError as error:
        result.failed_checks.append(str(error))
    # The killed worker held the account's monitoring lock: until it expires the account is not
    # reconciled, so its orders stuck in NEW are closed only then (a finding, see the README).
    from django.utils import timezone

    from monitoring.cycle import ACCOUNT_LOCK_TTL_S
    from monitoring.models import AccountRun

    killed = timezone.now()
    check = scheduled_check(trader, ids)

    def check_and_note() -> Verdict:
        runs = AccountRun.objects.filter(account_id=trader.account_id, started_at__gte=killed)
        first = runs.exclude(status=AccountRun.Status.SKIPPED).order_by("started_at").first()
        skipped = runs.filter(status=AccountRun.Status.SKIPPED).count()
        note = f"account's monitoring skipped {skipped}x" + (
            f", back {(first.started_at - killed).total_seconds():.0f} s after the kill" if first else ""
        )
        result.notes[:] = [n for n in result.notes if not n.startswith("account's monitoring")] + [note]
        return check()

    return Pending(result, check_and_note, time.monotonic() + ACCOUNT_LOCK_TTL_S + STALE_ORDER_S)


def s_redis_restarted(stack: Stack) -> Pending:
    """Redis dies during a monitoring cycle of the account and comes back empty; orders keep coming."""
    from monitoring.models import AccountRun, MonitoringRun

    result = Result("redis restarted mid-cycle")
    trader = trader_create(result.name, latency_ms=300)
    asked = api_flow(stack, trader, 6, threads=3, prefix="before", seed=3)
    # A cycle that covers this account and has not finished it yet.
    since = db(lambda: MonitoringRun.objects.order_by("-pk").values_list("pk", flat=True).first() or 0)
    wait_for(
        lambda: MonitoringRun.objects.filter(pk__gt=since).exists(),
        MONITORING_INTERVAL_S * 3,
        "a monitoring cycle to start",
    )
    run_id = db(lambda: MonitoringRun.objects.filter(pk__gt=since).order_by("pk").values_list("pk", flat=True)[0])
    knobs_set(trader.client_id, latency_ms=2500)  # this account's part of the cycle takes seconds
    time.sleep(0.5)
    in_cycle = not db(lambda: AccountRun.objects.filter(run_id=run_id, account_id=trader.account_id).exists())
    down_at = time.time()
    stack.kill("redis")
    during: list[Asked] = []
    flow = threading.Thread(
        target=lambda: during.extend(api_flow(stack, trader, 6, threads=3, prefix="during", seed=4)), daemon=True
    )
    flow.start()
    time.sleep(3)
    stack.start("redis")
    up_at = time.time()
    flow.join()
    knobs_set(trader.client_id)
    result.notes.append(f"down {up_at - down_at:.0f} s" + (" during the account's cycle" if in_cycle else ""))
    if not in_cycle:
        result.notes.append("(its cycle had just finished: timing)")
    # The platform comes back by itself: a later cycle runs the account cleanly.
    from datetime import UTC, datetime

    back = datetime.fromtimestamp(up_at, tz=UTC)
    try:
        took = wait_for(
            lambda: AccountRun.objects.filter(
                account_id=trader.account_id, started_at__gt=back, status=AccountRun.Status.OK
            ).exists(),
            MONITORING_INTERVAL_S * 8,
            "a clean monitoring run after Redis came back",
        )
        result.notes.append(f"clean cycle {took:.0f} s after")
    except TimeoutError as error:
        result.failed_checks.append(str(error))
    with_errors = db(
        lambda: AccountRun.objects.filter(account_id=trader.account_id, status=AccountRun.Status.ERRORS).count()
    )
    result.notes.append(f"{with_errors} cycle(s) with errors shown")
    for name in ("web", "worker", "beat"):
        if not stack[name].alive():
            result.failed_checks.append(f"{name} exited after the Redis restart")
    all_asked = asked + during
    result.notes.append(f"{sum(len(a.errors_seen) for a in all_asked)} error answers retried")
    asks = {a.key: a for a in all_asked}
    return Pending(result, lambda: verify(trader, asks, api_ask_of(trader)), time.monotonic() + STALE_ORDER_S + 20)


def s_db_dropped(stack: Stack) -> Pending | Result:
    """KILL every MariaDB connection of the platform's database, three times, during order flow."""
    result = Result("db connections dropped")
    if not stack.mysql:
        result.skipped = "SQLite: no server connections to drop"
        return result
    import MySQLdb

    from brokers.paper.models import PaperFeedState

    trader = trader_create(result.name, latency_ms=150)
    from django.db import connection

    connection.close()
    admin = MySQLdb.connect(
        host=stack.mysql["HOST"] or "127.0.0.1",
        port=int(stack.mysql["PORT"] or 3306),
        user=stack.mysql["USER"],
        passwd=stack.mysql["PASSWORD"] or "",
    )
    asked: list[Asked] = []
    flow = threading.Thread(
        target=lambda: asked.extend(api_flow(stack, trader, 16, threads=4, prefix="db", seed=5)), daemon=True
    )
    flow.start()
    killed = 0
    try:
        cursor = admin.cursor()
        for _ in range(3):
            time.sleep(0.8)
            cursor.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
                (stack.db_name,),
            )
            for (conn_id,) in cursor.fetchall():
                with contextlib.suppress(MySQLdb.OperationalError):
                    cursor.execute(f"KILL {int(conn_id)}")
                    killed += 1
    finally:
        admin.close()
    flow.join()
    result.notes.append(f"{killed} connections killed")
    # Every process is still up and periodic jobs still run.
    tick = db(lambda: PaperFeedState.objects.values_list("tick_no", flat=True).first() or 0)
    try:
        wait_for(
            lambda: (PaperFeedState.objects.values_list("tick_no", flat=True).first() or 0) > tick + 2,
            15,
            "the market tick to go on",
        )
    except TimeoutError as error:
        result.failed_checks.append(str(error))
    for name in ("web", "worker", "beat"):
        if not stack[name].alive():
            result.failed_checks.append(f"{name} exited after its connection was killed")
    return api_flow_checked(result, trader, asked)


def s_dispatch_twice(stack: Stack) -> Pending:
    """Each claimed fire is delivered two more times at once (a redelivery, a second dispatcher)."""
    from orders import sources
    from orders.models import ScheduledFire
    from orders.tasks import fire_scheduled

    result = Result("scheduled dispatch twice")
    trader = trader_create(result.name, latency_ms=400)
    ids = scheduled_create(trader, 4, in_s=2, seed=6)
    wait_for(lambda: ScheduledFire.objects.filter(scheduled_id__in=ids).count() == len(ids), 20, "the fires")
    fires = db(lambda: list(ScheduledFire.objects.filter(scheduled_id__in=ids).values_list("pk", flat=True)))
    for _ in range(2):
        for fire_id in fires:
            fire_scheduled.delay(fire_id)
    again = db(sources.scheduled_claim_due)  # a second dispatcher claiming the same due times
    result.notes.append(f"{len(fires)} fires sent 3 times; re-claim got {len(again)}")
    wait_for(lambda: not ScheduledFire.objects.filter(scheduled_id__in=ids, status="pending").exists(), 30, "the fires")
    knobs_set(trader.client_id)
    return Pending(result, scheduled_check(trader, ids), time.monotonic() + 30)


def s_same_key(stack: Stack) -> Pending:
    """Two clients send each idempotency key at the same moment."""
    result = Result("same key, two clients")
    trader = trader_create(result.name, latency_ms=300)
    specs = order_specs(8, seed=7)
    pairs = [(Asked(f"twice-{i}"), Asked(f"twice-{i}")) for i in range(len(specs))]
    threads = []
    for spec, pair in zip(specs, pairs, strict=True):
        barrier = threading.Barrier(2)
        for one in pair:

            def send(one=one, spec=spec, barrier=barrier):
                barrier.wait()
                api_place(stack, trader, spec, one)

            threads.append(threading.Thread(target=send, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    knobs_set(trader.client_id)
    differ = sum(1 for a, b in pairs if a.order_ids != b.order_ids)
    errors = sum(1 for pair in pairs for one in pair if one.final_error)
    result.notes.append(f"both clients got the same order {len(pairs) - differ}/{len(pairs)}")
    if differ:
        result.failed_checks.append(f"{differ} key(s) answered with different orders")
    if errors:
        result.failed_checks.append(f"{errors} client(s) got an error for a repeated key")
    asks = {
        a.key: Asked(a.key, a.errors_seen + b.errors_seen, a.final_error, a.order_ids | b.order_ids) for a, b in pairs
    }
    return Pending(result, lambda: verify(trader, asks, api_ask_of(trader)), time.monotonic() + 30)


def s_two_beats(stack: Stack) -> Pending:
    """A second beat by mistake: each periodic job still runs once per interval."""
    from brokers.paper.models import PaperFeedState
    from monitoring.models import MonitoringRun
    from orders.models import ScheduledFire

    result = Result("two beats")
    trader = trader_create(result.name)
    window_s = 15.0
    stack.start("beat2", stack.procfile["beat"])
    time.sleep(3)  # the second beat's start-up
    ids = scheduled_create(trader, 3, in_s=3, seed=8)
    started = time.time()
    skipped0 = _skipped_runs(stack)
    tick0 = db(lambda: PaperFeedState.objects.values_list("tick_no", flat=True).first() or 0)
    time.sleep(window_s)
    tick1 = db(lambda: PaperFeedState.objects.values_list("tick_no", flat=True).first() or 0)
    from datetime import UTC, datetime

    since = datetime.fromtimestamp(started, tz=UTC)
    in_window = MonitoringRun.objects.filter(started_at__gte=since).order_by("started_at")
    runs = db(lambda: list(in_window.values_list("started_at", flat=True)))
    skipped = _skipped_runs(stack) - skipped0
    stack.stop("beat2")
    ticks = tick1 - tick0
    gaps = [(b - a).total_seconds() for a, b in zip(runs, runs[1:], strict=False)]
    result.notes.append(
        f"{ticks} ticks (every 1 s) and {len(runs)} cycles (every {MONITORING_INTERVAL_S} s) in {window_s:.0f} s, "
        f"{skipped} second sends skipped"
    )
    if ticks > window_s / 0.8 + 1:
        result.failed_checks.append(f"the 1 s market tick ran {ticks} times in {window_s:.0f} s")
    if len(runs) > window_s / (0.8 * MONITORING_INTERVAL_S) + 1 or any(
        g < 0.8 * MONITORING_INTERVAL_S - 0.2 for g in gaps
    ):
        result.failed_checks.append(f"monitoring cycles {len(runs)} in {window_s:.0f} s, gaps {gaps}")
    if not stack["beat"].alive():
        result.failed_checks.append("the first beat exited")
    wait_for(lambda: ScheduledFire.objects.filter(scheduled_id__in=ids).count() == len(ids), 20, "the fires")
    return Pending(result, scheduled_check(trader, ids), time.monotonic() + 30)


def _unacked_tasks(client) -> dict[str, str]:
    """The task id and name of each message in kombu's Redis ``unacked`` hash."""
    tasks = {}
    for raw in client.hvals("unacked"):
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            headers = json.loads(raw)[0]["headers"]
            tasks[headers["id"]] = headers["task"]
    return tasks


def _log_count(stack: Stack, name: str, text: str) -> int:
    """How often ``text`` appears in a process's log so far."""
    with contextlib.suppress(OSError, KeyError):
        return stack[name].log_path.read_text(errors="replace").count(text)
    return 0


def _skipped_runs(stack: Stack) -> int:
    """Periodic jobs the worker skipped because their interval's lock was taken (from its log)."""
    return _log_count(stack, "worker", "s: 'skipped'")


# Long-settling ones first, so their waiting overlaps the others.
SCENARIOS = {
    "worker": s_worker_killed,
    "broker": s_broker_faults,
    "kite": s_kite_timeouts,
    "same-key": s_same_key,
    "dispatch": s_dispatch_twice,
    "beats": s_two_beats,
    "db": s_db_dropped,
    "redis": s_redis_restarted,
}


# --- Running and the table ----------------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    head = ("scenario", "orders asked", "orders at broker", "duplicates", "lost", "errors shown", "result", "notes")
    rows = []
    for r in results:
        if r.skipped:
            rows.append((r.name, "-", "-", "-", "-", "-", "skipped", r.skipped))
            continue
        v = r.verdict or Verdict()
        extra = []
        if v.disagree:
            extra.append(f"{v.disagree} statuses disagree")
        if v.unsettled:
            extra.append(f"{v.unsettled} unsettled")
        rows.append(
            (
                r.name,
                str(v.asked),
                str(v.at_broker),
                str(v.duplicates),
                str(v.lost),
                f"{v.shown}/{v.failures}",
                "ok" if r.ok else "FAIL",
                "; ".join(extra + r.notes + r.failed_checks),
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    started = time.monotonic()
    # Its own Redis (the embedded one, on a free port): the Redis scenario restarts it.
    stack = Stack(env=STACK_ENV, redis_url="", name="faults")
    # A kite account trades through this stack's Kite face, with a short timeout (the face slows down).
    face = stack.face_url
    stack.env.update(KITE_API_URL=face, KITE_LOGIN_URL=f"{face}/connect/login", KITE_TIMEOUT_S=str(KITE_TIMEOUT_S))
    with stack:
        print(f"# stack up in {stack.up_s:.0f} s ({'MariaDB' if stack.mysql else 'SQLite'}); logs in {stack.dir}")
        django_setup(stack.env)
        pending: list[Pending] = []
        results: list[Result] = []
        for name in chosen:
            t0 = time.monotonic()
            try:
                outcome = SCENARIOS[name](stack)
            except Exception as error:  # a scenario that cannot run is a failure, the others still run
                outcome = Result(name)
                outcome.failed_checks.append(f"{type(error).__name__}: {error}"[:300])
                outcome.verdict = Verdict()
            if isinstance(outcome, Pending):
                outcome.settle(until=time.monotonic() + 10)
                pending.append(outcome)
                results.append(outcome.result)
            else:
                results.append(outcome)
            print(f"# {results[-1].name}: {time.monotonic() - t0:.0f} s", flush=True)
        for p in pending:
            if not p.result.verdict or not p.result.verdict.clean:
                p.settle()
        print(table(results))
        for r in results:
            for reason, n in r.verdict.reasons.most_common() if r.verdict else []:
                print(f"# {r.name}: {n} told {reason[:150]!r}")
        failed = [r for r in results if not r.ok]
        for r in failed:
            for problem in (r.verdict.problems if r.verdict else [])[:10]:
                print(f"#   {r.name}: {problem}")
        if failed:
            print(f"# process logs in {stack.dir}", file=sys.stderr)
    print(f"# {len(results) - len(failed)}/{len(results)} scenarios clean in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
