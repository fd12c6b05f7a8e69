"""The SDK and the ``tp`` CLI against the real API, served on a live port (no mocks).

Orders go to the in-process paper exchange; ``PaperOrder`` rows show what reached it.
The only fakes are transport adapters that lose or replace an answer *after* the real
request was served, to show what the client's retries do.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from types import SimpleNamespace

import pytest
import requests
import tpclient
from django.core.management import call_command
from requests.adapters import HTTPAdapter
from tpclient import (
    AnswerLost,
    ApiError,
    AuthenticationError,
    Client,
    Conflict,
    InvalidRequest,
    NotFound,
    OrderSpec,
    RateLimited,
    ServerError,
    TransportError,
    cli,
)
from tpclient.errors import parse_retry_after
from tpclient.models import Basket, Strategy
from tpclient.models import Order as OrderModel

from accounts.services import api_key_create
from accounts.tests.factories import make_broker_account
from brokers.paper.models import PaperClient, PaperOrder
from orders.models import Basket as BasketRow
from orders.models import Order
from orders.models import Strategy as StrategyRow
from tradingplatform import background

D = Decimal


def _key_for(user, name="sdk") -> str:
    _key, raw = api_key_create(owner=user, name=name)
    return raw


@pytest.fixture
def env(live_server, transactional_db, trader, paper_market, settings):
    """A trader with an API key and a paper account, the instruments, and a client for the live server."""
    settings.ORDER_LOOKUP_DELAY_S = 0
    settings.API_RATE_LIMITS = [(10_000, 1.0)]  # the 429 test sets its own
    call_command("load_instruments", broker="paper")
    account = make_broker_account(trader, broker="paper", client_id="SDK-P1", label="SDK paper")
    raw = _key_for(trader)
    client = Client(live_server.url, raw, backoff=0.01)
    yield SimpleNamespace(url=live_server.url, key=raw, account=account, client=client, user=trader)
    client.close()


class Recorder(HTTPAdapter):
    """Sends every request for real and records (method, path, Idempotency-Key, status)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        # Read off the connection now: a subclass that replaces the body would leave the real one
        # unread, and the pool's next request on that connection fails ("ResponseNotReady").
        response.content  # noqa: B018
        path = requests.utils.urlparse(request.url).path
        self.calls.append((request.method, path, request.headers.get("Idempotency-Key"), response.status_code))
        return response


class LoseFirstPostAnswer(Recorder):
    """The first POST reaches the server and is carried out, but its answer is lost on the way back."""

    method = "POST"
    lost = False
    error = requests.ConnectionError
    settle = False  # wait for what the call set off (a fill) before the client may repeat it

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method == self.method and not self.lost:
            self.lost = True
            response.close()
            if self.settle:
                assert background.wait_idle(30)
            raise self.error("connection reset by peer (answer lost)", request=request)
        return response


class LoseFirstPatchAnswer(LoseFirstPostAnswer):
    method = "PATCH"
    settle = True


class CutFirstPostAnswer(LoseFirstPostAnswer):
    """The first POST's answer arrives cut short: the connection closed in the middle of its body."""

    error = requests.exceptions.ChunkedEncodingError


class GarbleFirstPostAnswer(LoseFirstPostAnswer):
    """The first POST's answer arrives, but its body cannot be decoded (a broken gzip stream)."""

    error = requests.exceptions.ContentDecodingError


class LoseEveryPostAnswer(Recorder):
    """Every POST is carried out and every answer lost."""

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method == "POST":
            response.close()
            raise requests.ConnectionError("connection reset by peer (answer lost)", request=request)
        return response


class EveryPostIs502(Recorder):
    """A proxy answers 502 to every POST (``METHOD``), after the server carried it out."""

    METHOD = "POST"

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method == self.METHOD:
            response.status_code, response.reason, response._content = 502, "Bad Gateway", b"<html>bad gateway</html>"
        return response


class PostsMovedPermanently(Recorder):
    """A proxy in front of the server moves every POST elsewhere with a 301, as one that sends plain
    http to https does (here to the same address, which this test's server serves). A client that
    follows it sends a GET there: a 301 or 302 turns a POST into a GET, its body dropped."""

    def send(self, request, **kwargs):
        if request.method != "POST":
            return super().send(request, **kwargs)
        response = requests.Response()
        response.status_code, response.reason, response.url, response.request = 301, "Moved", request.url, request
        response.headers["Location"] = request.url
        response._content, response._content_consumed = b"", True
        self.calls.append((request.method, requests.utils.urlparse(request.url).path, None, 301))
        return response


def lossy_cli(monkeypatch, adapter_class):
    """The CLI's client sends through ``adapter_class`` (a new one per client made); the adapters made."""
    made = []

    def client(*args, **kwargs):
        made.append(adapter_class())
        lossy = Client(*args, **{"backoff": 0.01, **kwargs})
        mount(lossy, made[-1])
        return lossy

    monkeypatch.setattr(cli, "Client", client)
    return made


class FirstGetIs503(Recorder):
    """A proxy in front of the server fails the first GET with a 503 (after the server answered it)."""

    failed = False

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method == "GET" and not self.failed:
            self.failed = True
            response.status_code, response.reason = 503, "Service Unavailable"
            response._content = b"<html>upstream unavailable</html>"
        return response


def mount(client: Client, adapter: HTTPAdapter) -> HTTPAdapter:
    client.session.mount("http://", adapter)
    return adapter


# --- Reads ------------------------------------------------------------------------------------


def test_me_accounts_and_instruments(env):
    me = env.client.me()
    assert (me.id, me.username) == (env.user.pk, "trader")
    accounts = env.client.accounts()
    assert [a.id for a in accounts] == [env.account.pk]
    account = env.client.account(env.account.pk)
    assert account.client_id == "SDK-P1" and account.broker == "paper"
    assert isinstance(account.copy_multiplier, Decimal) and account.copy_multiplier == 1
    page = env.client.instruments("INFY", limit=5)
    infy = next(i for i in page.items if i.tradingsymbol == "INFY")
    assert infy.exchange == "NSE" and isinstance(infy.tick_size, Decimal) and isinstance(infy.last_price, Decimal)
    assert env.client.instruments("", limit=1).truncated is True


class InstrumentsAnsweredByAProxy(Recorder):
    """A proxy in front of the server answers the instrument search with JSON of its own."""

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if "/instruments" in request.url:
            response._content = b'{"detail": "ok"}'
        return response


def test_an_instrument_search_answered_with_something_else_is_an_error_not_a_traceback(env, tp, monkeypatch):
    """The search read body["truncated"] and body["items"] as they came: a proxy's JSON was a KeyError
    (a TypeError for a list), and `tp instruments search` ended with a traceback."""
    mount(env.client, InstrumentsAnsweredByAProxy())
    with pytest.raises(ApiError) as error:
        env.client.instruments("INF")
    assert error.value.code == "unexpected_answer"
    lossy_cli(monkeypatch, InstrumentsAnsweredByAProxy)
    result = tp("instruments", "search", "INF")
    assert result.code == 1 and result.err.startswith("error: ") and "Traceback" not in result.err


class OrderAnsweredInAnotherFormat(Recorder):
    """A server (a newer version, a proxy rewriting it) answers an order placed with a value the
    client cannot read as its type (a time that is not ISO 8601), after the order was placed."""

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method == "POST" and request.url.endswith("/orders"):
            body = json.loads(response.content)
            body["created_at"] = "7 Dec 2026, 11:05 AM"
            response._content = json.dumps(body).encode()
        return response


def test_an_order_answered_with_a_value_the_client_cannot_read_is_an_error_not_a_traceback(env, tp, monkeypatch):
    """from_json let the conversion's ValueError through: place_order raised a bare ValueError
    (no ApiError), and `tp orders place` ended with a traceback, not saying the order may have been
    placed nor which --key repeats it safely; a rerun without it placed a second order."""
    mount(env.client, OrderAnsweredInAnotherFormat())
    with pytest.raises(ApiError) as error:
        env.client.place_order(env.account.pk, "INFY", "BUY", 1)
    assert error.value.code == "unexpected_answer" and "created_at" in error.value.message
    lossy_cli(monkeypatch, OrderAnsweredInAnotherFormat)
    result = tp("orders", "place", "--account", str(env.account.pk), "--symbol", "INFY", "--side", "BUY", "--qty", "1")
    assert result.code == 1 and result.err.startswith("error: ") and "Traceback" not in result.err
    assert "may have been placed" in result.err and "--key" in result.err
    assert Order.objects.count() == 2


def test_base_url_may_include_the_api_root(env):
    client = Client(env.url + "/api/v1/", env.key)
    assert client.base_url == env.url + "/api/v1"
    assert client.me().username == "trader"


# --- Orders: each type placed, modified and cancelled -------------------------------------------


def test_limit_order_place_modify_cancel(env):
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 2, order_type="LIMIT", price=D("1400"), product="CNC")
    assert isinstance(order, OrderModel)
    assert (order.order_type, order.side, order.quantity, order.product) == ("LIMIT", "BUY", 2, "CNC")
    assert order.price == D("1400") and isinstance(order.price, Decimal) and order.trigger_price is None
    # The exchange's word that it rests on the book may already be in: OPEN.
    assert order.status in ("SUBMITTED", "OPEN") and order.broker_order_id and order.source == "manual"
    assert order.created_at.tzinfo is not None and order.updated_at.tzinfo is not None
    assert PaperOrder.objects.get(order_id=order.broker_order_id).price == D("1400")
    assert background.wait_idle(30)  # the exchange's word that it rests on the book is in

    modified = env.client.modify_order(order.id, quantity=3, price="1405.5")
    assert (modified.quantity, modified.price) == (3, D("1405.5"))
    paper = PaperOrder.objects.get(order_id=order.broker_order_id)
    assert (paper.quantity, paper.price) == (3, D("1405.5"))

    cancelled = env.client.cancel_order(order.id)
    assert cancelled.status == "CANCELLED" and cancelled.is_final
    assert PaperOrder.objects.get(order_id=order.broker_order_id).status == "CANCELLED"
    kinds = [e.kind for e in env.client.order_events(order.id)]
    # "opened" is the exchange's word, which may come before our "submitted" (then there is none).
    assert kinds in (
        ["created", "submitted", "opened", "modified", "cancel_requested", "cancelled"],
        ["created", "opened", "modified", "cancel_requested", "cancelled"],
    )
    assert all(e.created_at.tzinfo for e in env.client.order_events(order.id))
    changed = next(e for e in env.client.order_events(order.id) if e.kind == "modified")
    assert "quantity 3" in changed.summary and changed.data["quantity"] == "3", changed  # values as text


