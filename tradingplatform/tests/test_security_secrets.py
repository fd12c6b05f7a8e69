"""Credentials and tokens never leak: not in logs, pages, API responses or error reports.

One trader's whole day, with every log record captured at DEBUG from every logger: sign in,
create an API key, connect a paper account and a Kite account (through the paper exchange's
Kite face on a real port: api_secret, request_token, access_token), place orders from the
ticket and the API, a broker that rejects, errors and expires the session, a webhook with a
wrong secret, sign out. Then every secret value is looked for in what was logged, every page,
every API answer, and Django's error report for requests that carried them.
"""

import logging
import re
from urllib.parse import parse_qsl, urlsplit

from django.test import Client, RequestFactory
from django.urls import reverse

from accounts.views import login_view
from brokers.models import BrokerSession
from brokers.paper import engine
from brokers.paper.models import PaperClient
from brokers.tests.test_kite_adapter import connect_through_the_pages, kite_setup  # noqa: F401
from orders.models import Order
from tradingplatform.testing import error_report

from .test_security_sweep import API, SESSION, SWEEP, url_of

OUR_LOGGERS = ("accounts", "brokers", "orders", "portfolio", "monitoring", "tradingplatform")


def logged_text(records, handler) -> str:
    """The records as the configured handler writes them (its filters redact), one per line."""
    lines = []
    for record in records:
        if all(log_filter.filter(record) for log_filter in handler.filters):
            lines.append(handler.format(record))
    return "\n".join(lines)


def test_secrets_never_reach_logs_pages_api_answers_or_error_reports(
    client,
    trader,
    password,
    face_url,
    kite_setup,  # noqa: F811
    owned,
    caplog,
    settings,  # noqa: F811
):
    settings.API_RATE_LIMITS = [(10_000, 1.0)]
    kite_account, exchange_client = kite_setup
    caplog.set_level(logging.DEBUG)  # the root logger: every logger propagates here
    for name in logging.root.manager.loggerDict:
        if logging.getLogger(name).level > logging.DEBUG and not name.startswith("django.db"):
            caplog.set_level(logging.DEBUG, logger=name)

    # Sign in with the password, create an API key on its page.
    assert client.post(reverse("login"), {"username": "trader", "password": password}).status_code == 302
    form_token = client.get(reverse("accounts:api_keys")).context["form"].initial["token"]
    created = client.post(reverse("accounts:api_keys"), {"name": "bot", "token": form_token})
    api_secret = _secret_on_page(created.content.decode())
    api = Client(HTTP_AUTHORIZATION=f"Bearer {api_secret}")
    assert api.get("/api/v1/me").status_code == 200

    # Connect the paper account and the Kite account (through the face's login page).
    client.post(reverse("brokers:connect", args=[owned["account"].pk]))
    callback = connect_through_the_pages(client, face_url, kite_account, exchange_client)
    assert callback.status_code == 302
    request_token = dict(parse_qsl(urlsplit(callback.wsgi_request.get_full_path()).query))["request_token"]
    kite_session = BrokerSession.objects.get(account=kite_account, status="active")
    access_token = kite_session.tokens.reveal()["access_token"]
    paper_session = BrokerSession.objects.filter(account=owned["account"], status="active").first()
    paper_token = paper_session.tokens.reveal()["access_token"] if paper_session else None

    # Orders from the API and the ticket, on both accounts; the broker rejecting, failing, expiring.
    body = {"tradingsymbol": "INFY", "side": "BUY", "quantity": 1}
    answers = [
        api.post("/api/v1/orders", {**body, "account_id": a.pk}, content_type="application/json")
        for a in (owned["account"], kite_account)
    ]
    assert [answer.status_code for answer in answers] == [201, 201], [a.content for a in answers]
    PaperClient.objects.filter(pk=exchange_client.pk).update(rejection_rate=1)
    answers.append(api.post("/api/v1/orders", {**body, "account_id": kite_account.pk}, content_type="application/json"))
    PaperClient.objects.filter(pk=exchange_client.pk).update(rejection_rate=0, error_rate=1)
    answers.append(api.post("/api/v1/orders", {**body, "account_id": kite_account.pk}, content_type="application/json"))
    PaperClient.objects.filter(pk=exchange_client.pk).update(error_rate=0)
    engine.session_expire_now(client=PaperClient.objects.get(pk=exchange_client.pk))
    answers.append(api.post("/api/v1/orders", {**body, "account_id": kite_account.pk}, content_type="application/json"))
    outcomes = {(o.status, o.reject_kind) for o in Order.objects.filter(account=kite_account)}
    assert ("FAILED", "auth") in outcomes or any(status == "FAILED" for status, _ in outcomes), outcomes
    failed_calls = [
        r.getMessage() for r in caplog.records if r.name == "brokers.calls" and ": ok in" not in r.getMessage()
    ]
    assert failed_calls, "the failing broker calls were logged"
    webhook = Client().post(
        reverse("strategy_webhook", args=[owned["strategy"].pk]),
        {"secret": owned["strategy_secret"][:-2] + "xx", "id": "1", "symbol": "NSE:INFY", "side": "BUY", "quantity": 1},
        content_type="application/json",
    )
    assert webhook.status_code == 403

    secrets = {
        "the API key": api_secret,
        "another API key": owned["api_secret"],
        "the Kite api_secret": exchange_client.api_secret,
        "the Kite request_token": request_token,
        "the Kite access_token": access_token,
        "the password": password,
        "the strategy's webhook secret": owned["strategy_secret"],
        "SECRET_KEY": settings.SECRET_KEY,
        **{f"encryption key {i}": key for i, key in enumerate(settings.FIELD_ENCRYPTION_KEYS)},
    }
    if paper_token:
        secrets["the paper session token"] = paper_token

    def leaks(text: str) -> list[str]:
        return [name for name, value in secrets.items() if value and str(value) in text]

    # Logs: as written by the configured handler (redacting), and our own records even before that.
    console = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    records = list(caplog.records)
    assert len(records) > 20 and any(r.name.startswith("urllib3") for r in records)
    assert not leaks(logged_text(records, console)), leaks(logged_text(records, console))
    ours = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in records if r.name.split(".")[0] in OUR_LOGGERS)
    assert not leaks(ours), f"our own log calls pass {leaks(ours)}"

    # Pages (the key's one-time page aside) and API answers.
    for key, spec in SWEEP.items():
        if "GET" not in spec.methods or spec.auth not in (SESSION, API):
            continue
        caller = api if spec.auth == API else client
        response = caller.get(url_of(key, {**owned, "account": kite_account}))
        assert not leaks(response.content.decode()), (key, leaks(response.content.decode()))
    for answer in answers:
        assert not leaks(answer.content.decode()), leaks(answer.content.decode())
    edit = client.get(reverse("accounts:broker_edit", args=[kite_account.pk])).content.decode()
    assert "api_secret" in edit and not leaks(edit)  # the field is there, write-only

    # Django's error report for requests that carried the secrets (what a 500 would mail or show).
    factory = RequestFactory()
    login = factory.post(reverse("login"), {"username": "trader", "password": password})
    login.session = client.session
    login_view(login)  # marks the password as sensitive, as it would before an error in the view
    for request in [
        login,
        factory.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {api_secret}", HTTP_X_API_KEY=api_secret),
        factory.get(f"/brokers/callback/?request_token={request_token}&status=success"),
    ]:
        report = error_report(request)
        assert not leaks(report), (request.path, leaks(report))


def _secret_on_page(html: str) -> str:
    match = re.search(r"\btp_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}", html)
    assert match, "the new key is shown once on its page"
    return match.group(0)
