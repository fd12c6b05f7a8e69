"""The security sweep: every URL the project serves, walked from the URL configuration.

``SWEEP`` says, for each URL pattern, who may call it and how: the methods it answers,
which of the first trader's objects fill its ids, and a valid body for its writes (a
body that would change something if the ownership check were missing). A pattern that
is not in ``SWEEP`` fails ``test_every_url_is_in_the_sweep`` with its name, so a new
endpoint cannot skip these checks.

- Another trader with the first trader's ids: 404 for every method, nothing changed in
  the database, no order sent to the paper exchange (pages and the API).
- Anonymous: pages redirect to the login page, the API answers 401 in its one error shape.
- CSRF: every page POST is refused without the token (forms and htmx posts alike).
- The paper exchange's Kite face (its own URLconf and port) is walked the same way.
"""

import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from brokers.paper.models import PaperOrder
from tradingplatform.api import api

from .security import assert_unchanged, db_snapshot

SESSION, API, PUBLIC, OWN_AUTH, STAFF = "session", "api", "public", "own auth", "staff"


@dataclass(frozen=True)
class Endpoint:
    methods: tuple[str, ...]
    auth: str = SESSION
    ids: dict[str, str] = field(default_factory=dict)  # URL parameter -> key of the `owned` fixture
    body: object = None  # owned -> a valid body for its writes
    why: str = ""  # for PUBLIC, OWN_AUTH and shared ids: the reason


def page(*methods, **kwargs):
    return Endpoint(methods, SESSION, **kwargs)


def endpoint(*methods, **kwargs):
    return Endpoint(methods, API, **kwargs)


def public(*methods, why):
    return Endpoint(methods, PUBLIC, why=why)


def _basket_form(owned):
    return {
        "name": "hijacked",
        "accounts": [owned["account"].pk],
        "items-TOTAL_FORMS": "1",
        "items-INITIAL_FORMS": "0",
        "items-MIN_NUM_FORMS": "0",
        "items-MAX_NUM_FORMS": "100",
        "items-0-instrument": "INFY",
        "items-0-side": "SELL",
        "items-0-quantity": "3",
        "items-0-order_type": "MARKET",
        "items-0-product": "MIS",
    }


def _spec():
    return {"tradingsymbol": "INFY", "side": "BUY", "quantity": 1}


def _scheduled_body(owned):
    return {**_spec(), "account_id": owned["account"].pk, "recurrence": "trading_days", "time_of_day": "10:15:00"}


ACCOUNT, ORDER, BASKET, SCHEDULED, STRATEGY = (
    {"pk": name} for name in ("account", "order", "basket", "scheduled", "strategy")
)