def test_sl_order_place_modify_cancel(env):
    order = env.client.place_order(
        env.account.pk, "INFY", "BUY", 1, order_type="SL", price="1610", trigger_price="1600"
    )
    assert (order.order_type, order.price, order.trigger_price) == ("SL", D("1610"), D("1600"))
    modified = env.client.modify_order(order.id, price="1620", trigger_price="1615")
    assert (modified.price, modified.trigger_price) == (D("1620"), D("1615"))
    paper = PaperOrder.objects.get(order_id=order.broker_order_id)
    assert (paper.price, paper.trigger_price) == (D("1620"), D("1615"))
    assert env.client.cancel_order(order.id).status == "CANCELLED"


def test_sl_m_order_place_modify_cancel(env):
    order = env.client.place_order(env.account.pk, "INFY", "SELL", 1, order_type="SL-M", trigger_price="1400")
    assert (order.order_type, order.price, order.trigger_price) == ("SL-M", None, D("1400"))
    modified = env.client.modify_order(order.id, trigger_price="1390", quantity=2)
    assert (modified.trigger_price, modified.quantity) == (D("1390"), 2)
    # A stop order stays a stop order: refused, naming the field.
    with pytest.raises(Conflict) as error:
        env.client.modify_order(order.id, order_type="LIMIT", price="1400")
    assert error.value.status == 409 and error.value.code == "refused" and error.value.field == "order_type"
    assert env.client.cancel_order(order.id).status == "CANCELLED"


def test_market_order_fills_so_modify_and_cancel_are_refused(env):
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1)
    # Filled on arrival, and the answer says so.
    assert (order.order_type, order.price, order.status) == ("MARKET", None, "FILLED")
    assert PaperOrder.objects.get(order_id=order.broker_order_id).status == "COMPLETE"
    with pytest.raises(Conflict) as error:
        env.client.modify_order(order.id, quantity=5)
    assert error.value.code == "refused"
    with pytest.raises(Conflict) as error:
        env.client.cancel_order(order.id)
    assert error.value.code == "refused" and error.value.attempts == 1
    filled = env.client.order(order.id)
    assert filled.status == "FILLED" and filled.filled_quantity == 1 and filled.average_price > 0


def test_a_change_to_market_whose_answer_was_lost_returns_the_filled_order(env):
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    assert background.wait_idle(30)
    adapter = mount(env.client, LoseFirstPatchAnswer())
    # The first attempt changes it to MARKET, which fills at once; the repeat is refused (filled).
    changed = env.client.modify_order(order.id, order_type="MARKET")
    assert [status for method, _, _, status in adapter.calls if method == "PATCH"] == [200, 409]
    assert (changed.id, changed.order_type, changed.status) == (order.id, "MARKET", "FILLED")
    assert PaperOrder.objects.get(order_id=order.broker_order_id).status == "COMPLETE"


def test_a_modify_refused_after_a_lost_answer_is_still_refused(env):
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1)  # filled on arrival
    adapter = mount(env.client, LoseFirstPatchAnswer())
    with pytest.raises(Conflict) as error:
        env.client.modify_order(order.id, quantity=5)  # refused both times: the order shows no change
    assert error.value.after_lost_answer and error.value.code == "refused"
    assert [status for method, _, _, status in adapter.calls if method == "PATCH"] == [409, 409]


def test_modify_of_a_cancelled_order_is_refused(env):
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    env.client.cancel_order(order.id)
    with pytest.raises(Conflict):
        env.client.modify_order(order.id, price="1401")
    with pytest.raises(Conflict):
        env.client.cancel_order(order.id)


# --- Listing ----------------------------------------------------------------------------------


def test_orders_list_filters_and_pagination(env, trader):
    second = make_broker_account(trader, broker="paper", client_id="SDK-P2", label="SDK paper two")
    placed = []
    for price in ("1400", "1401", "1402"):
        placed.append(env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price=price))
    placed.append(env.client.place_order(env.account.pk, "RELIANCE", "BUY", 1, order_type="LIMIT", price="1300"))
    placed.append(env.client.place_order(second.pk, "INFY", "SELL", 1, order_type="LIMIT", price="1600"))
    env.client.cancel_order(placed[0].id)
    assert background.wait_idle(30)  # the exchange's word that the others rest on the book: OPEN

    everything = env.client.orders()
    assert everything.count == 5 and len(everything.items) == 5 and not everything.has_more
    assert [o.id for o in everything.items] == [o.id for o in reversed(placed)]  # newest first

    assert {o.id for o in env.client.orders(status="CANCELLED").items} == {placed[0].id}
    both = env.client.orders(status=["CANCELLED", "OPEN"])
    assert both.count == 5
    assert env.client.orders(symbol="REL").count == 1
    assert env.client.orders(account_id=second.pk).items[0].id == placed[4].id
    assert env.client.orders(account_id=env.account.pk, symbol="INFY", status="OPEN").count == 2
    assert env.client.orders(source="manual").count == 5 and env.client.orders(source="basket").count == 0

    page1 = env.client.orders(limit=2)
    page2 = env.client.orders(limit=2, offset=2)
    page3 = env.client.orders(limit=2, offset=4)
    assert (page1.count, page1.limit, page1.offset, page1.has_more) == (5, 2, 0, True)
    assert len(page3.items) == 1 and not page3.has_more
    assert [o.id for p in (page1, page2, page3) for o in p.items] == [o.id for o in everything.items]
    assert [o.id for o in env.client.iter_orders(page_size=2)] == [o.id for o in everything.items]


def test_iterating_stops_at_the_limit_asked(env):
    placed = [
        env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400").id for _ in range(5)
    ]
    assert [o.id for o in env.client.iter_orders(limit=3, page_size=2)] == placed[::-1][:3]
    assert [o.id for o in env.client.iter_orders(limit=9)] == placed[::-1]
    assert list(env.client.iter_orders(limit=0)) == []
    assert list(env.client.iter_trades(limit=2)) == []
    for bad in ({"limit": -1}, {"limit": "3"}, {"page_size": 0}, {"limit": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            env.client.iter_orders(**bad)


def test_a_page_size_the_server_does_not_take_names_page_size_not_limit(env):
    """iter_orders(page_size=1000) failed at its first page with InvalidRequest naming `limit`: the
    iterator's other argument (how many in all), which the caller had not given."""
    placed = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400").id
    for iterate in (env.client.iter_orders, env.client.iter_trades):
        with pytest.raises(ValueError, match="page_size must be .* at most 500"):
            list(iterate(page_size=501))
    assert [o.id for o in env.client.iter_orders(page_size=500)] == [placed]


def test_cancelling_every_open_order_while_iterating_reaches_them_all(env):
    placed = [
        env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400").id for _ in range(6)
    ]
    seen = []
    for order in env.client.iter_orders(status="open", page_size=2):
        seen.append(order.id)
        env.client.cancel_order(order.id)  # it leaves the list being paged
    assert seen == placed[::-1]
    assert env.client.orders(status="open").count == 0


def test_orders_placed_while_iterating_are_not_repeated(env):
    placed = [
        env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400").id for _ in range(4)
    ]
    pages = env.client.iter_orders(page_size=2)
    seen = [next(pages).id, next(pages).id]
    for _ in range(2):
        env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    seen += [order.id for order in pages]
    assert seen == placed[::-1]
    assert [o.id for o in env.client.iter_orders(page_size=2, before_id=placed[2])] == [placed[1], placed[0]]


def _make(kind, client, account_id, number):
    """One new row of the list ``kind`` through the API (its id)."""
    if kind == "baskets":
        return client.create_basket(f"B{number}", [OrderSpec("INFY", "BUY", 1)], account_ids=[account_id]).id
    if kind == "strategies":
        return client.create_strategy(f"S{number}", account_ids=[account_id]).id
    return client.create_scheduled(account_id, "INFY", "BUY", 1, "10:15", recurrence="trading_days").id


@pytest.mark.parametrize("kind", ["baskets", "strategies", "scheduled"])
def test_every_list_pages_and_iterates_by_the_cursor_and_lists_only_the_key_owners(env, other_trader, kind):
    """baskets(), strategies() and scheduled() read every row in one answer, ever larger. They read page
    by page now (``iter_*`` follows ``before_id``, as ``iter_orders``), and ``*_page`` reads one page."""
    other_account = make_broker_account(other_trader, broker="paper", client_id="SDK-OTHER")
    other = Client(env.url, _key_for(other_trader))
    theirs = _make(kind, other, other_account.pk, 99)
    mine = [_make(kind, env.client, env.account.pk, n) for n in range(4)]
    page_of, iterate, every = (getattr(env.client, name) for name in (f"{kind}_page", f"iter_{kind}", kind))

    first = page_of(limit=2)
    assert (first.count, first.limit, first.offset, first.has_more) == (4, 2, 0, True)
    assert [row.id for row in first.items] == [mine[3], mine[2]]
    rest = page_of(limit=2, before_id=first.items[-1].id)
    assert [row.id for row in rest.items] == [mine[1], mine[0]] and not rest.has_more
    assert [row.id for row in iterate(page_size=3)] == mine[::-1]
    assert [row.id for row in iterate(limit=1)] == [mine[3]]

    rows = iterate(page_size=2)
    seen = [next(rows).id, next(rows).id]
    newer = _make(kind, env.client, env.account.pk, 5)  # added while paging: neither repeated nor skipped
    seen += [row.id for row in rows]
    assert seen == mine[::-1]
    assert [row.id for row in every()] == [newer, *mine[::-1]]  # every row, as before, read page by page
    assert theirs not in {row.id for row in every()} and [row.id for row in getattr(other, kind)()] == [theirs]
    with pytest.raises(InvalidRequest) as error:
        page_of(limit=501)
    assert error.value.field == "limit"
    other.close()


def test_a_row_added_between_a_pages_count_and_its_rows_does_not_end_the_iteration_a_row_short(env, monkeypatch):
    """A page's count and its rows are two reads: a basket made between them was in the rows and not in
    the count, so a full first page said it was all (count 2, two rows): iter_baskets() stopped there,
    and never gave the oldest basket, pushed off that page by the new one."""
    from django.db.models import QuerySet

    mine = [_make("baskets", env.client, env.account.pk, n) for n in range(2)]
    counted, made = QuerySet.count, []

    def count_then_a_basket_made(rows):
        number = counted(rows)
        if rows.model is BasketRow and not made:  # made by another request, once the count was read
            made.append(BasketRow.objects.create(owner=env.user, name="Made meanwhile").pk)
        return number

    monkeypatch.setattr(QuerySet, "count", count_then_a_basket_made)
    assert [row.id for row in env.client.iter_baskets(page_size=2)] == [*made, mine[1], mine[0]]


def test_accounts_and_positions_page_too(env, trader, tp):
    from monitoring import cycle

    second = make_broker_account(trader, broker="paper", client_id="SDK-P2", label="SDK paper two")
    assert [a.id for a in env.client.accounts()] == [second.pk, env.account.pk]
    page = env.client.accounts_page(limit=1)
    assert [a.id for a in page.items] == [second.pk] and page.count == 2 and page.has_more
    assert [a.id for a in env.client.iter_accounts(page_size=1)] == [second.pk, env.account.pk]
    for symbol in ("INFY", "TCS", "RELIANCE"):
        env.client.place_order(env.account.pk, symbol, "BUY", 1)
    cycle.account_monitor(account=env.account)  # records the fills, and the positions
    every = env.client.positions()
    assert {p.tradingsymbol for p in every} == {"INFY", "TCS", "RELIANCE"}
    assert [p.id for p in every] == sorted((p.id for p in every), reverse=True)  # newest first
    assert [p.id for p in env.client.iter_positions(page_size=2)] == [p.id for p in every]
    page = env.client.positions_page(limit=2, open_only=True)
    assert page.count == 3 and [p.id for p in page.items] == [p.id for p in every[:2]]
    assert env.client.positions_page(account_id=second.pk).count == 0
    listed = tp("positions", "list", "--limit", "2")
    assert listed.code == 0 and listed.out.splitlines()[-1] == f"1-2 of 3 (next: --before-id {every[1].id})"
    older = tp("positions", "list", "--before-id", str(every[1].id), "--json")
    assert [p["id"] for p in json.loads(older.out)["items"]] == [every[2].id]


def test_cli_lists_page_with_the_next_pages_before_id(tp, env):
    made = [env.client.create_strategy(f"CLI {n}").id for n in range(3)]
    newest = tp("strategies", "list", "--limit", "2")
    assert newest.code == 0 and newest.out.splitlines()[-1] == f"1-2 of 3 (next: --before-id {made[1]})"
    older = tp("strategies", "list", "--before-id", str(made[1]), "--json")
    assert [s["id"] for s in json.loads(older.out)["items"]] == [made[0]]
    for group in ("accounts", "baskets", "scheduled"):
        listed = tp(group, "list", "--limit", "1", "--json")
        assert listed.code == 0 and json.loads(listed.out)["limit"] == 1, (group, listed.err)
    refused = tp("baskets", "list", "--limit", "501")
    assert refused.code == 1 and "(field: limit)" in refused.err


def test_list_is_scoped_to_the_key_owner(env, other_trader):
    other_account = make_broker_account(other_trader, broker="paper", client_id="SDK-OTHER")
    other = Client(env.url, _key_for(other_trader))
    theirs = other.place_order(other_account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    assert env.client.orders().count == 0
    assert other.orders().items[0].id == theirs.id


# --- Typed errors -------------------------------------------------------------------------------


def test_bad_tick_price_is_invalid_request_naming_the_field(env):
    with pytest.raises(InvalidRequest) as error:
        env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1500.03")
    assert error.value.status == 422 and error.value.code == "invalid" and error.value.field == "price"
    assert "tick" in error.value.message and str(error.value).endswith("(field: price)")
    assert not Order.objects.exists() and not PaperOrder.objects.exists()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"side": "HOLD"}, "side"),
        ({"quantity": 0}, "quantity"),
        ({"order_type": "LIMIT"}, "price"),
        ({"tradingsymbol": "NOSUCH"}, "tradingsymbol"),
        ({"account_id": 999_999}, "account_id"),
    ],
)
def test_invalid_inputs_name_their_field(env, kwargs, field):
    args = {"account_id": env.account.pk, "tradingsymbol": "INFY", "side": "BUY", "quantity": 1, **kwargs}
    with pytest.raises(InvalidRequest) as error:
        env.client.place_order(**args)
    assert error.value.field == field


