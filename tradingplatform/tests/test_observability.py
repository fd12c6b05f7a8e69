"""Metrics at /metrics, request ids from HTTP through Celery to the broker call, JSON logs without secrets."""

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from decimal import Decimal
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from celery.signals import before_task_publish
from django.conf import settings as django_settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from accounts import services as account_services
from accounts.tests.factories import make_broker_account
from brokers import ratelimit
from brokers.errors import RateLimited
from brokers.paper import engine
from brokers.paper.models import PaperClient
from monitoring import cycle
from monitoring.models import AccountRun
from monitoring.tasks import heartbeat, monitor_account
from orders import sources
from orders.models import Order
from orders.tests.factories import instrument, place
from tradingplatform import background, locks, logs, metrics
from tradingplatform.testing import database_url, requires_redis

TOKEN = "metrics-token-0123456789abcdef"


def read_metrics() -> dict:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    return parse(metrics.render().decode())


def parse(text: str) -> dict:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def json_logs():
    """Every log record from here on, through the real filter and JSON formatter, as dicts."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def api(client, trader):
    _, secret = account_services.api_key_create(owner=trader, name="bot")
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    client.api_secret = secret
    return client


def signal_post(api, account, request_id: str):
    """A strategy's entry through the API: its fill is what queues the account's monitoring run
    (a manual order's fill is applied and recorded without one)."""
    strategy, _ = sources.strategy_save(
        owner=account.owner, name="Traced", account_ids=[account.pk], stop_loss=Decimal("5"), take_profit=Decimal("5")
    )
    body = {"id": f"signal-{request_id}", "tradingsymbol": "INFY", "side": "BUY", "quantity": 1}
    response = api.post(
        f"/api/v1/strategies/{strategy.pk}/signal", body, content_type="application/json", HTTP_X_REQUEST_ID=request_id
    )
    assert response.status_code == 201, response.json()
    (placed,) = response.json()["results"]
    return response, placed["reference"]


# --- /metrics access -----------------------------------------------------------------------


def test_anonymous_and_wrong_tokens_are_refused_with_401(client, db, settings):
    settings.METRICS_TOKEN = TOKEN
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong-token-0123456789"}, {"HTTP_AUTHORIZATION": TOKEN}):
        response = client.get("/metrics", **headers)
        assert response.status_code == 401, headers
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"tp_" not in response.content


def test_no_token_is_accepted_when_none_is_configured(client, db, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_a_trader_is_refused(client, trader, settings):
    settings.METRICS_TOKEN = TOKEN
    client.force_login(trader)
    assert client.get("/metrics").status_code == 404


def test_staff_and_the_token_get_the_metrics(client, staff, settings):
    settings.METRICS_TOKEN = TOKEN
    client.force_login(staff)
    by_staff = client.get("/metrics")
    by_token = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    for response in (by_staff, by_token):
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain")
        text = response.content.decode()
        for name in ("tp_orders_placed_total", "tp_broker_call_seconds", "tp_websocket_connections"):
            assert f"# TYPE {name}" in text
    assert client.post("/metrics").status_code == 405


# --- Metrics move ----------------------------------------------------------------------------


def test_placed_and_rejected_orders_and_broker_latency_are_counted(trader, account):
    before = read_metrics()
    filled = place(trader, account, quantity=2)
    banded = place(trader, account, order_type="LIMIT", price="2500")  # outside the paper exchange's band
    after = read_metrics()
    assert filled.status == Order.Status.FILLED and banded.status == Order.Status.REJECTED

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("tp_orders_placed_total", broker="paper", order_type="MARKET", source="manual") == 1
    assert delta("tp_orders_placed_total", broker="paper", order_type="LIMIT", source="manual") == 0
    rejected = {"broker": "paper", "order_type": "LIMIT", "source": "manual", "status": "rejected"}
    assert delta("tp_orders_rejected_total", **rejected, reason="price_band") == 1
    ok = {"broker": "paper", "method": "place_order", "outcome": "ok"}
    assert delta("tp_broker_call_seconds_count", **ok) == 1
    assert delta("tp_broker_call_seconds_sum", **ok) > 0
    assert delta("tp_broker_call_seconds_bucket", **ok, le="+Inf") == 1
    assert delta("tp_broker_call_seconds_count", broker="paper", method="place_order", outcome="OrderRejected") == 1


def test_an_order_the_broker_never_got_counts_as_failed(trader, account):
    engine.client_get_or_create(user_id=account.client_id)
    PaperClient.objects.filter(user_id=account.client_id).update(error_rate=1)
    before = read_metrics()
    order = place(trader, account)
    after = read_metrics()
    labels = {"broker": "paper", "order_type": "MARKET", "source": "manual"}
    assert order.status == Order.Status.SUBMITTED and order.broker_order_id is None
    assert (
        value(after, "tp_orders_outcome_unknown_total", **labels)
        - value(before, "tp_orders_outcome_unknown_total", **labels)
        == 1
    )
    assert value(after, "tp_orders_placed_total", **labels) == value(before, "tp_orders_placed_total", **labels)


def test_rate_budget_waits_and_refusals_are_counted(db):
    labels = {"broker": "paper", "kind": "orders"}
    before = read_metrics()
    ratelimit.acquire(990001, "paper", "orders", [(1, 1.0)], wait=True)
    waited = ratelimit.acquire(990001, "paper", "orders", [(1, 1.0)], wait=True)  # the window is full: waits
    ratelimit.acquire(990002, "paper", "orders", [(1, 3600.0)], wait=False)
    with pytest.raises(RateLimited):
        ratelimit.acquire(990002, "paper", "orders", [(1, 3600.0)], wait=False)
    after = read_metrics()
    assert waited > 0
    assert (
        value(after, "tp_rate_budget_wait_seconds_count", **labels)
        - value(before, "tp_rate_budget_wait_seconds_count", **labels)
        == 3
    )
    assert (
        value(after, "tp_rate_budget_wait_seconds_bucket", **labels, le="0.0")
        - value(before, "tp_rate_budget_wait_seconds_bucket", **labels, le="0.0")
        == 2
    )
    assert value(after, "tp_rate_budget_wait_seconds_sum", **labels) - value(
        before, "tp_rate_budget_wait_seconds_sum", **labels
    ) == pytest.approx(waited)
    assert (
        value(after, "tp_rate_budget_exhausted_total", **labels)
        - value(before, "tp_rate_budget_exhausted_total", **labels)
        == 1
    )


def test_monitoring_runs_and_steps_are_timed(trader, account):
    place(trader, account)
    before = read_metrics()
    result = cycle.account_monitor(account=account)
    token = locks.acquire(f"monitor:{account.pk}", ttl_s=60)
    skipped = cycle.account_monitor(account=account)  # still "running": skipped
    locks.release(f"monitor:{account.pk}", token)
    after = read_metrics()
    assert result.status == AccountRun.Status.OK and skipped.status == AccountRun.Status.SKIPPED
    for status in ("ok", "skipped"):
        runs = value(after, "tp_monitoring_account_runs_total", status=status)
        assert runs - value(before, "tp_monitoring_account_runs_total", status=status) == 1
    for step in result.step_ms:
        count = value(after, "tp_monitoring_step_seconds_count", step=step)
        assert count - value(before, "tp_monitoring_step_seconds_count", step=step) == 1, step
    assert (
        value(after, "tp_monitoring_account_cycle_seconds_count", status="ok")
        - value(before, "tp_monitoring_account_cycle_seconds_count", status="ok")
        == 1
    )
    total = value(after, "tp_monitoring_account_cycle_seconds_sum", status="ok") - value(
        before, "tp_monitoring_account_cycle_seconds_sum", status="ok"
    )
    assert total == pytest.approx(sum(result.step_ms.values()) / 1000)


@pytest.mark.django_db(transaction=True)
async def test_open_websockets_are_a_gauge(trader):
    from monitoring.tests.test_consumer import connect

    async def connections():
        return value(await sync_to_async(read_metrics)(), "tp_websocket_connections")

    start = await connections()
    first, connected, _ = await connect(trader)
    second, connected_too, _ = await connect(trader)
    assert connected and connected_too
    assert await connections() == start + 2
    await first.disconnect()
    assert await connections() == start + 1
    await second.disconnect()
    closed, _, _ = await connect()  # anonymous: accepted only to be closed with 4401, never counted
    assert await closed.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}
    assert await connections() == start
    await closed.disconnect()
    assert await connections() == start


@requires_redis
def test_celery_queue_depth_is_read_from_redis(db):
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    before = value(read_metrics(), "tp_celery_queue_depth", queue=queue)
    heartbeat.apply_async()  # no worker listens on this run's queue
    heartbeat.apply_async(priority=6)
    assert value(read_metrics(), "tp_celery_queue_depth", queue=queue) == before + 2


def test_metrics_add_up_across_processes(tmp_path):
    """Multiprocess mode: two processes count, a third scrapes both; a dead one's websockets drop out."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    # The module alone (no Django, no Celery app), so each process starts in a moment.
    load = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('tp_metrics', {metrics.__file__!r})\n"
        "metrics = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(metrics)\n"
    )
    child = load + (
        "import sys\n"
        "assert metrics.MULTIPROCESS\n"
        "metrics.ORDERS_PLACED.labels('paper', 'MARKET', 'manual').inc()\n"
        "metrics.websocket_opened(type('Consumer', (), {})())\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    scrape = load + (
        "from django.conf import settings\nsettings.configure(REDIS_URL='')\nprint(metrics.render().decode())\n"
    )

    def run(code, **kwargs):
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", code], env=env, cwd=django_settings.BASE_DIR, text=True, **kwargs
        )

    def scraped():
        process = run(scrape, stdout=subprocess.PIPE)
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        return parse(out)

    children = [run(child, stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for process in children:
            assert process.stdout.readline().strip() == "ready"
        alive = scraped()
    finally:
        for process in children:
            process.stdin.close()
            process.wait(timeout=30)
    gone = scraped()
    labels = {"broker": "paper", "order_type": "MARKET", "source": "manual"}
    assert value(alive, "tp_orders_placed_total", **labels) == 2
    assert value(alive, "tp_websocket_connections") == 2
    assert value(gone, "tp_orders_placed_total", **labels) == 2  # counters outlive their process
    assert value(gone, "tp_websocket_connections") == 0


# --- Request ids ------------------------------------------------------------------------------


def test_every_response_carries_a_new_request_id(client, db):
    first, second = client.get("/healthz")["X-Request-ID"], client.get("/healthz")["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and re.fullmatch(r"[0-9a-f]{32}", second)
    assert first != second


@pytest.mark.parametrize(
    "incoming", ["lb-0123456789abcdef", "2f1c9d6e-5c7b-4a8e-9f00-1234567890ab", "01HF8Z3Y9Q0W1E2R3T4Y5U6I7O"]
)
def test_a_sane_incoming_request_id_is_kept(client, db, incoming):
    assert client.get("/healthz", HTTP_X_REQUEST_ID=incoming)["X-Request-ID"] == incoming


@pytest.mark.parametrize(
    "incoming",
    ["", "short", "has spaces in it", "x" * 65, "<script>alert(1)</script>", "id\u00e9-0123456789", "-abcdefgh"],
)
def test_an_odd_incoming_request_id_is_replaced(client, db, incoming):
    answered = client.get("/healthz", HTTP_X_REQUEST_ID=incoming)["X-Request-ID"]
    assert answered != incoming and re.fullmatch(r"[0-9a-f]{32}", answered)


@pytest.mark.django_db(transaction=True)
def test_the_request_id_follows_an_order_through_its_task_to_the_broker_calls(api, trader, account, json_logs):
    published = []

    def record(sender=None, body=None, headers=None, **_kwargs):
        published.append((sender, body, dict(headers or {})))

    before_task_publish.connect(record, weak=False)
    try:
        response, reference = signal_post(api, account, "lb-order-0001")
        assert background.wait_idle(30)  # the fill's update, on a background thread, queues the run
    finally:
        before_task_publish.disconnect(record)
    assert response["X-Request-ID"] == "lb-order-0001"
    assert logs.current_request_id() is None  # nothing leaks past the request

    # The fast path queued the account's monitoring with the request's id in the task's headers.
    (task_args, _kwargs, _embed), headers = next(
        (body, headers) for sender, body, headers in published if sender == monitor_account.name
    )
    assert headers["request_id"] == "lb-order-0001"
    # A worker runs it with those headers: its lines (its broker calls too) carry the same id.
    monitor_account.apply(args=task_args, headers=headers)
    assert logs.current_request_id() is None

    records = json_logs()
    mine = [r for r in records if r["request_id"] == "lb-order-0001"]
    access = [r for r in mine if r["logger"] == "tradingplatform.access"]
    assert access and access[0]["path"].endswith("/signal") and access[0]["status"] == 201
    assert access[0]["user_id"] == trader.pk
    placed = [r for r in mine if r["logger"] == "brokers.calls" and r["method"] == "place_order" and not r.get("task")]
    assert len(placed) == 1 and placed[0]["order_ref"] == reference and placed[0]["outcome"] == "ok"
    assert placed[0]["user_id"] == trader.pk and placed[0]["broker"] == "paper"
    in_task = [r for r in mine if r.get("task") == monitor_account.name and r["logger"] == "brokers.calls"]
    assert {r["method"] for r in in_task} >= {"orders", "trades", "positions"}
    # The API key that authenticated the request is nowhere in the logs.
    assert api.api_secret not in json.dumps(records)


@pytest.mark.django_db(transaction=True)
def test_a_basket_placed_on_several_threads_keeps_the_request_id(trader, instruments, json_logs):
    accounts = [make_broker_account(trader, broker="paper", client_id=f"RID{n}") for n in range(3)]
    item = {"instrument": instrument("INFY"), "side": "BUY", "quantity": 1, "order_type": "MARKET", "product": "MIS"}
    basket = sources.basket_save(owner=trader, name="Ids", items=[item], account_ids=[a.pk for a in accounts])
    token = logs.request_id_var.set("lb-basket-0001")
    try:
        results = sources.basket_place(basket=basket, actor=trader, run_token="rid")
    finally:
        logs.request_id_var.reset(token)
    assert [r["status"] for r in results] == ["FILLED"] * 3
    placed = [r for r in json_logs() if r["logger"] == "brokers.calls" and r["method"] == "place_order"]
    assert len(placed) == 3 and {r["request_id"] for r in placed} == {"lb-basket-0001"}


def test_a_task_nobody_sent_from_a_request_gets_an_id_of_its_own(db, json_logs):
    heartbeat.apply()
    heartbeat.apply()
    ids = {r["request_id"] for r in json_logs() if r.get("task") == heartbeat.name}
    assert len(ids) == 2 and None not in ids


# --- Logs -------------------------------------------------------------------------------------


def test_secrets_are_redacted_in_json_and_plain_lines(json_logs):
    access_token, api_key = "acc3ssT0kenValue99", "tp_0a1b2c3d_" + "K" * 43
    logger = logging.getLogger("tradingplatform.tests")
    logger.warning(
        "calling with Authorization: token %s:%s and %s", "apikey", access_token, api_key, extra={"api_secret": "s3c"}
    )
    logger.info("login callback ?request_token=%s&state=st4te", access_token)
    logger.warning("kite said %s", json.dumps({"access_token": access_token, "api_secret": "qu0tedS3cret"}))
    try:
        raise RuntimeError(f"password={access_token}")
    except RuntimeError:
        logger.exception("failed")
    records = json_logs()
    text = json.dumps(records)
    assert access_token not in text and api_key not in text and "s3c" not in text and "st4te" not in text
    assert "qu0tedS3cret" not in text  # a secret quoted in the message, before the line is JSON-encoded
    assert records[0]["api_secret"] == "[redacted]" and "token [redacted]" in records[0]["message"]

    plain = logs.PlainFormatter("%(levelname)s%(rid)s %(message)s")
    record = logging.makeLogRecord({"msg": "Bearer %s", "args": (api_key,), "levelname": "INFO"})
    logs.ContextFilter().filter(record)
    assert plain.format(record) == "INFO Bearer [redacted]"


def test_the_access_line_has_the_path_without_its_query_string(client, db, json_logs):
    client.get("/brokers/callback/?request_token=T0k3nFromKite&state=abc", HTTP_X_REQUEST_ID="lb-callback-01")
    records = json_logs()
    access = [r for r in records if r["logger"] == "tradingplatform.access"]
    assert access[0]["path"] == "/brokers/callback/" and access[0]["request_id"] == "lb-callback-01"
    assert "T0k3nFromKite" not in json.dumps(records)


def test_log_format_json_is_what_the_console_writes():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test", "LOG_FORMAT": "json"}
    code = (
        "import logging, logging.config; from django.conf import settings\n"
        "logging.config.dictConfig(settings.LOGGING)\n"
        "logging.getLogger('probe').warning('hello %s', 'there')\n"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], env=env, cwd=django_settings.BASE_DIR, capture_output=True, text=True, timeout=60
    )
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["message"] == "hello there" and line["level"] == "WARNING" and line["logger"] == "probe"


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_djangos_own_loggers_write_only_redacted_lines(log_format):
    """Django's default logging gives its ``django`` logger a console handler of its own (written
    with DEBUG on, as ``bin/run`` runs): its records are written by ours alone, redacted."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test", "DEBUG": "true"}
    env["LOG_FORMAT"] = log_format
    code = (
        "import django, logging; django.setup()\n"
        "logging.getLogger('django.request').error('Internal Server Error: token apikey01:Acc3ssT0kenValue')\n"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], env=env, cwd=django_settings.BASE_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "[redacted]" in result.stderr  # written, by our handler
    assert "Acc3ssT0kenValue" not in result.stdout + result.stderr, result.stderr