SWEEP: dict[str, Endpoint] = {
    # --- Public, on purpose ---
    "login": public("GET", "POST", why="the sign-in page (throttled per username and IP)"),
    "logout": public("POST", why="signing out needs no session; POST with CSRF only"),
    "admin/logout/": public("POST", why="the admin's sign-out is ours (audited); POST with CSRF only"),
    "healthz": public("GET", why="liveness probe, no data"),
    "readyz": public("GET", why="readiness probe: dependency status and timings, no user data"),
    "api:openapi-json": public("GET", why="the API's schema"),
    "api:openapi-view": public("GET", why="the API's docs page"),
    "api:api-root": public("GET", why="the API root, no data"),
    # --- Their own authentication instead of a session ---
    "strategy_webhook": Endpoint(("POST",), OWN_AUTH, ids={"pk": "strategy"}, why="the strategy's secret"),
    "kite_postback": Endpoint(("POST",), OWN_AUTH, why="Kite's checksum with the account's api_secret"),
    "metrics": Endpoint(("GET",), OWN_AUTH, why="METRICS_TOKEN or a staff session; 404 to a trader"),
    # --- Pages (signed in) ---
    "home": page("GET"),
    "accounts:broker_list": page("GET"),
    "accounts:broker_create": page("GET", "POST"),
    "accounts:broker_edit": page(
        "GET",
        "POST",
        ids=ACCOUNT,
        body=lambda o: {"label": "hijacked", "allowed_products": ["MIS"], "copy_multiplier": "1", "api_key": "x"},
    ),
    "accounts:broker_deactivate": page("POST", ids=ACCOUNT),
    "accounts:broker_reactivate": page("POST", ids=ACCOUNT),
    "accounts:api_keys": page("GET", "POST"),
    "accounts:api_key_revoke": page("POST", ids={"pk": "api_key"}),
    "accounts:profile": page("GET", "POST"),
    "brokers:connect": page("POST", ids=ACCOUNT),
    "brokers:disconnect": page("POST", ids=ACCOUNT),
    "brokers:login_callback": page("GET", why="its state is bound to the browser's session (tested in brokers)"),
    "brokers:instruments": page("GET"),
    "orders:book": page("GET"),
    "orders:ticket": page("GET", "POST"),
    "orders:instrument_options": page("GET"),
    "orders:instrument_pick": page("GET", ids={"pk": "instrument"}, why="instruments are market data, shared"),
    "orders:account_pick": page(
        "GET", why="its account id is in the query: another trader's is not used (tested in orders)"
    ),
    "orders:detail": page("GET", ids=ORDER),
    "orders:modify": page(
        "GET", "POST", ids=ORDER, body=lambda o: {"quantity": "2", "order_type": "LIMIT", "price": "1401"}
    ),
    "orders:row": page("GET", ids=ORDER),
    "orders:rows": page("GET", why="its order ids are in the query: another trader's are left out (tested in orders)"),
    "orders:cancel": page("POST", ids=ORDER),
    "sources:basket_list": page("GET"),
    "sources:basket_create": page("GET", "POST"),
    "sources:basket_detail": page(
        "GET", "POST", ids=BASKET, body=lambda o: {"token": o["token"], "accounts": [o["account"].pk]}
    ),
    "sources:basket_edit": page("GET", "POST", ids=BASKET, body=_basket_form),
    "sources:basket_delete": page("POST", ids=BASKET),
    "sources:scheduled_list": page("GET", "POST"),
    "sources:scheduled_cancel": page("POST", ids=SCHEDULED),
    "sources:strategy_list": page("GET"),
    "sources:strategy_create": page("GET", "POST"),
    "sources:strategy_detail": page("GET", ids=STRATEGY),
    "sources:strategy_edit": page(
        "GET",
        "POST",
        ids=STRATEGY,
        body=lambda o: {"name": "hijacked", "accounts": [o["account"].pk], "stop_loss_unit": "percent"},
    ),
    "sources:strategy_secret": page("POST", ids=STRATEGY),
    "portfolio:dashboard": page("GET"),
    "portfolio:dashboard_fragments": page("GET"),
    "portfolio:portfolio": page("GET"),
    "portfolio:trades": page("GET"),
    "portfolio:monitoring": page("GET"),
    # --- The JSON API (an API key) ---
    "api:me": endpoint("GET"),
    "api:account_list": endpoint("GET"),
    "api:account_detail": endpoint("GET", ids={"account_id": "account"}),
    "api:instrument_search": endpoint("GET"),
    "api:order_list": endpoint("GET"),
    "api:trade_list": endpoint("GET"),
    "api:position_list": endpoint("GET"),
    "api:order_create": endpoint("POST"),
    "api:order_detail": endpoint("GET", ids={"order_id": "order"}),
    "api:order_change": endpoint("PATCH", ids={"order_id": "order"}, body=lambda o: {"quantity": 2, "price": "1401"}),
    "api:order_events": endpoint("GET", ids={"order_id": "order"}),
    "api:order_cancel": endpoint("POST", ids={"order_id": "order"}, body=lambda o: {}),
    "api:basket_list": endpoint("GET"),
    "api:basket_create": endpoint("POST"),
    "api:basket_detail": endpoint("GET", ids={"basket_id": "basket"}),
    "api:basket_update": endpoint(
        "PUT", ids={"basket_id": "basket"}, body=lambda o: {"name": "hijacked", "items": [_spec()]}
    ),
    "api:basket_change": endpoint("PATCH", ids={"basket_id": "basket"}, body=lambda o: {"name": "hijacked"}),
    "api:basket_delete": endpoint("DELETE", ids={"basket_id": "basket"}),
    "api:basket_place": endpoint("POST", ids={"basket_id": "basket"}, body=lambda o: {}),
    "api:scheduled_list": endpoint("GET"),
    "api:scheduled_create": endpoint("POST"),
    "api:scheduled_detail": endpoint("GET", ids={"scheduled_id": "scheduled"}),
    "api:scheduled_update": endpoint("PUT", ids={"scheduled_id": "scheduled"}, body=_scheduled_body),
    "api:scheduled_change": endpoint("PATCH", ids={"scheduled_id": "scheduled"}, body=lambda o: {"quantity": 2}),
    "api:scheduled_delete": endpoint("DELETE", ids={"scheduled_id": "scheduled"}),
    "api:strategy_list": endpoint("GET"),
    "api:strategy_create": endpoint("POST"),
    "api:strategy_detail": endpoint("GET", ids={"strategy_id": "strategy"}),
    "api:strategy_update": endpoint(
        "PUT", ids={"strategy_id": "strategy"}, body=lambda o: {"name": "hijacked", "is_active": True}
    ),
    "api:strategy_change": endpoint("PATCH", ids={"strategy_id": "strategy"}, body=lambda o: {"name": "hijacked"}),
    "api:strategy_delete": endpoint("DELETE", ids={"strategy_id": "strategy"}),
    "api:strategy_new_secret": endpoint("POST", ids={"strategy_id": "strategy"}, body=lambda o: {}),
    "api:strategy_signal": endpoint("POST", ids={"strategy_id": "strategy"}, body=lambda o: {"id": "sig-1", **_spec()}),
}
# The admin checks staff itself (and signs in through our throttled login page); its
# patterns come and go with the models registered in it, so it is swept as a whole.
STAFF_NAMESPACE = "admin"