def test_another_traders_order_is_not_found(env, other_trader):
    other_account = make_broker_account(other_trader, broker="paper", client_id="SDK-OTHER")
    other = Client(env.url, _key_for(other_trader))
    theirs = other.place_order(other_account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    for call in (
        lambda: env.client.order(theirs.id),
        lambda: env.client.order_events(theirs.id),
        lambda: env.client.modify_order(theirs.id, price="1401"),
        lambda: env.client.cancel_order(theirs.id),
    ):
        with pytest.raises(NotFound) as error:
            call()
        assert error.value.status == 404 and error.value.code == "not_found"
    assert background.wait_idle(30)
    assert other.order(theirs.id).status == "OPEN" and other.order(theirs.id).price == D("1400")
    # Their account is not ours either: a field error, like an unknown id.
    with pytest.raises(InvalidRequest) as error:
        env.client.place_order(other_account.pk, "INFY", "BUY", 1)
    assert error.value.field == "account_id"
    with pytest.raises(NotFound):
        env.client.account(other_account.pk)


def test_bad_key_is_authentication_error_and_not_retried(env):
    client = Client(env.url, "tp_deadbeef_not-a-real-key", backoff=0.01)
    recorder = mount(client, Recorder())
    with pytest.raises(AuthenticationError) as error:
        client.me()
    assert error.value.status == 401 and error.value.code == "unauthenticated"
    assert isinstance(error.value, ApiError) and len(recorder.calls) == 1
    with pytest.raises(AuthenticationError):
        client.place_order(env.account.pk, "INFY", "BUY", 1)
    assert not Order.objects.exists()


def test_4xx_other_than_429_is_never_retried(env):
    recorder = mount(env.client, Recorder())
    with pytest.raises(InvalidRequest):
        env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1500.03")
    with pytest.raises(NotFound):
        env.client.order(987_654)
    assert [status for *_, status in recorder.calls] == [422, 404]


# --- Idempotency and retries ------------------------------------------------------------------


def test_idempotency_key_returns_the_same_order_and_places_once(env):
    recorder = mount(env.client, Recorder())
    first = env.client.place_order(
        env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400", idempotency_key="algo-42"
    )
    again = env.client.place_order(
        env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400", idempotency_key="algo-42"
    )
    assert again.id == first.id and again.reference == first.reference
    assert [(method, key, status) for method, _, key, status in recorder.calls] == [
        ("POST", "algo-42", 201),
        ("POST", "algo-42", 200),
    ]
    assert Order.objects.count() == 1 and PaperOrder.objects.count() == 1
    # The same key for a different order is a conflict, and places nothing.
    with pytest.raises(Conflict) as error:
        env.client.place_order(
            env.account.pk, "INFY", "BUY", 2, order_type="LIMIT", price="1400", idempotency_key="algo-42"
        )
    assert error.value.field == "idempotency_key"
    assert PaperOrder.objects.count() == 1


def test_each_call_without_a_key_gets_its_own(env):
    recorder = mount(env.client, Recorder())
    a = env.client.place_order(env.account.pk, "INFY", "BUY", 1)
    b = env.client.place_order(env.account.pk, "INFY", "BUY", 1)
    keys = [key for _, _, key, _ in recorder.calls]
    assert a.id != b.id and len(set(keys)) == 2 and all(len(k) == 36 for k in keys)  # uuid4s
    assert PaperOrder.objects.count() == 2


def test_lost_answer_is_retried_with_the_same_key_and_places_once(env):
    adapter = mount(env.client, LoseFirstPostAnswer())
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    posts = [call for call in adapter.calls if call[0] == "POST"]
    assert len(posts) == 2
    (_, _, key1, status1), (_, _, key2, status2) = posts
    assert key1 and key1 == key2  # the client made the key and reused it
    assert (status1, status2) == (201, 200)  # the server placed it the first time; the retry got the same order
    assert Order.objects.count() == 1 and PaperOrder.objects.count() == 1
    assert order.id == Order.objects.get().pk and order.broker_order_id == PaperOrder.objects.get().order_id


def test_a_lost_answer_to_scheduling_is_retried_with_the_same_key_and_schedules_once(env):
    adapter = mount(env.client, LoseFirstPostAnswer())
    row = env.client.create_scheduled(env.account.pk, "INFY", "BUY", 1, "09:20", recurrence="trading_days")
    posts = [(key, status) for method, _, key, status in adapter.calls if method == "POST"]
    assert [status for _, status in posts] == [201, 200] and posts[0][0] and posts[0][0] == posts[1][0]
    assert [s.id for s in env.client.scheduled()] == [row.id]


def test_lost_answer_with_the_callers_key(env):
    adapter = mount(env.client, LoseFirstPostAnswer())
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1, idempotency_key="mine-1")
    assert [key for method, _, key, _ in adapter.calls if method == "POST"] == ["mine-1", "mine-1"]
    assert env.client.order(order.id).id == order.id and PaperOrder.objects.count() == 1


def test_lost_answer_without_retries_is_a_transport_error(env):
    client = Client(env.url, env.key, retries=0)
    mount(client, LoseFirstPostAnswer())
    with pytest.raises(TransportError) as error:
        client.place_order(env.account.pk, "INFY", "BUY", 1)
    assert error.value.status is None and isinstance(error.value, ApiError)
    assert PaperOrder.objects.count() == 1  # it was placed; only the answer was lost


def test_lost_answer_of_a_cancel_still_reports_the_cancelled_order(env):
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    adapter = mount(env.client, LoseFirstPostAnswer())
    cancelled = env.client.cancel_order(order.id)
    assert cancelled.status == "CANCELLED"
    assert [status for method, _, _, status in adapter.calls if method == "POST"] == [200, 409]


def test_a_change_whose_broker_answer_was_lost_is_not_said_refused(env, tp):
    """The broker took the cancel, its answer to us was lost: a bot must not read it as refused
    (``Conflict`` alone), but as "perhaps done" (``AnswerLost``), and the CLI says to look."""
    first = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    second = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    PaperClient.objects.filter(user_id=env.account.client_id).update(timeout_rate=1)
    with pytest.raises(AnswerLost) as lost:
        env.client.cancel_order(first.id)
    assert isinstance(lost.value, Conflict) and lost.value.code == "outcome_unknown"
    with pytest.raises(AnswerLost):
        env.client.modify_order(second.id, price="1405")
    told = tp("orders", "cancel", str(second.id))
    assert told.code == 1 and f"tp orders get {second.id}" in told.err, told.err
    PaperClient.objects.filter(user_id=env.account.client_id).update(timeout_rate=0)
    assert PaperOrder.objects.get(order_id=Order.objects.get(pk=first.id).broker_order_id).status == "CANCELLED"
    refused = env.client.place_order(env.account.pk, "INFY", "BUY", 1)  # filled: nothing to cancel
    with pytest.raises(Conflict) as conflict:
        env.client.cancel_order(refused.id)
    assert conflict.value.code == "refused" and not isinstance(conflict.value, AnswerLost)