@pytest.mark.parametrize("name, bad", [("LOG_FORMAT", "xml"), ("METRICS_TOKEN", "short")])
def test_bad_observability_settings_stop_startup(name, bad):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test", name: bad}
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", "from django.conf import settings; settings.DEBUG"],
        env=env,
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and name in result.stderr


# --- A real worker ----------------------------------------------------------------------------


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_logs_the_task_with_the_request_id(api, account):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test",
        "DATABASE_URL": database_url(),
        "LOG_FORMAT": "json",
    }
    worker = subprocess.Popen(  # noqa: S603
        # The worker sets the root level from --loglevel (LOG_LEVEL is for the web); the reads log at DEBUG.
        [sys.executable, "-m", "celery", "-A", "tradingplatform", "worker", "--pool", "threads", "--loglevel", "DEBUG"]
        + ["--hostname", f"observability-{os.getpid()}@%h"],
        env=env,
        cwd=django_settings.BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(worker.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        signal_post(api, account, "lb-worker-0001")
        deadline = time.monotonic() + 90
        while not AccountRun.objects.filter(account=account).exists() and time.monotonic() < deadline:
            assert worker.poll() is None, "".join(lines)
            time.sleep(0.2)
        assert AccountRun.objects.filter(account=account).exists(), "the worker did not run the monitoring task"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        reader.join(timeout=10)
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    in_task = [r for r in records if r.get("task") == monitor_account.name and r.get("logger") == "brokers.calls"]
    assert in_task, "".join(lines[-50:])
    assert {r["request_id"] for r in in_task} == {"lb-worker-0001"}
    assert api.api_secret not in "".join(lines)


def test_decimal_and_other_values_are_written_as_text(json_logs):
    logging.getLogger("tradingplatform.tests").info("price", extra={"price": Decimal("1500.05")})
    assert json_logs()[-1]["price"] == "1500.05"


def test_an_unexpected_page_error_shows_the_trader_its_logged_request_id(client, trader, json_logs, settings):
    """The trader can quote the id to the desk, who finds the one logged traceback by it."""
    settings.DEBUG = False
    client.raise_request_exception = False
    client.force_login(trader)
    with mock.patch("accounts.views.selectors.broker_accounts_of", side_effect=RuntimeError("boom")):
        response = client.get("/accounts/brokers/")
    assert response.status_code == 500
    request_id = response.headers["X-Request-ID"]
    assert request_id in response.content.decode()
    errors = [r for r in json_logs() if r["level"] == "ERROR"]
    assert len(errors) == 1 and errors[0]["request_id"] == request_id and "RuntimeError: boom" in errors[0]["exception"]


def test_an_unexpected_api_error_is_logged_once_with_its_request_id(api, json_logs, settings):
    settings.DEBUG = False
    api.raise_request_exception = False
    with mock.patch("accounts.api.selectors.broker_accounts_of", side_effect=RuntimeError("boom")):
        response = api.get("/api/v1/accounts")
    assert response.status_code == 500
    request_id = response.headers["X-Request-ID"]
    assert request_id in response.json()["error"]["message"]
    errors = [r for r in json_logs() if r["level"] == "ERROR"]
    assert [r["request_id"] for r in errors] == [request_id], errors
    assert "RuntimeError: boom" in errors[0]["exception"]


def test_django_request_warnings_carry_the_request_id(client, trader, json_logs):
    """Django logs a 4xx after the request's context is gone: the id comes from the request."""
    client.force_login(trader)
    response = client.get("/orders/999999999/")
    assert response.status_code == 404
    warnings = [r for r in json_logs() if r["logger"] == "django.request"]
    assert warnings and {r["request_id"] for r in warnings} == {response.headers["X-Request-ID"]}