# Ids that name another trader's object in a request body: refused like an unknown id, nothing written.
BODY_IDS = {
    "api:order_create": lambda o: {**_spec(), "account_id": o["account"].pk},
    "api:basket_create": lambda o: {"name": "b", "account_ids": [o["account"].pk], "items": [_spec()]},
    "api:scheduled_create": _scheduled_body,
    "api:strategy_create": lambda o: {"name": "s", "account_ids": [o["account"].pk]},
    "orders:ticket": lambda o: {
        "account": o["account"].pk,
        "instrument": o["instrument"].pk,
        "side": "BUY",
        "quantity": "1",
        "order_type": "MARKET",
        "product": "MIS",
        "validity": "DAY",
        "token": o["token"],
    },
    "sources:basket_create": _basket_form,
    "sources:scheduled_list": lambda o: {
        "account": o["account"].pk,
        "instrument": "INFY",
        "side": "BUY",
        "quantity": "1",
        "order_type": "MARKET",
        "product": "MIS",
        "recurrence": "trading_days",
        "time_of_day": "10:15:00",
        "timezone": "Asia/Kolkata",
        "grace_s": "0",
    },
    "sources:strategy_create": lambda o: {"name": "s", "accounts": [o["account"].pk], "stop_loss_unit": "percent"},
}

# The paper exchange's Kite face: its own URLconf on its own port (brokers/paper/face_asgi.py).
FACE_URLCONF = "brokers.paper.face_urls"
FACE = {
    "connect/login": "public: Kite's login page for the exchange's clients (user id and password)",
    "session/token": "api_key + request_token checksum with the api_secret",
    "instruments": "public: the instrument dump is public on Kite too",
    "instruments/<str:exchange>": "public: the instrument dump is public on Kite too",
}
FACE_TOKEN_ROUTES = [
    ("GET", "user/profile"),
    ("GET", "user/margins"),
    ("GET", "user/margins/equity"),
    ("GET", "orders"),
    ("POST", "orders/regular"),
    ("GET", "orders/ORDER1"),
    ("GET", "orders/ORDER1/trades"),
    ("PUT", "orders/regular/ORDER1"),
    ("DELETE", "orders/regular/ORDER1"),
    ("GET", "trades"),
    ("GET", "portfolio/positions"),
    ("GET", "portfolio/holdings"),
    ("GET", "quote"),
    ("GET", "quote/ohlc"),
    ("GET", "quote/ltp"),
]