@pytest.mark.parametrize("cut", [CutFirstPostAnswer, GarbleFirstPostAnswer])
def test_an_answer_cut_short_is_a_lost_answer(env, cut):
    adapter = mount(env.client, cut())
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    posts = [(key, status) for method, _, key, status in adapter.calls if method == "POST"]
    assert [status for _, status in posts] == [201, 200] and posts[0][0] == posts[1][0]  # retried, same key
    assert PaperOrder.objects.count() == 1 and order.id == Order.objects.get().pk
    # A call that cannot be repeated is not, and says it may have been carried out (it was).
    strategy = StrategyRow.objects.get(pk=env.client.create_strategy("Cut").id)
    client = Client(env.url, env.key, backoff=0.01)
    mount(client, cut())
    with pytest.raises(TransportError) as error:
        client.rotate_strategy_secret(strategy.pk)
    assert "could not be sent" not in error.value.message and error.value.attempts == 1
    assert StrategyRow.objects.get(pk=strategy.pk).webhook_secret_hash != strategy.webhook_secret_hash


class TruncateFirstPostBody(Recorder):
    """The first POST's answer arrives with its status (201: placed) but only part of its body: a
    close-delimited answer cut short, which no HTTP check can tell (no length to fall short of)."""

    truncated = False

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method == "POST" and not self.truncated:
            self.truncated = True
            response._content = response.content[: len(response.content) // 2]
        return response


def test_a_success_answer_whose_body_cannot_be_read_is_a_lost_answer(env, tp, monkeypatch):
    """The order was placed (201) but its answer's body was cut short: the call is repeated with the
    same key and answers the order, not "the answer is not JSON" (read as not placed, placed again)."""
    adapter = mount(env.client, TruncateFirstPostBody())
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    posts = [(key, status) for method, _, key, status in adapter.calls if method == "POST"]
    assert [status for _, status in posts] == [201, 200] and posts[0][0] == posts[1][0]
    assert PaperOrder.objects.count() == 1 and order.id == Order.objects.get().pk

    made = lossy_cli(monkeypatch, TruncateFirstPostBody)
    argv = f"orders place --account {env.account.pk} --symbol INFY --side BUY --qty 2 --type LIMIT --price 1400"
    failed = tp(*argv.split(), "--retries", "0")
    [key] = {key for method, _, key, _ in made[0].calls if method == "POST"}
    assert failed.code == 1 and "may have been placed" in failed.err and f"--key {key}:" in failed.err, failed.err
    assert PaperOrder.objects.count() == 2


class PostAnsweredWith(Recorder):
    """A proxy in front of the server replaces every POST's answer (after the server carried it out)
    with a 200 and a body of its own."""

    body = b""

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method == "POST":
            response.status_code, response._content = 200, self.body
        return response


@pytest.mark.parametrize("body", [b'{"ok": true}', b""])
def test_cli_placement_answered_with_something_else_names_the_key_that_repeats_it_safely(body, tp, env, monkeypatch):
    """The server placed the order, but what came back is not it (another JSON, nothing): the outcome
    is unknown, so the error must name the key that repeats the command safely, not read as refused."""
    basket = env.client.create_basket("Proxied", [OrderSpec("INFY", "BUY", 1)], account_ids=[env.account.pk])
    made = lossy_cli(monkeypatch, type("Answered", (PostAnsweredWith,), {"body": body}))
    place = f"orders place --account {env.account.pk} --symbol INFY --side BUY --qty 1 --type LIMIT --price 1400"
    for argv, check in ((place.split(), "tp orders list"), (["baskets", "place", str(basket.id)], "--source basket")):
        failed = tp(*argv, "--retries", "0")
        [key] = {key for method, _, key, _ in made[-1].calls if method == "POST"}
        assert failed.code == 1 and "Traceback" not in failed.err, failed.err
        assert "may have been placed" in failed.err and f"--key {key}:" in failed.err and check in failed.err
    assert PaperOrder.objects.count() == 2  # both were placed


def test_an_oversized_body_is_413_and_not_retried(env, settings):
    basket = env.client.create_basket("Big", [OrderSpec("INFY", "BUY", 1)], account_ids=[env.account.pk])
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    recorder = mount(env.client, Recorder())
    with pytest.raises(ApiError) as error:
        # Over 1000 bytes whatever the account's id (1 alone, as a fresh SQLite database numbers it).
        env.client.place_basket(basket.id, account_ids=[env.account.pk] * 1000)
    assert (error.value.status, error.value.code, error.value.attempts) == (413, "payload_too_large", 1)
    assert len(recorder.calls) == 1 and not PaperOrder.objects.exists()


def test_a_redirected_placement_is_an_error_not_an_empty_order(env, tp, monkeypatch):
    """A placement answered with a redirect was not placed: followed, it became a GET of the order
    list, whose 200 was read as the order (every field None), and the order was silently lost."""
    adapter = mount(env.client, PostsMovedPermanently())
    with pytest.raises(ApiError) as error:
        env.client.place_order(env.account.pk, "INFY", "BUY", 1)
    assert error.value.status == 301 and error.value.code == "redirected"
    assert [method for method, *_ in adapter.calls] == ["POST"]  # not followed, not retried
    with pytest.raises(ApiError):
        env.client.create_basket("moved", [OrderSpec("INFY", "BUY", 1)])
    assert not Order.objects.exists() and not BasketRow.objects.exists()
    lossy_cli(monkeypatch, PostsMovedPermanently)
    result = tp("orders", "place", "--account", str(env.account.pk), "--symbol", "INFY", "--side", "BUY", "--qty", "1")
    assert result.code == 1 and "redirect" in result.err, result
    assert not Order.objects.exists()


def test_a_create_whose_answer_was_lost_is_not_repeated(env):
    """A new webhook secret has no idempotency key: a lost answer must not make a second one (which
    would stop the first, perhaps already pasted into the alerts, from working)."""
    strategy = StrategyRow.objects.get(pk=env.client.create_strategy("Once").id)
    adapter = mount(env.client, LoseFirstPostAnswer())
    with pytest.raises(TransportError):
        env.client.rotate_strategy_secret(strategy.pk)
    assert len(adapter.calls) == 1
    assert StrategyRow.objects.get(pk=strategy.pk).webhook_secret_hash != strategy.webhook_secret_hash


def test_connection_refused_is_retried_then_raised(env):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    client = Client(f"http://127.0.0.1:{port}", env.key, retries=2, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(TransportError) as error:
        client.create_basket("never", [OrderSpec("INFY", "BUY", 1)])  # retried: the request never left
    assert error.value.attempts == 3 and time.monotonic() - started < 5
    assert error.value.sent is False  # it certainly was not carried out


def test_a_lost_answer_is_a_transport_error_that_may_have_been_carried_out(env):
    client = Client(env.url, env.key, retries=0)
    mount(client, LoseFirstPostAnswer())
    with pytest.raises(TransportError) as error:
        client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    assert error.value.sent is True


def test_a_placement_that_never_reached_the_server_says_so_not_maybe_placed(env, tp, monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    monkeypatch.setenv("TP_URL", f"http://127.0.0.1:{port}")
    place = f"orders place --account {env.account.pk} --symbol INFY --side BUY --qty 1 --type LIMIT --price 1400"
    result = tp(*place.split(), "--retries", "0")
    assert result.code != 0 and "failed" in result.err, result.err
    assert "may have been placed" not in result.err


class FirstGetIs503RetryAfter(Recorder):
    """The server is unavailable for a while and says how long (``Retry-After``) on the first GET."""

    def __init__(self, seconds: str):
        super().__init__()
        self.seconds, self.failed = seconds, False

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method == "GET" and not self.failed:
            self.failed = True
            response.status_code, response.reason = 503, "Service Unavailable"
            response.headers["Retry-After"] = self.seconds
        return response


def test_a_503_s_retry_after_is_waited_not_the_backoff(env, monkeypatch):
    waits = []
    monkeypatch.setattr(env.client, "_sleep", waits.append)
    mount(env.client, FirstGetIs503RetryAfter("3"))
    assert env.client.me().username == "trader"
    assert len(waits) == 1 and 3 <= waits[0] < 3.2  # not the backoff's 0.25-0.5 s
    client = Client(env.url, env.key, retries=3, max_retry_wait=5)
    mount(client, FirstGetIs503RetryAfter("60"))
    with pytest.raises(ServerError) as error:
        client.me()  # longer than it will wait: raised at once
    assert (error.value.status, error.value.retry_after, error.value.attempts) == (503, 60, 1)


def test_502_503_504_are_retried_with_backoff(env):
    adapter = mount(env.client, FirstGetIs503())
    assert env.client.me().username == "trader"
    assert [status for *_, status in adapter.calls] == [200, 200]  # the first was answered, then replaced by 503
    client = Client(env.url, env.key, retries=0)
    mount(client, FirstGetIs503())
    with pytest.raises(ServerError) as error:
        client.me()
    assert error.value.status == 503 and error.value.code == "http_503" and "Service Unavailable" in error.value.message


class EveryGetIs502(EveryPostIs502):
    METHOD = "GET"


def test_the_backoff_is_capped_at_max_retry_wait(env, monkeypatch):
    """The backoff doubled without end: with retries=12 a call to a server behind a failing proxy
    waited up to 0.5 * 2**11 s (17 minutes) before its last retry, and 34 minutes in all."""
    client = Client(env.url, env.key, retries=12, max_retry_wait=5)
    waits = []
    monkeypatch.setattr(client, "_sleep", waits.append)
    mount(client, EveryGetIs502())
    with pytest.raises(ServerError) as error:
        client.me()
    assert error.value.attempts == 13 and len(waits) == 12
    assert max(waits) <= 5 and sum(waits) <= 60, waits


def test_rate_limit_waits_retry_after_and_succeeds(env, settings):
    settings.API_RATE_LIMITS = [(2, 1.0)]
    recorder = mount(env.client, Recorder())
    started = time.monotonic()
    names = [env.client.me().username for _ in range(4)]
    elapsed = time.monotonic() - started
    assert names == ["trader"] * 4
    statuses = [status for *_, status in recorder.calls]
    assert statuses.count(429) >= 1 and statuses.count(200) == 4
    assert elapsed >= 0.9  # it waited the server's Retry-After (1s) instead of hammering


def test_rate_limit_with_no_retries_left_raises_rate_limited(env, settings):
    settings.API_RATE_LIMITS = [(1, 5.0)]
    client = Client(env.url, env.key, retries=0)
    client.me()
    with pytest.raises(RateLimited) as error:
        client.me()
    assert error.value.status == 429 and error.value.code == "rate_limited" and error.value.retry_after >= 1


def test_rate_limited_order_is_retried_with_the_same_key(env, settings):
    settings.API_RATE_LIMITS = [(1, 1.0)]
    recorder = mount(env.client, Recorder())
    env.client.me()
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1)
    posts = [(key, status) for method, _, key, status in recorder.calls if method == "POST"]
    assert posts[0][1] == 429 and posts[-1][1] == 201 and len({key for key, _ in posts}) == 1
    assert PaperOrder.objects.count() == 1 and order.id == Order.objects.get().pk


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 <= parse_retry_after(later) <= 31


# --- Baskets ----------------------------------------------------------------------------------


def test_basket_create_place_and_repeat(env, trader):
    second = make_broker_account(trader, broker="paper", client_id="SDK-P2", copy_multiplier=D("2"))
    basket = env.client.create_basket(
        "Morning",
        [
            OrderSpec("INFY", "BUY", 1, order_type="LIMIT", price=D("1400")),
            {"tradingsymbol": "RELIANCE", "side": "SELL", "quantity": 2},
        ],
        account_ids=[env.account.pk],
    )
    assert isinstance(basket, Basket) and basket.account_ids == [env.account.pk] and basket.last_placed_at is None
    assert [(i.tradingsymbol, i.order_type, i.price) for i in basket.items] == [
        ("INFY", "LIMIT", D("1400")),
        ("RELIANCE", "MARKET", None),
    ]
    assert [b.id for b in env.client.baskets()] == [basket.id]

    results = env.client.place_basket(basket.id, idempotency_key="run-1")
    assert [(r.symbol, r.quantity, r.status) for r in results] == [
        ("INFY", 1, "OPEN"),  # resting
        ("RELIANCE", 2, "FILLED"),  # on arrival
    ]
    assert all(r.order_id and r.account_id == env.account.pk for r in results)
    again = env.client.place_basket(basket.id, idempotency_key="run-1")
    assert [r.order_id for r in again] == [r.order_id for r in results]
    assert PaperOrder.objects.count() == 2
    assert env.client.orders(source="basket").count == 2
    assert env.client.order(results[0].order_id).basket_id == basket.id

    on_second = env.client.place_basket(basket.id, account_ids=[second.pk])  # a new run (its own key)
    assert [(r.account_id, r.quantity) for r in on_second] == [(second.pk, 2), (second.pk, 4)]
    assert PaperOrder.objects.count() == 4
    assert env.client.basket(basket.id).last_placed_at.tzinfo is not None


def test_basket_place_whose_answer_was_lost_places_once(env):
    basket = env.client.create_basket("Lost", [OrderSpec("INFY", "BUY", 1)], account_ids=[env.account.pk])
    adapter = mount(env.client, LoseFirstPostAnswer())
    results = env.client.place_basket(basket.id)
    keys = [key for method, _, key, _ in adapter.calls if method == "POST"]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert len(results) == 1 and PaperOrder.objects.count() == 1 and Order.objects.count() == 1


def test_a_basket_create_whose_answer_was_lost_is_the_same_basket(env):
    """Sent again after a lost answer, the create was refused as "name taken" by the basket the first
    call had made: the script saw an error for a basket that was there."""
    adapter = mount(env.client, LoseFirstPostAnswer())
    basket = env.client.create_basket("Lost create", [OrderSpec("INFY", "BUY", 1)], account_ids=[env.account.pk])
    assert [(method, status) for method, _, _, status in adapter.calls] == [("POST", 201), ("POST", 200)]
    assert [row.pk for row in BasketRow.objects.filter(name="Lost create")] == [basket.id]


def test_basket_update_delete_and_errors(env, other_trader):
    basket = env.client.create_basket("Edit me", [OrderSpec("INFY", "BUY", 1)])
    renamed = env.client.update_basket(basket.id, name="Edited")
    assert renamed.name == "Edited" and [i.tradingsymbol for i in renamed.items] == ["INFY"]
    changed = env.client.update_basket(
        basket.id, items=[OrderSpec("RELIANCE", "SELL", 3)], account_ids=[env.account.pk]
    )
    assert changed.name == "Edited" and changed.account_ids == [env.account.pk]
    assert [(i.tradingsymbol, i.quantity) for i in changed.items] == [("RELIANCE", 3)]
    with pytest.raises(InvalidRequest) as error:
        env.client.create_basket("Edited", [OrderSpec("INFY", "BUY", 1)])
    assert error.value.field == "name"
    with pytest.raises(InvalidRequest) as error:
        env.client.create_basket("Bad", [OrderSpec("NOSUCH", "BUY", 1)])
    assert error.value.field == "items.0.tradingsymbol"
    with pytest.raises(InvalidRequest) as error:
        env.client.place_basket(env.client.create_basket("No accounts", [OrderSpec("INFY", "BUY", 1)]).id)
    assert error.value.field == "account_ids"
    theirs = Client(env.url, _key_for(other_trader)).create_basket("Theirs", [OrderSpec("INFY", "BUY", 1)])
    with pytest.raises(NotFound):
        env.client.place_basket(theirs.id, account_ids=[env.account.pk])
    env.client.delete_basket(basket.id)
    with pytest.raises(NotFound):
        env.client.basket(basket.id)
    with pytest.raises(NotFound):
        env.client.delete_basket(basket.id)


class EditBeforeTheWrite(requests.Session):
    """Someone else's edit lands while a call is under way: just before the call's write (PUT or PATCH) is sent."""

    def __init__(self, edit):
        super().__init__()
        self.edit = edit

    def request(self, method, url, *args, **kwargs):
        if method in ("PUT", "PATCH") and self.edit:
            edit, self.edit = self.edit, None
            edit()
        return super().request(method, url, *args, **kwargs)


def test_update_basket_keeps_a_concurrent_change_of_another_field(env, trader):
    """Only the name is sent: the accounts someone else set meanwhile stay (a read, then a replace
    with what was read, would put the old accounts back)."""
    basket = env.client.create_basket("Shared", [OrderSpec("INFY", "BUY", 1)], account_ids=[env.account.pk])
    second = make_broker_account(trader, broker="paper", client_id="SDK-P2")
    client = Client(
        env.url,
        env.key,
        backoff=0.01,
        session=EditBeforeTheWrite(lambda: BasketRow.objects.get(pk=basket.id).accounts.set([second])),
    )
    recorder = mount(client, Recorder())
    updated = client.update_basket(basket.id, name="Renamed")
    assert (updated.name, updated.account_ids) == ("Renamed", [second.pk])
    assert [i.id for i in updated.items] == [i.id for i in basket.items]
    assert env.client.basket(basket.id) == updated
    assert [(method, status) for method, _, _, status in recorder.calls] == [("PATCH", 200)]  # nothing read first


def test_update_strategy_keeps_a_concurrent_change_of_another_field(env):
    strategy = env.client.create_strategy("Shared", account_ids=[env.account.pk], stop_loss=D("1"))
    client = Client(
        env.url,
        env.key,
        backoff=0.01,
        session=EditBeforeTheWrite(
            lambda: StrategyRow.objects.filter(pk=strategy.id).update(take_profit=D("2"), max_retries=3)
        ),
    )
    recorder = mount(client, Recorder())
    updated = client.update_strategy(strategy.id, is_active=False)
    assert (updated.is_active, updated.take_profit, updated.max_retries, updated.stop_loss) == (
        False,
        D("2"),
        3,
        D("1"),
    )
    assert [(method, status) for method, _, _, status in recorder.calls] == [("PATCH", 200)]
    cleared = client.update_strategy(strategy.id, stop_loss=None)  # None is sent: it clears the setting
    assert (cleared.stop_loss, cleared.take_profit, cleared.is_active) == (None, D("2"), False)
    with pytest.raises(InvalidRequest) as error:
        client.update_strategy(strategy.id, name="", max_retries=5)
    assert error.value.field == "name" and env.client.strategy(strategy.id).max_retries == 3


def test_a_strategy_create_whose_answer_was_lost_is_the_same_strategy_with_a_secret_that_works(env):
    """Retried without a key, the repeat was "name taken" and the secret, in the lost answer only,
    could not be had: the strategy could never sign an alert until its secret was rotated."""
    adapter = mount(env.client, LoseFirstPostAnswer())
    strategy = env.client.create_strategy("Lost create", account_ids=[env.account.pk])
    assert [(method, status) for method, _, _, status in adapter.calls] == [("POST", 201), ("POST", 200)]
    row = StrategyRow.objects.get(name="Lost create")
    assert (
        strategy.id == row.pk
        and row.webhook_secret_hash == hashlib.sha256(strategy.webhook_secret.encode()).hexdigest()
    )


def test_an_update_whose_answer_was_lost_is_sent_again(env):
    """A PATCH sets values: repeating it after a lost answer changes nothing more."""
    strategy = env.client.create_strategy("Lost update", account_ids=[env.account.pk])
    adapter = mount(env.client, LoseFirstPatchAnswer())
    updated = env.client.update_strategy(strategy.id, max_retries=4, retryable_kinds=["network"])
    assert (updated.max_retries, updated.retryable_kinds) == (4, ["network"])
    assert [(method, status) for method, _, _, status in adapter.calls] == [("PATCH", 200), ("PATCH", 200)]


# --- Scheduled orders -------------------------------------------------------------------------


def test_scheduled_create_list_cancel(env):
    tomorrow = date.today() + timedelta(days=2)
    row = env.client.create_scheduled(
        env.account.pk, "INFY", "BUY", 1, dtime(9, 20), run_on=tomorrow, order_type="LIMIT", price=D("1400")
    )
    assert (row.status, row.recurrence, row.run_on, row.time_of_day, row.price) == (
        "active",
        "once",
        tomorrow,
        dtime(9, 20),
        D("1400"),
    )
    assert row.next_run_at.tzinfo is not None
    assert [s.id for s in env.client.scheduled()] == [row.id]
    assert env.client.scheduled_order(row.id).tradingsymbol == "INFY"
    weekly = env.client.create_scheduled(
        env.account.pk,
        "RELIANCE",
        "SELL",
        1,
        "15:10",
        recurrence="weekdays",
        weekdays=[0, 2],
        timezone="UTC",
        validity="IOC",
    )
    assert weekly.weekdays == [0, 2] and weekly.timezone == "UTC"
    assert (row.validity, weekly.validity) == ("DAY", "IOC")  # as it will be placed
    cancelled = env.client.cancel_scheduled(row.id)
    assert cancelled.status == "cancelled" and cancelled.next_run_at is None
    with pytest.raises(InvalidRequest) as error:
        env.client.create_scheduled(env.account.pk, "INFY", "BUY", 1, "09:20")  # once, but no date
    assert error.value.field == "run_on"
    assert not PaperOrder.objects.exists()


# --- Strategies -------------------------------------------------------------------------------


def test_update_scheduled_changes_only_what_is_given(env):
    """The API changes a scheduled order in place (PATCH); the SDK had no method for it, so a script
    could only cancel it and schedule another (losing its history) or send raw requests."""
    day = date.today() + timedelta(days=2)
    row = env.client.create_scheduled(
        env.account.pk, "INFY", "BUY", 3, dtime(9, 20), run_on=day, order_type="LIMIT", price=D("1400")
    )
    changed = env.client.update_scheduled(row.id, price=D("1400.50"), time_of_day=dtime(9, 30))
    assert (changed.id, changed.price, changed.time_of_day) == (row.id, D("1400.50"), dtime(9, 30))
    assert (changed.quantity, changed.run_on, changed.order_type) == (3, day, "LIMIT")  # kept
    market = env.client.update_scheduled(row.id, order_type="MARKET", price=None)  # None clears the price
    assert (market.order_type, market.price) == ("MARKET", None)
    with pytest.raises(InvalidRequest) as error:
        env.client.update_scheduled(row.id, quantity=0)
    assert error.value.field == "quantity" and env.client.scheduled_order(row.id).quantity == 3
    assert not PaperOrder.objects.exists()


def test_strategy_create_and_signal(env):
    strategy = env.client.create_strategy(
        "Breakout", account_ids=[env.account.pk], max_retries=2, retryable_kinds=["network"], chase_max_percent="1.5"
    )
    assert isinstance(strategy, Strategy)
    assert strategy.webhook_secret and strategy.webhook_secret.startswith(strategy.webhook_secret_prefix)
    assert strategy.max_retries == 2 and strategy.chase_max_percent == D("1.5")
    assert strategy.webhook_url.endswith(f"/hooks/strategies/{strategy.id}/")
    listed = env.client.strategies()
    assert [s.id for s in listed] == [strategy.id] and listed[0].webhook_secret is None  # shown once only

    result = env.client.signal(strategy.id, "sig-1", "INFY", "BUY", 2)
    assert result.signal == "sig-1" and result.replayed is False
    (placement,) = result.results
    assert placement.account_id == env.account.pk and placement.quantity == 2 and placement.order_id
    order = env.client.order(placement.order_id)
    assert order.source == "strategy" and order.strategy_id == strategy.id

    repeat = env.client.signal(strategy.id, "sig-1", "INFY", "BUY", 2)
    assert repeat.replayed is True and [r.order_id for r in repeat.results] == [placement.order_id]
    assert PaperOrder.objects.count() == 1

    updated = env.client.update_strategy(strategy.id, is_active=False)
    assert updated.is_active is False and updated.max_retries == 2 and updated.account_ids == [env.account.pk]
    with pytest.raises(InvalidRequest) as error:
        env.client.signal(strategy.id, "sig-2", "INFY", "BUY", 1)
    assert error.value.field == "strategy"
    with pytest.raises(Conflict):
        env.client.delete_strategy(strategy.id)  # it has orders
    rotated = env.client.rotate_strategy_secret(strategy.id)
    assert rotated.webhook_secret and rotated.webhook_secret != strategy.webhook_secret


def test_signal_whose_answer_was_lost_places_once(env):
    strategy = env.client.create_strategy("Lost signal", account_ids=[env.account.pk])
    adapter = mount(env.client, LoseFirstPostAnswer())
    result = env.client.signal(strategy.id, "sig-lost", "INFY", "BUY", 1)
    assert [status for method, _, _, status in adapter.calls if method == "POST"] == [201, 200]
    assert len(result.results) == 1 and PaperOrder.objects.count() == 1
    # The server's "replayed" found what this call's own first attempt placed: not a repeat of another call.
    assert result.replayed is False and result.after_lost_answer is True
    assert env.client.signal(strategy.id, "sig-lost", "INFY", "BUY", 1).replayed is True  # a second call


def test_cli_signal_whose_answer_was_lost_does_not_say_nothing_was_placed(tp, env, monkeypatch):
    strategy = env.client.create_strategy("Lost CLI signal", account_ids=[env.account.pk])
    lossy_cli(monkeypatch, LoseFirstPostAnswer)
    result = tp(*f"strategies signal {strategy.id} --signal-id lost-1 --symbol INFY --side BUY --qty 1".split())
    assert result.code == 0, result.err
    assert "a repeat" not in result.out and "placed by an earlier attempt of this command" in result.out
    assert PaperOrder.objects.count() == 1


class FirstPostNeverForwarded(Recorder):
    """A proxy answers the first POST 502 without passing it on (its upstream was down a moment)."""

    answered = False

    def send(self, request, **kwargs):
        if request.method != "POST" or self.answered:
            return super().send(request, **kwargs)
        self.answered = True
        response = requests.Response()
        response.status_code, response.reason, response.url, response.request = 502, "Bad Gateway", request.url, request
        response._content, response._content_consumed = b"<html>bad gateway</html>", True
        self.calls.append((request.method, requests.utils.urlparse(request.url).path, None, 502))
        return response


def test_a_signal_placed_by_the_retry_itself_is_not_said_placed_by_an_earlier_attempt(tp, env, monkeypatch):
    """The first attempt never reached the server (a proxy's 502) and the retry placed the orders (201):
    the result said after_lost_answer and tp said "placed by an earlier attempt of this command, whose
    answer was lost", which no attempt was."""
    strategy = env.client.create_strategy("Proxy down", account_ids=[env.account.pk])
    adapter = mount(env.client, FirstPostNeverForwarded())
    result = env.client.signal(strategy.id, "sig-502", "INFY", "BUY", 1)
    assert [status for method, _, _, status in adapter.calls if method == "POST"] == [502, 201]
    assert (result.replayed, result.after_lost_answer) == (False, False)
    assert len(result.results) == 1 and PaperOrder.objects.count() == 1

    lossy_cli(monkeypatch, FirstPostNeverForwarded)
    shown = tp(*f"strategies signal {strategy.id} --signal-id sig-503 --symbol INFY --side BUY --qty 1".split())
    assert shown.code == 0 and shown.out.splitlines()[0] == "signal sig-503", shown.out
    assert PaperOrder.objects.count() == 2


# --- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def tp(env, monkeypatch, capsys):
    monkeypatch.setenv("TP_URL", env.url)
    monkeypatch.setenv("TP_API_KEY", env.key)

    def run(*argv):
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return SimpleNamespace(code=code, out=out, err=err)

    return run


def test_cli_orders_place_table_and_json(tp, env):
    place = f"orders place --account {env.account.pk} --symbol INFY --qty 1 --type LIMIT --price 1500 --key cli-1"
    result = tp(*place.split(), "--side", "buy")
    assert result.code == 0, result.err
    header, row = result.out.splitlines()
    assert header.split()[:3] == ["ID", "REFERENCE", "ACCOUNT"]
    order = Order.objects.get()
    assert str(order.pk) in row and "NSE:INFY" in row and "LIMIT" in row and "1500" in row
    assert (order.side, order.price, order.idempotency_key.endswith("api:cli-1")) == ("BUY", D("1500"), True)

    again = tp(*place.split(), "--side", "BUY", "--json")
    assert again.code == 0 and json.loads(again.out)["id"] == order.pk and PaperOrder.objects.count() == 1


def test_cli_orders_list_json_and_table(tp, env):
    for price in ("1400", "1401", "1402"):
        env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price=price)
    first = env.client.orders().items[-1]
    env.client.cancel_order(first.id)

    result = tp("orders", "list", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["count"] == 3 and len(data["items"]) == 3
    assert D(data["items"][0]["price"]) == D("1402") and isinstance(data["items"][0]["price"], str)
    assert datetime.fromisoformat(data["items"][0]["created_at"]).tzinfo is not None

    cancelled = json.loads(
        tp("orders", "list", "--status", "CANCELLED", "--json", "--account", str(env.account.pk)).out
    )
    assert [o["id"] for o in cancelled["items"]] == [first.id]

    table = tp("orders", "list", "--limit", "2")
    lines = table.out.splitlines()
    assert lines[0].startswith("ID") and len(lines) == 4
    second = json.loads(tp("orders", "list", "--limit", "2", "--json").out)["items"][-1]["id"]
    assert lines[-1] == f"1-2 of 3 (next: --before-id {second})"
    rest = tp("orders", "list", "--before-id", str(second), "--json")
    assert [o["id"] for o in json.loads(rest.out)["items"]] == [first.id]

    got = tp("orders", "get", str(first.id))
    assert got.code == 0 and "CANCELLED" in got.out and first.reference in got.out


def test_cli_errors_exit_1_with_the_message_and_field(tp, env):
    bad_tick = tp(
        *f"orders place --account {env.account.pk} --symbol INFY --qty 1 --side BUY --type LIMIT".split(),
        "--price",
        "1500.03",
    )
    assert bad_tick.code == 1 and bad_tick.out == ""
    assert bad_tick.err.startswith("error: ") and bad_tick.err.rstrip().endswith("(field: price)")
    missing = tp("orders", "get", "999999")
    assert missing.code == 1 and missing.err.strip() == "error: Not found."
    denied = tp("me", "--api-key", "tp_nope")
    assert denied.code == 1 and denied.err.startswith("error: Send a valid API key")
    assert "--key" not in bad_tick.err  # refused: nothing was placed, nothing to repeat safely
    assert not PaperOrder.objects.exists()


def test_cli_place_of_an_order_the_broker_rejected_exits_1_and_says_why(tp, env):
    """The broker refused the order (outside the price band): `tp orders place ... && echo bought` said
    bought, exit 0, with a REJECTED row and no reason anywhere."""
    argv = f"orders place --account {env.account.pk} --symbol INFY --side BUY --qty 1 --type LIMIT --price 1900"
    rejected = tp(*argv.split())
    order = Order.objects.get()
    assert order.status == "REJECTED" and order.reject_reason
    assert rejected.code == 1, rejected.out
    assert str(order.pk) in rejected.out and "REJECTED" in rejected.out  # the order is still shown
    assert rejected.err.startswith("error: ") and order.reject_reason in rejected.err, rejected.err
    as_json = tp(*argv.split(), "--json")
    assert as_json.code == 1 and json.loads(as_json.out)["status"] == "REJECTED"

    placed = tp(*argv.replace("1900", "1400").split())
    assert placed.code == 0 and placed.err == "", placed.err


def test_cli_errors_name_the_option_that_gave_the_field(tp, env, other_trader):
    """The API names its fields (tradingsymbol, quantity, account_id); the command's options are
    --symbol, --qty, --account: the error says which option to fix."""
    place = ["orders", "place", "--account", str(env.account.pk), "--side", "BUY"]
    unknown = tp(*place, "--symbol", "NOPE", "--qty", "1")
    assert unknown.code == 1 and unknown.err.rstrip().endswith("(field: tradingsymbol, option --symbol)"), unknown.err
    theirs = make_broker_account(other_trader, broker="paper", client_id="THEIRS")
    other = tp("orders", "place", "--account", str(theirs.pk), "--side", "BUY", "--symbol", "INFY", "--qty", "1")
    assert other.code == 1 and other.err.rstrip().endswith("(field: account_id, option --account)"), other.err
    stop = tp(*place, "--symbol", "INFY", "--qty", "1", "--type", "SL-M")
    assert stop.code == 1 and stop.err.rstrip().endswith("(field: trigger_price, option --trigger)"), stop.err
    listed = tp("orders", "list", "--account", str(theirs.pk))
    assert listed.code == 1 and listed.err.rstrip().endswith("(field: account_id, option --account)"), listed.err
    assert not PaperOrder.objects.exists()


def test_cli_place_whose_answers_are_lost_names_the_key_that_repeats_it_safely(tp, env, monkeypatch):
    made = lossy_cli(monkeypatch, LoseEveryPostAnswer)
    argv = f"orders place --account {env.account.pk} --symbol INFY --side BUY --qty 1 --type LIMIT --price 1400"
    failed = tp(*argv.split(), "--retries", "1")
    assert failed.code == 1 and failed.out == ""
    [key] = {key for method, _, key, _ in made[0].calls if method == "POST"}  # the CLI's, on both attempts
    assert failed.err.startswith("error: ") and "may have been placed" in failed.err
    assert f"--key {key}:" in failed.err and "tp orders list" in failed.err
    assert PaperOrder.objects.count() == 1  # it was placed; only the answers were lost

    monkeypatch.setattr(cli, "Client", Client)
    again = tp(*argv.split(), "--key", key, "--json")
    assert again.code == 0, again.err
    assert json.loads(again.out)["id"] == Order.objects.get().pk and PaperOrder.objects.count() == 1


class InterruptedWaitingForThePostAnswer(Recorder):
    """The trader presses Ctrl-C while the POST, already carried out by the server, waits for its answer."""

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method == "POST":
            response.close()
            raise KeyboardInterrupt
        return response


def test_cli_place_interrupted_names_the_key_that_repeats_it_safely(tp, env, monkeypatch):
    """Ctrl-C on a slow placement: without the key, running the command again places the order twice."""
    made = lossy_cli(monkeypatch, InterruptedWaitingForThePostAnswer)
    argv = f"orders place --account {env.account.pk} --symbol INFY --side BUY --qty 1 --type LIMIT --price 1400"
    interrupted = tp(*argv.split())
    assert interrupted.code == 130 and interrupted.out == ""
    [key] = {key for method, _, key, _ in made[0].calls if method == "POST"}
    assert "may have been placed" in interrupted.err and f"--key {key}:" in interrupted.err
    assert PaperOrder.objects.count() == 1

    monkeypatch.setattr(cli, "Client", Client)
    again = tp(*argv.split(), "--key", key, "--json")
    assert again.code == 0 and json.loads(again.out)["id"] == Order.objects.get().pk
    assert PaperOrder.objects.count() == 1


def test_cli_basket_place_answered_5xx_names_the_key_that_repeats_it_safely(tp, env, monkeypatch):
    basket = env.client.create_basket("Proxy", [OrderSpec("INFY", "BUY", 1)], account_ids=[env.account.pk])
    made = lossy_cli(monkeypatch, EveryPostIs502)
    failed = tp("baskets", "place", str(basket.id), "--retries", "0")
    assert failed.code == 1 and "may have been placed" in failed.err
    [key] = {key for method, _, key, _ in made[0].calls if method == "POST"}
    assert f"--key {key}:" in failed.err and PaperOrder.objects.count() == 1

    monkeypatch.setattr(cli, "Client", Client)
    again = tp("baskets", "place", str(basket.id), "--key", key, "--json")
    assert again.code == 0, again.err
    assert [r["order_id"] for r in json.loads(again.out)] == [Order.objects.get().pk]
    assert PaperOrder.objects.count() == 1


@pytest.mark.parametrize("adapter_class", [LoseEveryPostAnswer, EveryPostIs502, InterruptedWaitingForThePostAnswer])
def test_cli_signal_that_may_have_been_placed_says_so_and_names_the_id_that_repeats_it_safely(
    adapter_class, tp, env, monkeypatch
):
    """A signal whose answers were all lost (or a proxy's 502, or Ctrl-C) was placed: the CLI said only
    "error: POST ... failed", and a trader sending it again under a new id placed every order twice."""
    strategy = env.client.create_strategy("Lost CLI signals", account_ids=[env.account.pk])
    lossy_cli(monkeypatch, adapter_class)
    argv = f"strategies signal {strategy.id} --signal-id lost-2 --symbol INFY --side BUY --qty 1 --retries 1".split()
    failed = tp(*argv)
    assert failed.code in (1, 130) and failed.out == "" and "Traceback" not in failed.err
    assert "may have been placed" in failed.err and "--signal-id lost-2:" in failed.err, failed.err
    assert PaperOrder.objects.count() == 1

    monkeypatch.setattr(cli, "Client", Client)
    again = tp(*argv)
    assert again.code == 0 and "a repeat" in again.out, again.err
    assert PaperOrder.objects.count() == 1


class LoseEveryPatchAnswer(Recorder):
    """Every PATCH is carried out and every answer lost."""

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method == "PATCH":
            response.close()
            raise requests.ConnectionError("connection reset by peer (answer lost)", request=request)
        return response


@pytest.mark.parametrize(
    "adapter_class, action",
    [(LoseEveryPostAnswer, "cancel"), (EveryPostIs502, "cancel"), (LoseEveryPatchAnswer, "modify")],
)
def test_cli_modify_or_cancel_that_may_have_been_made_says_to_look(adapter_class, action, tp, env, monkeypatch):
    """A cancel (or modify) whose answers were all lost had been made: the CLI said only "error: POST ...
    failed", which reads as not done."""
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    lossy_cli(monkeypatch, adapter_class)
    extra = ["--price", "1405"] if action == "modify" else []
    failed = tp("orders", action, str(order.id), *extra, "--retries", "1")
    assert failed.code == 1 and failed.out == "" and "Traceback" not in failed.err
    assert "may have been made" in failed.err and f"tp orders get {order.id}" in failed.err, failed.err
    made = env.client.order(order.id)
    assert made.status == "CANCELLED" if action == "cancel" else made.price == D("1405")


class InterruptedWaitingForTheChangeAnswer(Recorder):
    """The trader presses Ctrl-C while a modify (PATCH) or cancel (POST), already carried out by the
    server, waits for its answer."""

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if request.method in ("PATCH", "POST"):
            response.close()
            raise KeyboardInterrupt
        return response


@pytest.mark.parametrize("action", ["modify", "cancel"])
def test_cli_modify_or_cancel_interrupted_says_it_may_have_reached_the_broker_and_to_look(action, tp, env, monkeypatch):
    """Ctrl-C on a slow modify or cancel: the CLI exited 130 saying nothing, though the change had
    been made: the trader could not tell whether it was, nor where to look."""
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    lossy_cli(monkeypatch, InterruptedWaitingForTheChangeAnswer)
    extra = ["--price", "1405"] if action == "modify" else []
    interrupted = tp("orders", action, str(order.id), *extra)
    assert interrupted.code == 130 and interrupted.out == "" and "Traceback" not in interrupted.err
    assert "may or may not have reached the broker" in interrupted.err, interrupted.err
    assert f"tp orders get {order.id}" in interrupted.err
    made = env.client.order(order.id)
    assert made.status == "CANCELLED" if action == "cancel" else made.price == D("1405")


def test_cli_status_open_lists_every_order_not_final(tp, env):
    resting = env.client.place_order(env.account.pk, "INFY", "BUY", 5, order_type="LIMIT", price="1400")
    partly = env.client.place_order(env.account.pk, "INFY", "BUY", 5, order_type="LIMIT", price="1400")
    env.client.place_order(env.account.pk, "INFY", "BUY", 1)  # filled
    assert background.wait_idle(30)
    Order.objects.filter(pk=partly.id).update(status="PARTIALLY_FILLED", filled_quantity=1)
    working = json.loads(tp("orders", "list", "--status", "open", "--json").out)
    assert [o["id"] for o in working["items"]] == [partly.id, resting.id]
    resting_only = json.loads(tp("orders", "list", "--status", "OPEN", "--json").out)
    assert [o["id"] for o in resting_only["items"]] == [resting.id]
    assert "not final" in tp("orders", "list", "--help").out


def test_cli_usage_errors_exit_2(tp, env, monkeypatch):
    assert tp("orders", "place", "--symbol", "INFY").code == 2  # required options missing
    assert tp("orders", "place", "--account", "1", "--symbol", "X", "--qty", "1", "--side", "HOLD").code == 2
    assert tp("orders", "modify", "1").code == 2  # nothing to change
    assert tp("nonsense").code == 2
    monkeypatch.delenv("TP_API_KEY")
    result = tp("me")
    assert result.code == 2 and "TP_API_KEY" in result.err
    assert tp("--help").code == 0


def test_cli_me_accounts_instruments(tp, env):
    assert "trader" in tp("me").out
    accounts = tp("accounts", "list")
    assert accounts.code == 0 and "SDK-P1" in accounts.out
    # The last column is has_credentials: a paper account stores none, however connected it is.
    header, row = accounts.out.splitlines()[:2]
    assert header.split()[-1] == "CREDENTIALS" and row.split()[-1] == "no"
    assert json.loads(tp("accounts", "list", "--json").out)["items"][0]["client_id"] == "SDK-P1"
    found = tp("instruments", "search", "INFY")
    assert found.code == 0 and "INFY" in found.out and "INFOSYS" in found.out
    assert json.loads(tp("--json", "instruments", "search", "INFY").out)["items"][0]["tradingsymbol"].startswith("INFY")


def test_cli_modify_cancel(tp, env):
    order = env.client.place_order(env.account.pk, "INFY", "BUY", 1, order_type="LIMIT", price="1400")
    modified = tp("orders", "modify", str(order.id), "--price", "1410", "--qty", "2", "--json")
    assert modified.code == 0, modified.err
    assert D(json.loads(modified.out)["price"]) == D("1410") and json.loads(modified.out)["quantity"] == 2
    cancelled = tp("orders", "cancel", str(order.id))
    assert cancelled.code == 0 and "CANCELLED" in cancelled.out
    again = tp("orders", "cancel", str(order.id))
    assert again.code == 1 and "nothing to cancel" in again.err


def test_cli_baskets_and_strategies(tp, env, trader):
    second = make_broker_account(trader, broker="paper", client_id="SDK-P2")
    basket = env.client.create_basket("CLI", [OrderSpec("INFY", "BUY", 1)], account_ids=[env.account.pk])
    listed = tp("baskets", "list")
    assert listed.code == 0 and "CLI" in listed.out and "BUY 1 INFY MARKET" in listed.out
    placed = tp("baskets", "place", str(basket.id), "--account", str(env.account.pk), str(second.pk), "--json")
    assert placed.code == 0, placed.err
    assert sorted(r["account_id"] for r in json.loads(placed.out)) == sorted([env.account.pk, second.pk])
    assert PaperOrder.objects.count() == 2

    strategy = env.client.create_strategy("CLI strategy", account_ids=[env.account.pk])
    argv = f"strategies signal {strategy.id} --signal-id x1 --symbol INFY --side BUY --qty 1".split()
    signal = tp(*argv)
    assert signal.code == 0, signal.err
    assert signal.out.startswith("signal x1\n") and "FILLED" in signal.out
    repeat = tp(*argv)
    assert "a repeat" in repeat.out and PaperOrder.objects.count() == 3
    assert "CLI strategy" in tp("strategies", "list").out


def test_cli_basket_or_signal_with_an_order_not_placed_exits_1_and_says_why(tp, env, trader):
    """A basket or a signal one of whose orders the broker rejected (outside the price band) exited 0:
    `tp baskets place 3 && echo done` said done. All results are still shown; stderr says how many
    were not placed and why; the status is 1. Every one placed is still 0."""
    spare = make_broker_account(trader, broker="paper", client_id="SDK-P3", label="Spare")
    items = [OrderSpec("INFY", "BUY", 1), OrderSpec("INFY", "BUY", 1, order_type="LIMIT", price=D("1900"))]
    basket = env.client.create_basket("Half", items, account_ids=[env.account.pk])
    placed = tp("baskets", "place", str(basket.id))
    assert placed.code == 1, placed.out
    assert "FILLED" in placed.out and "REJECTED" in placed.out  # every result shown
    assert placed.err.startswith("error: 1 of 2 not placed (first: ") and "REJECTED" in placed.err, placed.err
    as_json = tp("baskets", "place", str(basket.id), "--json", "--account", str(spare.pk))
    assert as_json.code == 1 and [r["status"] for r in json.loads(as_json.out)] == ["FILLED", "REJECTED"]

    strategy = env.client.create_strategy("Two", account_ids=[env.account.pk, spare.pk])
    spare.is_active = False
    spare.save()
    signal = tp(*f"strategies signal {strategy.id} --signal-id s1 --symbol INFY --side BUY --qty 1".split())
    assert signal.code == 1 and signal.out.startswith("signal s1\n") and "FILLED" in signal.out
    assert "1 of 2 not placed" in signal.err and "Spare" in signal.err, signal.err
    whole = env.client.create_basket("Whole", items[:1], account_ids=[env.account.pk])
    assert tp("baskets", "place", str(whole.id)).code == 0


# --- Trades, positions, and what the client refuses to wait for ---------------------------------


def test_trades_and_positions(env, tp):
    from monitoring import cycle

    env.client.place_order(env.account.pk, "INFY", "BUY", 3)
    env.client.place_order(env.account.pk, "INFY", "SELL", 1)
    cycle.account_monitor(account=env.account)  # records the fills
    page = env.client.trades()
    assert page.count == 2 and [t.side for t in page.items] == ["SELL", "BUY"]
    assert isinstance(page.items[0].price, D) and page.items[0].filled_at.tzinfo is not None
    assert env.client.trades(symbol="TCS").count == 0
    with pytest.raises(InvalidRequest) as error:
        env.client.trades(since=datetime(2026, 12, 3, 9, 15))  # no offset: which zone?
    assert error.value.field == "since"
    [position] = env.client.positions(open_only=True)
    assert (position.tradingsymbol, position.net_quantity) == ("INFY", 2)
    assert [t.id for t in env.client.iter_trades(page_size=1)] == [t.id for t in page.items]
    listed = tp("trades", "list")
    assert listed.code == 0 and "NSE:INFY" in listed.out and listed.out.splitlines()[-1] == "1-2 of 2"
    newest = tp("trades", "list", "--limit", "1")
    assert newest.out.splitlines()[-1] == f"1-1 of 2 (next: --before-id {page.items[0].id})"
    assert tp("trades", "list", "--offset", "5").out.splitlines()[-1] == "none of 2 from offset 5"
    older = tp("trades", "list", "--before-id", str(page.items[0].id), "--json")
    assert [t["id"] for t in json.loads(older.out)["items"]] == [page.items[1].id]
    held = tp("positions", "list", "--open", "--json")
    assert held.code == 0 and json.loads(held.out)["items"][0]["net_quantity"] == 2
    shown = tp("positions", "list", "--open").out.splitlines()
    assert shown[0].split()[0] == "ID" and shown[1].split()[0] == str(position.id)  # the id --before-id takes


class FirstGetIs500(FirstGetIs503):
    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if response.status_code == 503:
            response.status_code, response.reason = 500, "Internal Server Error"
        return response


def test_500_is_retried_like_the_other_5xx(env):
    adapter = mount(env.client, FirstGetIs500())
    assert env.client.me().username == "trader"
    assert len(adapter.calls) == 2


def test_a_retry_after_longer_than_max_retry_wait_is_raised_at_once(env, settings):
    settings.API_RATE_LIMITS = [(1, 600.0)]
    client = Client(env.url, env.key, retries=3, max_retry_wait=5)
    client.me()
    started = time.monotonic()
    with pytest.raises(RateLimited) as error:
        client.me()
    assert error.value.retry_after > 5 and time.monotonic() - started < 2


@pytest.mark.parametrize(
    "url, options",
    [
        ("foo", {}),
        ("http://[::1", {}),
        ("ftp://example.com", {}),
        ("http://127.0.0.1:1", {"timeout": 0}),
        # A typo'd host: urllib3 refused it only when connecting, with a LocationParseError traceback.
        ("http://trade..example.com", {}),
        (f"https://{'a' * 64}.example.com", {}),
    ],
)
def test_a_bad_url_or_timeout_is_refused_up_front(url, options, tp, monkeypatch):
    with pytest.raises(ValueError):
        Client(url, "tp_key", **options)
    monkeypatch.setenv("TP_URL", url)
    argv = ["--timeout", "0", "me"] if options else ["me"]
    result = tp(*argv)
    assert result.code == 2 and result.err.startswith("tp: error:") and "Traceback" not in result.err


@pytest.mark.parametrize("timeout", ["nan", "inf", "1e12"])
def test_a_timeout_no_socket_takes_is_refused_up_front(timeout, monkeypatch, capsys):
    """NaN, infinity or a wait past what a socket takes failed at the first call, with a Python traceback."""
    with pytest.raises(ValueError, match="timeout"):
        Client("http://127.0.0.1:1", "tp_key", timeout=float(timeout))
    monkeypatch.setenv("TP_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("TP_API_KEY", "tp_key")
    code = cli.main(["--timeout", timeout, "--retries", "0", "me"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("tp: error:") and "timeout" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["orders", "place", "--account", "1", "--symbol", "INFY", "--side", "BUY", "--qty", "1_0"],
        ["orders", "place", "--account", "1", "--symbol", "INFY", "--side", "BUY", "--qty", "1", "--price", "1_400"],
        ["orders", "modify", "1", "--trigger", "1_390"],
        ["orders", "cancel", "1_2"],
        ["orders", "place", "--account", "1_2", "--symbol", "INFY", "--side", "BUY", "--qty", "1"],
    ],
)
def test_the_cli_refuses_a_number_with_an_underscore(argv, capsys):
    """Python reads "1_0" as 10: the CLI refuses it (a slip, not ten shares or order 12), sending nothing."""
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(argv)
    assert exited.value.code == 2 and "'_'" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["tp_abc\u2019def", "tp_abc def", "tp_abc\rdef"])
def test_an_api_key_with_a_stray_character_is_refused_up_front_and_not_shown(key, monkeypatch, capsys):
    """A key pasted with a curly quote made ``tp`` die with a UnicodeEncodeError traceback; one with a
    control character was refused by requests, whose message (printed by ``tp``) showed the whole key."""
    with pytest.raises(ValueError, match="api_key"):
        Client("http://127.0.0.1:1", key)
    monkeypatch.setenv("TP_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("TP_API_KEY", key)
    code = cli.main(["--retries", "0", "me"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("tp: error:") and "abc" not in err, err


def test_an_api_key_read_with_its_line_end_works(env):
    """A key read from a file keeps the file's line end: the client sends the key without it."""
    assert Client(env.url, f"{env.key}\r\n").me().username == env.user.username


@pytest.mark.parametrize("key", ["k\u2019", "k\nx", " k"])
def test_an_idempotency_key_that_cannot_be_sent_is_refused_before_sending(key, tp, env):
    """The same with an idempotency key: a traceback from ``tp orders place --key``, or the advice that
    the order "may have been placed" when it was never sent."""
    with pytest.raises(ValueError, match="idempotency_key"):
        env.client.place_order(env.account.pk, "INFY", "BUY", 1, idempotency_key=key)
    place = f"orders place --account {env.account.pk} --symbol INFY --side BUY --qty 1"
    result = tp(*place.split(), "--key", key)
    assert result.code == 2 and "--key" in result.err and "may have been placed" not in result.err, result.err
    assert not Order.objects.exists()


def test_cli_output_read_only_in_part_is_no_traceback(env):
    """`tp orders list | head -1`: the reader closes the pipe before tp has written everything. tp
    ended with a BrokenPipeError traceback (and "Exception ignored ... BrokenPipeError")."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before tp writes
    environment = {
        **os.environ,
        "TP_URL": env.url,
        "TP_API_KEY": env.key,
        "PYTHONPATH": os.path.dirname(os.path.dirname(tpclient.__file__)),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tpclient.cli", "accounts", "list", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=environment,
            timeout=60,
        )
    finally:
        os.close(write_end)
    err = done.stderr.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert done.returncode == 141


def test_an_answer_that_is_not_the_object_asked_for_is_an_error_not_an_object_of_nones():
    """Behind a proxy that answers with another page's JSON (a list, an error object of its own),
    the client must not hand back an Order whose every field is None, as if one were placed."""
    from tpclient.models import Order as OrderModel
    from tpclient.models import from_json

    for answer in ([], [{"id": 1}], {"items": [], "count": 0}, {}, "ok", None):
        with pytest.raises(ApiError) as error:
            from_json(OrderModel, answer)
        assert error.value.code == "unexpected_answer", answer
    assert from_json(OrderModel, {"id": 7, "reference": "X"}).id == 7  # fields an older server lacks are None


def test_every_model_a_client_method_returns_is_importable_from_the_package():
    """`from tpclient import Trade, TradePage, Position` failed (ImportError): the types that trades(),
    iter_trades() and positions() return were only in tpclient.models, unlike every other model."""
    import typing

    from tpclient import models

    returned = set()
    for name, method in vars(Client).items():
        if name.startswith("_") or not callable(method):
            continue
        for hint in typing.get_type_hints(method).values():
            for part in (hint, *typing.get_args(hint)):
                if isinstance(part, type) and part.__module__ == models.__name__:
                    returned.add(part.__name__)
    assert {"Order", "Trade", "TradePage", "Position"} <= returned
    missing = sorted(name for name in returned if name not in tpclient.__all__ or not hasattr(tpclient, name))
    assert missing == []
