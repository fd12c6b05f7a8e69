"""Prometheus metrics: every definition, the helpers the platform calls, and the scrape.

The platform runs several processes (web, Celery worker, beat), so metrics use
prometheus_client's multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (the run
scripts set it to ``var/prometheus`` and empty it at start): each process writes its
values to memory-mapped files there and a scrape of ``/metrics`` in any web process adds
them up. Without the variable (tests, a shell) the metrics live in this process only.

The helpers are what the order path calls: they touch only in-memory values (no
database, no Redis) so they cost microseconds. Celery's queue depth is read from Redis
at scrape time instead.
"""

import logging
import os
import time
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)
broker_logger = logging.getLogger("brokers.calls")

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
if MULTIPROCESS:  # a process started without the run scripts must not fail on a missing directory
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

ORDERS_PLACED = Counter(
    "tp_orders_placed_total",
    "Orders the broker accepted, by broker, order type and source.",
    ["broker", "order_type", "source"],
)
ORDERS_REJECTED = Counter(
    "tp_orders_rejected_total",
    "Orders refused by the broker (status rejected) or that never reached it (status failed), with the reason.",
    ["broker", "order_type", "source", "status", "reason"],
)
ORDERS_UNKNOWN = Counter(
    "tp_orders_outcome_unknown_total",
    "Orders whose broker answer was lost (to be looked up by tag).",
    ["broker", "order_type", "source"],
)
BROKER_CALL_SECONDS = Histogram(
    "tp_broker_call_seconds",
    "Duration of one broker call (after the rate budget was taken), by broker, method and outcome.",
    ["broker", "method", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RATE_BUDGET_WAIT_SECONDS = Histogram(
    "tp_rate_budget_wait_seconds",
    "Time a call waited for a slot in the account's rate budget (0 when a slot was free), by broker and call kind.",
    ["broker", "kind"],
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RATE_BUDGET_EXHAUSTED = Counter(
    "tp_rate_budget_exhausted_total",
    "Calls refused because the account's rate budget had no slot in time, by broker and call kind.",
    ["broker", "kind"],
)
MONITORING_ACCOUNT_SECONDS = Histogram(
    "tp_monitoring_account_cycle_seconds",
    "Time one account's monitoring cycle spent in its steps, by result (ok, errors).",
    ["status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
MONITORING_ACCOUNT_RUNS = Counter(
    "tp_monitoring_account_runs_total",
    "Monitoring cycles of one account, by result (ok, errors, skipped: the account was already being run).",
    ["status"],
)
MONITORING_STEP_SECONDS = Histogram(
    "tp_monitoring_step_seconds",
    "Duration of one monitoring step for one account.",
    ["step"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MONITORING_STEP_ERRORS = Counter(
    "tp_monitoring_step_errors_total",
    "Monitoring steps that failed or were skipped for one account.",
    ["step"],
)
WEBSOCKETS = Gauge(
    "tp_websocket_connections",
    "Open dashboard websockets (summed over the live web processes).",
    multiprocess_mode="livesum",
)

# Broker methods that change orders are logged at INFO; reads (the monitoring cycle's
# fetches, look-ups) at DEBUG, so a busy desk's logs are about orders.
_ORDER_METHODS = {"place_order", "modify_order", "cancel_order"}


# --- Helpers the platform calls ------------------------------------------------------------


def order_outcome(order) -> None:
    """Count an order's placement outcome (``orders.services.order_submit`` calls this once)."""
    labels = (order.account.broker, order.order_type, order.source)
    status = order.status
    if status in ("REJECTED", "FAILED"):
        ORDERS_REJECTED.labels(*labels, status.lower(), order.reject_kind or "other").inc()
    elif order.broker_order_id:  # SUBMITTED, or further already (the broker's answer or update said so)
        ORDERS_PLACED.labels(*labels).inc()
    elif status == "SUBMITTED":
        ORDERS_UNKNOWN.labels(*labels).inc()


@contextmanager
def broker_call(account, method: str, args: tuple = ()):
    """Time one broker call and log it (with the request id the log filter adds)."""
    started = time.perf_counter()
    outcome = "ok"
    try:
        yield
    except BaseException as error:
        outcome = type(error).__name__
        raise
    finally:
        broker_call_done(account, method, args, outcome, time.perf_counter() - started)


def broker_call_done(account, method: str, args: tuple, outcome: str, elapsed: float) -> None:
    """Record a broker call that took ``elapsed`` seconds: ``outcome`` is "ok" or its error's type name."""
    BROKER_CALL_SECONDS.labels(account.broker, method, outcome).observe(elapsed)
    level = logging.INFO if method in _ORDER_METHODS else logging.DEBUG
    if broker_logger.isEnabledFor(level):
        first = args[0] if args else None
        # The order's reference (the tag) or the broker's order id: what lets you follow an order.
        order_ref = getattr(first, "tag", None) or (first if isinstance(first, str) else None)
        broker_logger.log(
            level,
            "broker call %s %s: %s in %.1f ms",
            account.broker,
            method,
            outcome,
            elapsed * 1000,
            extra={
                "broker": account.broker,
                "account_id": account.pk,
                "method": method,
                "outcome": outcome,
                "duration_ms": round(elapsed * 1000, 2),
                "order_ref": order_ref,
            },
        )


def rate_budget_waited(broker: str, kind: str, waited_s: float) -> None:
    RATE_BUDGET_WAIT_SECONDS.labels(broker, kind).observe(waited_s)


def rate_budget_exhausted(broker: str, kind: str) -> None:
    RATE_BUDGET_EXHAUSTED.labels(broker, kind).inc()


def account_run_observed(run):
    """Count one account's monitoring run and its step durations (the ones ``AccountRun`` records)."""
    MONITORING_ACCOUNT_RUNS.labels(run.status).inc()
    if run.step_ms:
        for step, ms in run.step_ms.items():
            MONITORING_STEP_SECONDS.labels(step).observe(ms / 1000)
        MONITORING_ACCOUNT_SECONDS.labels(run.status).observe(sum(run.step_ms.values()) / 1000)
    for error in run.errors or ():
        MONITORING_STEP_ERRORS.labels(error.get("step", "?")).inc()
    return run


def websocket_opened(consumer) -> None:
    consumer._counted_in_metrics = True
    WEBSOCKETS.inc()


def websocket_closed(consumer) -> None:
    if getattr(consumer, "_counted_in_metrics", False):
        consumer._counted_in_metrics = False
        WEBSOCKETS.dec()


# --- The scrape ----------------------------------------------------------------------------

# Kombu's Redis transport keeps a queue's messages in a list named after it, plus one
# list per priority step ("<queue>\x06\x16<priority>").
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (3, 6, 9)


class CeleryQueueCollector:
    """``tp_celery_queue_depth``: messages waiting in each Celery queue, read from Redis at scrape time."""

    def collect(self):
        from django.conf import settings

        if not settings.REDIS_URL:
            return
        from tradingplatform.locks import redis_client

        queues = [settings.CELERY_TASK_DEFAULT_QUEUE]
        family = GaugeMetricFamily(
            "tp_celery_queue_depth", "Messages waiting in a Celery queue (not yet taken by a worker).", labels=["queue"]
        )
        try:
            client = redis_client()
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.llen(queue)
                for priority in _KOMBU_PRIORITY_STEPS:
                    pipe.llen(f"{queue}{_KOMBU_PRIORITY_SEP}{priority}")
            lengths = pipe.execute()
        except Exception as exc:  # a scrape reports what it can; Redis being down shows in /readyz
            logger.warning("could not read Celery queue depth from Redis: %s", type(exc).__name__)
            return
        per_queue = 1 + len(_KOMBU_PRIORITY_STEPS)
        for index, queue in enumerate(queues):
            family.add_metric([queue], sum(lengths[index * per_queue : (index + 1) * per_queue]))
        yield family


class _ThisProcess:
    """The default registry's metrics (single-process mode)."""

    def collect(self):
        return REGISTRY.collect()


def render() -> bytes:
    """The text exposition of every metric: all processes' values in multiprocess mode."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(CeleryQueueCollector())
    return generate_latest(registry)


def mark_this_process_dead() -> None:
    """Drop this process's live gauges (websocket count) from the shared directory at exit."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


if MULTIPROCESS:
    import atexit

    atexit.register(mark_this_process_dead)