def walk(patterns, prefix="", namespace=""):
    """(route, name) of every URL pattern, nested includes and namespaces resolved."""
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            inner = f"{namespace}:{entry.namespace}" if namespace and entry.namespace else entry.namespace or namespace
            yield from walk(entry.url_patterns, route, inner or "")
        elif isinstance(entry, URLPattern):
            name = f"{namespace}:{entry.name}" if namespace and entry.name else entry.name
            yield route, name


def sweep_key(route: str, name: str | None) -> str:
    return name or route


def found_patterns() -> dict[str, str]:
    return {sweep_key(route, name): route for route, name in walk(get_resolver().url_patterns)}


def is_staff_only(key: str) -> bool:
    """The admin's named patterns, and its unnamed redirects (``admin/<model>/<id>/``, its catch-all)."""
    return key.startswith(f"{STAFF_NAMESPACE}:") or (key.startswith(f"{STAFF_NAMESPACE}/") and key not in SWEEP)


def url_of(key: str, owned: dict | None) -> str:
    spec = SWEEP[key]
    if ":" not in key and "/" in key:
        return "/" + key
    kwargs = {param: owned[obj].pk if owned else 1 for param, obj in spec.ids.items()}
    return reverse(key, kwargs=kwargs)


def call(client, method: str, url: str, data=None, **extra):
    if method == "GET":
        return client.get(url, data or {}, **extra)
    if method == "POST" and not url.startswith("/api/"):
        return client.post(url, data or {}, **extra)
    return client.generic(method, url, json.dumps(data or {}), content_type="application/json", **extra)


def api_client(secret: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


def assert_api_error(response, status: int, what: str):
    assert response.status_code == status, (what, response.status_code, response.content[:300])
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}, (what, error)
    return error


# --- The walk ------------------------------------------------------------------------------


def test_every_url_is_in_the_sweep():
    found = found_patterns()
    unknown = sorted(key for key in found if key not in SWEEP and not is_staff_only(key))
    assert not unknown, (
        f"URL patterns not in the security sweep: {unknown}. Add each to SWEEP in {__name__} "
        "(the methods it answers, which objects fill its ids, a body for its writes) or list it as public "
        "or with its own authentication, with the reason."
    )
    stale = sorted(set(SWEEP) - set(found))
    assert not stale, f"SWEEP names URL patterns that no longer exist: {stale}"
    assert "api:order_detail" in found and "admin:index" in found and "strategy_webhook" in found


def test_every_api_operation_and_method_is_in_the_sweep():
    """Ninja serves several methods on one path: each operation in the schema must be swept with its method."""
    schema = api.get_openapi_schema()
    operations = {(path, method.upper()) for path, methods in schema["paths"].items() for method in methods}
    swept = set()
    for key, spec in SWEEP.items():
        if spec.auth != API:
            continue
        route = found_patterns()[key]
        path = "/" + route.replace("<", "{").replace(">", "}")
        swept.update((path, method) for method in spec.methods)
    assert operations == swept, f"not swept: {sorted(operations - swept)}; not in the API: {sorted(swept - operations)}"


def test_every_face_route_is_in_the_sweep():
    from brokers.paper.face_urls import urlpatterns

    routes = {str(entry.pattern) for entry in urlpatterns}
    token_routes = {
        "user/profile",
        "user/margins",
        "user/margins/<str:segment>",
        "orders",
        "orders/<str:segment>",
        "orders/<str:order_id>/trades",
        "orders/<str:variety>/<str:order_id>",
        "trades",
        "portfolio/positions",
        "portfolio/holdings",
        "quote",
        "quote/ohlc",
        "quote/ltp",
    }
    unknown = sorted(routes - set(FACE) - token_routes)
    assert not unknown, f"Kite face routes not in the security sweep: {unknown}; add them to FACE or FACE_TOKEN_ROUTES"


# --- Another trader's ids -------------------------------------------------------------------

WITH_IDS = [key for key, spec in SWEEP.items() if spec.ids and spec.auth in (SESSION, API) and not spec.why]


@pytest.mark.parametrize("key", WITH_IDS)
def test_another_trader_gets_404_and_changes_nothing(key, owned, client, other_trader):
    spec = SWEEP[key]
    url = url_of(key, owned)
    client.force_login(other_trader)
    for method in spec.methods:
        data = spec.body(owned) if spec.body and method != "GET" else None
        before = db_snapshot()
        paper_orders = PaperOrder.objects.count()
        if spec.auth == API:
            response = call(api_client(owned["their_api_secret"]), method, url, data)
            error = assert_api_error(response, 404, f"{method} {url}")
            assert error["code"] == "not_found"
        else:
            for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
                response = call(client, method, url, data, **headers)
                assert response.status_code == 404, (method, url, headers, response.status_code)
                assert "hijacked" not in response.content.decode()
        assert PaperOrder.objects.count() == paper_orders, f"{method} {url} sent an order to the exchange"
        assert_unchanged(before, db_snapshot(), f"{method} {url} by another trader")


def test_the_first_trader_can_use_the_same_urls(owned, trader_client):
    """The other side of the 404s: the ids are real, the owner's GETs work."""
    for key, spec in SWEEP.items():
        if spec.auth == SESSION and spec.ids and "GET" in spec.methods:
            response = trader_client.get(url_of(key, owned))
            assert response.status_code == 200, (key, response.status_code)
    api = api_client(owned["api_secret"])
    for key, spec in SWEEP.items():
        if spec.auth == API and spec.ids and "GET" in spec.methods:
            assert api.get(url_of(key, owned)).status_code == 200, key


@pytest.mark.parametrize("key", sorted(BODY_IDS))
def test_another_traders_ids_in_a_body_are_refused_and_change_nothing(key, owned, client, other_trader):
    url = url_of(key, owned)
    data = BODY_IDS[key](owned)
    before = db_snapshot()
    if SWEEP[key].auth == API:
        error = assert_api_error(call(api_client(owned["their_api_secret"]), "POST", url, data), 422, url)
        assert error["field"] in ("account_id", "account_ids"), error
    else:
        client.force_login(other_trader)
        response = client.post(url, data)
        assert response.status_code == 200, (url, response.status_code)  # the form again, with the error
        assert "Select a valid choice" in response.content.decode()
    assert_unchanged(before, db_snapshot(), f"POST {url} with another trader's account")


def test_methods_outside_the_table_are_refused(owned, client, other_trader):
    """Keeps the table honest: a method it does not list answers 405 (so no write method is missed)."""
    client.force_login(other_trader)
    api = api_client(owned["their_api_secret"])
    every = {"GET", "POST", "PUT", "PATCH", "DELETE"}
    wrong = []
    before = db_snapshot()
    for key, spec in SWEEP.items():
        if spec.auth not in (SESSION, API):
            continue
        url = url_of(key, owned)
        if spec.auth == API:  # ninja serves several operations on one path
            listed = {m for k, s in SWEEP.items() if s.auth == API and url_of(k, owned) == url for m in s.methods}
        else:
            listed = set(spec.methods)
        for method in sorted(every - listed):
            response = call(api if spec.auth == API else client, method, url)
            if response.status_code != 405:
                wrong.append(f"{method} {url} ({key}): {response.status_code}")
    assert not wrong, f"methods that SWEEP does not list are answered: {wrong}"
    assert_unchanged(before, db_snapshot(), "methods outside the table")


# --- Anonymous ------------------------------------------------------------------------------


def test_anonymous_is_sent_to_login_or_gets_401(owned, client, settings):
    settings.API_KEY_FAILURES_PER_IP = 1000  # this test sends a wrong key to every endpoint
    wrong = []
    before = db_snapshot()
    for key, spec in SWEEP.items():
        if spec.auth not in (SESSION, API):
            continue
        url = url_of(key, owned)
        for method in spec.methods:
            data = spec.body(owned) if spec.body and method != "GET" else None
            response = call(client, method, url, data)
            what = f"{method} {url} ({key})"
            if spec.auth == API:
                error = assert_api_error(response, 401, what)
                assert error["code"] == "unauthenticated" and response["WWW-Authenticate"] == "Bearer", what
                assert_api_error(call(api_client("tp_00000000_wrong"), method, url, data), 401, f"{what}, wrong key")
            elif response.status_code != 302 or not response.url.startswith("/login/?next="):
                wrong.append(f"{what}: {response.status_code} {response.get('Location')}")
    assert not wrong, f"pages that do not send an anonymous visitor to the login page: {wrong}"
    assert_unchanged(before, db_snapshot(), "anonymous requests")


def test_the_admin_is_for_staff_only(owned, client, trader_client, staff):
    admin_urls = [reverse(key) for key in found_patterns() if is_staff_only(key) and key.endswith("_changelist")]
    assert len(admin_urls) > 10
    for url in ["/admin/", *admin_urls]:
        assert Client().get(url).status_code == 302, url
        response = trader_client.get(url)
        assert response.status_code == 302 and "/login/" in response.url, (url, response.status_code)
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200


# --- Webhooks with their own authentication -------------------------------------------------


def test_strategy_webhook_with_a_wrong_secret_is_refused_and_places_nothing(owned, client):
    from django.utils import timezone

    strategy = owned["strategy"]
    url = url_of("strategy_webhook", owned)
    now = int(timezone.now().timestamp())
    body = {"id": "a1", "timestamp": now, "symbol": "NSE:INFY", "side": "BUY", "quantity": 1}
    # Counted for the strategy's owner (its page says how many were refused, when and why): nothing else.
    trace = {"orders.strategy": {"alerts_refused", "alert_refused_at", "alert_refused_reason"}}
    before = db_snapshot(besides=trace)
    for secret in ["", "wrong", owned["strategy_secret"][:-1], owned["api_secret"]]:
        response = client.post(url, {**body, "secret": secret}, content_type="application/json")
        error = assert_api_error(response, 403, f"webhook with secret {secret!r}")
        assert owned["strategy_secret"] not in json.dumps(error)
    other = client.post(
        reverse("strategy_webhook", args=[strategy.pk + 1000]),
        {**body, "secret": owned["strategy_secret"]},
        content_type="application/json",
    )
    assert_api_error(other, 403, "webhook for another strategy id with this secret")
    assert_unchanged(before, db_snapshot(besides=trace), "webhooks with wrong secrets")
    strategy.refresh_from_db()
    assert strategy.alerts_refused == 4 and owned["strategy_secret"] not in strategy.alert_refused_reason


def test_kite_postback_with_a_forged_checksum_is_refused(owned, client):
    account = owned["account"]
    order = owned["order"]
    body = {
        "user_id": account.client_id,
        "order_id": order.broker_order_id,
        "order_timestamp": "2026-11-21 10:00:00",
        "status": "COMPLETE",
        "checksum": hashlib.sha256(b"forged").hexdigest(),
    }
    before = db_snapshot()
    response = client.post(url_of("kite_postback", owned), body, content_type="application/json")
    assert_api_error(response, 403, "forged postback")
    assert_unchanged(before, db_snapshot(), "a forged Kite postback")


def test_the_face_refuses_calls_without_a_valid_token(owned, client, settings):
    settings.ROOT_URLCONF = FACE_URLCONF
    before = db_snapshot()
    for method, route in FACE_TOKEN_ROUTES:
        for headers in ({}, {"HTTP_AUTHORIZATION": "token nokey:notoken"}):
            response = client.generic(method, f"/{route}", "", **headers)
            assert response.status_code == 403, (method, route, response.status_code)
            assert response.json()["error_type"] == "TokenException", (method, route)
    assert_unchanged(before, db_snapshot(), "the face without a token")


# --- CSRF -----------------------------------------------------------------------------------


def test_every_page_post_needs_the_csrf_token(owned, trader):
    """Every form and htmx POST, signed in (and the login form anonymous): 403 without the token, nothing changed."""
    before = db_snapshot()
    wrong = []
    for key, spec in SWEEP.items():
        if spec.auth not in (SESSION, PUBLIC) or "POST" not in spec.methods:
            continue
        url = url_of(key, owned)
        data = spec.body(owned) if spec.body else BODY_IDS.get(key, lambda o: {})(owned)
        browser = Client(enforce_csrf_checks=True)
        if key == "login":
            data = {"username": "trader", "password": "correct horse battery staple"}
        else:
            browser.force_login(trader)
        for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
            response = browser.post(url, data, **headers)
            if response.status_code != 403 or b"CSRF" not in response.content:
                wrong.append(f"POST {url} ({key}) {headers}: {response.status_code}")
        if key != "login" and browser.get(reverse("portfolio:dashboard")).status_code != 200:
            wrong.append(f"POST {url} ({key}) without a token signed the trader out")
    assert not wrong, f"page POSTs that do not check CSRF: {wrong}"
    assert_unchanged(before, db_snapshot(), "POSTs without a CSRF token")


def test_a_post_with_the_csrf_token_goes_through(owned, trader):
    """The refusals above are CSRF's: the same kind of post with the token works."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(trader)
    page = browser.get(reverse("accounts:api_keys")).content.decode()
    token, form_token = (
        page.split(f'name="{name}" value="')[1].split('"')[0] for name in ("csrfmiddlewaretoken", "token")
    )
    response = browser.post(
        reverse("accounts:api_keys"), {"name": "with token", "csrfmiddlewaretoken": token, "token": form_token}
    )
    assert response.status_code == 200
    assert get_user_model().objects.get(pk=trader.pk).api_keys.filter(name="with token").exists()


# --- A form sent after the session ended ------------------------------------------------------

POST_ONLY = [key for key, spec in SWEEP.items() if spec.auth == SESSION and spec.methods == ("POST",)]


@pytest.mark.parametrize("key", POST_ONLY)
def test_a_form_sent_after_the_session_ended_comes_back_to_its_page_after_signing_in(key, owned, client, trader):
    """Signed out (the session expired, or ended in another tab), the trader pressed a form's button
    (Cancel order, Deactivate, Revoke...): the login page's ``next`` was the form's POST-only address,
    so signing in ended on a blank 405 page, with no word that the action was not done."""
    page = reverse("portfolio:dashboard")
    before = db_snapshot()
    response = client.post(url_of(key, owned), headers={"Referer": f"http://testserver{page}"})
    assert response.status_code == 302
    assert response.url == f"/login/?next={quote(page)}", (key, response.url)
    assert_unchanged(before, db_snapshot(), f"POST {key} signed out")
    login = client.get(response.url)
    assert "not done" in login.content.decode(), "the login page does not say the action was not done"
    client.force_login(trader)
    assert client.get(page).status_code == 200
    # From another site's page: never sent back there.
    client.logout()
    response = client.post(url_of(key, owned), headers={"Referer": f"https://evil.example{page}"})
    assert response.status_code == 302 and response.url.startswith("/login/?next=/"), (key, response.url)
    assert "evil" not in response.url, (key, response.url)


def test_signing_out_is_not_taken_for_a_form_sent_after_the_session_ended(trader_client):
    page = reverse("portfolio:dashboard")
    response = trader_client.post(reverse("logout"), headers={"Referer": f"http://testserver{page}"})
    assert response.status_code == 302 and response.url == reverse("login")
    shown = trader_client.get(response.url).content.decode()
    assert "You have signed out." in shown and "not done" not in shown
