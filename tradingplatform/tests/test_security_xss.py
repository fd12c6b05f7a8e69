"""Stored and reflected XSS: every text a trader or a broker controls, on every page and in every live push.

Payloads go where they would in real use: account labels and client ids, basket, strategy and
API-key names, a signal id, an instrument's symbol and name (the broker's instrument dump),
the paper exchange's own reject message for a bad order (it names the symbol), a failed broker
login, monitoring errors, scheduled-order results; and into every filter and search box.
"""

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from accounts import services as account_services
from accounts.tests.factories import make_broker_account
from brokers.models import BrokerSession, Instrument
from brokers.paper.models import PaperInstrument
from monitoring import broadcast, cycle, presence
from monitoring.models import AccountRun
from orders import sources
from orders.models import Order
from orders.tests.factories import place
from portfolio.broadcast import TEMPLATE as DASHBOARD_PUSH
from portfolio.selectors import dashboard_of

from .test_security_sweep import SESSION, SWEEP, url_of

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(1)>'
QUOTE = "'><svg onload=alert(1)>"
EVIL = f"{SCRIPT}{ATTRIBUTE}{QUOTE}"
# What must never reach a page unescaped.
LIVE_MARKUP = ["<script>alert", "<img src=x", "<svg onload"]
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
EVIL_SYMBOL = 'X"><img src=x onerror=alert(1)>'  # fits a symbol (64)


def assert_escaped(html: str, where: str) -> None:
    live = [markup for markup in LIVE_MARKUP if markup in html]
    assert not live, f"{where} carries live markup {live}"


@pytest.fixture
def evil(owned, trader, paper_market):
    """The first trader's things, with payloads in every text they or their broker control."""
    infy = PaperInstrument.objects.get(exchange="NSE", tradingsymbol="INFY")
    PaperInstrument.objects.create(
        **{
            field.attname: getattr(infy, field.attname)
            for field in PaperInstrument._meta.concrete_fields
            if field.attname not in ("id", "tradingsymbol", "name", "instrument_token", "exchange_token")
        },
        tradingsymbol=EVIL_SYMBOL,
        name=f"{SCRIPT}{QUOTE}",
        instrument_token=999001,
        exchange_token=99901,
    )
    call_command("load_instruments", broker="paper")
    instrument = Instrument.objects.get(tradingsymbol=EVIL_SYMBOL)
    account = make_broker_account(trader, broker="paper", client_id='C"><img src=x onerror=alert(1)>', label=EVIL)
    account_services.api_key_create(owner=trader, name=EVIL)

    # The paper exchange's own reject message names the symbol: a price far outside the band.
    rejected = place(trader, account, symbol=EVIL_SYMBOL, order_type="LIMIT", price="9999")
    assert rejected.status == Order.Status.REJECTED and EVIL_SYMBOL in rejected.reject_reason
    # A fill on the instrument, recorded by the monitor: trades, positions, PnL with its name.
    place(trader, account, symbol=EVIL_SYMBOL, quantity=2)
    assert cycle.account_monitor(account=account).status == AccountRun.Status.OK

    basket, strategy = owned["basket"], owned["strategy"]
    sources.basket_save(
        owner=trader,
        basket=basket,
        name=EVIL,
        items=[{"instrument": instrument, "side": "BUY", "quantity": 1, "order_type": "MARKET"}],
        account_ids=[account.pk],
    )
    sources.basket_place(basket=basket, actor=trader, run_token="xss-run")
    sources.strategy_save(owner=trader, strategy=strategy, name=EVIL, account_ids=[account.pk])
    sources.strategy_signal(
        strategy=strategy,
        actor=trader,
        signal_id=SCRIPT,
        via="api",
        instrument=instrument,
        side="BUY",
        quantity=1,
    )
    scheduled = owned["scheduled"]
    type(scheduled).objects.filter(pk=scheduled.pk).update(last_result=f"not placed: {EVIL}"[:255])
    # What brokers say when things fail, kept and shown: a failed login, monitoring errors.
    failing = make_broker_account(trader, broker="paper", client_id="PAPER-FAIL", label=f"{SCRIPT}2")
    BrokerSession.objects.create(
        account=failing, status=BrokerSession.Status.FAILED, ended_at=timezone.now(), last_error=f"Kite: {EVIL}"
    )
    AccountRun.objects.create(
        account=account, status=AccountRun.Status.ERRORS, errors=[{"step": "1_fetch", "error": f"BrokerError: {EVIL}"}]
    )
    return {**owned, "account": account, "order": rejected, "instrument": instrument}


def page_urls(evil) -> list[str]:
    urls = [url_of(key, evil) for key, spec in SWEEP.items() if spec.auth == SESSION and "GET" in spec.methods]
    urls.remove(reverse("home"))  # a redirect
    urls.remove(reverse("brokers:login_callback"))  # a redirect
    urls.remove(reverse("orders:rows"))  # its order ids are in its query: below, with the evil order's
    # Reflected: every filter and search box, and the login page's next.
    urls += [
        f"{reverse('orders:book')}?symbol={EVIL}&status={EVIL}&source={EVIL}&account={EVIL}&date=all",
        f"{reverse('orders:book')}?symbol={EVIL_SYMBOL}&date=all",
        f"{reverse('portfolio:trades')}?symbol={EVIL}&account={EVIL}&side={EVIL}&since={EVIL}&until={EVIL}",
        f"{reverse('portfolio:monitoring')}?status={EVIL}",
        f"{reverse('brokers:instruments')}?q={EVIL}",
        f"{reverse('brokers:instruments')}?q=X",
        f"{reverse('orders:instrument_options')}?q=X",
        f"{reverse('orders:instrument_options')}?q={EVIL}",
        f"{reverse('orders:ticket')}?instrument={evil['instrument'].pk}",
        f"{reverse('orders:rows')}?id={evil['order'].pk}",
        f"{reverse('orders:instrument_pick', args=[evil['instrument'].pk])}?product={EVIL}&quantity={EVIL}",
        f"{reverse('portfolio:dashboard')}?{EVIL}={EVIL}",
    ]
    return urls


def test_every_page_escapes_what_traders_and_brokers_wrote(evil, trader_client, client):
    shown = {}
    for url in page_urls(evil):
        response = trader_client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        html = response.content.decode()
        assert_escaped(html, url)
        shown[url] = ESCAPED_SCRIPT in html
    login = client.get(f"{reverse('login')}?next={EVIL}").content.decode()
    assert_escaped(login, "the login page")
    # The payloads did reach the pages that show those texts (escaped), so the checks above saw them.
    for name, args in [
        ("accounts:broker_list", []),
        ("accounts:api_keys", []),
        ("orders:book", []),
        ("orders:detail", [evil["order"].pk]),
        ("sources:basket_list", []),
        ("sources:basket_detail", [evil["basket"].pk]),
        ("sources:strategy_list", []),
        ("sources:strategy_detail", [evil["strategy"].pk]),
        ("sources:scheduled_list", []),
        ("portfolio:dashboard", []),
        ("portfolio:portfolio", []),
        ("portfolio:trades", []),
        ("portfolio:monitoring", []),
    ]:
        assert shown[reverse(name, args=args)], f"{name} does not show the stored text at all"
    detail = trader_client.get(reverse("orders:detail", args=[evil["order"].pk])).content.decode()
    assert "X&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in detail  # the broker's reject message, escaped


def test_the_forms_escape_what_they_echo_back(evil, trader_client):
    """Invalid posts render the form again with the submitted values and errors."""
    posts = [
        (reverse("accounts:broker_create"), {"broker": EVIL, "client_id": EVIL, "label": EVIL}),
        (reverse("accounts:broker_edit", args=[evil["account"].pk]), {"label": EVIL, "copy_multiplier": EVIL}),
        (reverse("accounts:api_keys"), {"name": EVIL, "expires_in_days": EVIL}),
        (reverse("accounts:profile"), {"form": "profile", "timezone": EVIL}),
        (reverse("orders:ticket"), {"instrument": EVIL, "quantity": EVIL, "price": EVIL, "token": EVIL}),
        (reverse("orders:modify", args=[evil["order"].pk]), {"quantity": EVIL, "price": EVIL}),
        (reverse("sources:basket_create"), {"name": EVIL, "items-TOTAL_FORMS": EVIL}),
        (reverse("sources:scheduled_list"), {"instrument": EVIL, "timezone": EVIL, "time_of_day": EVIL}),
        (reverse("sources:strategy_create"), {"name": EVIL, "stop_loss": EVIL}),
    ]
    for url, data in posts:
        response = trader_client.post(url, data)
        assert response.status_code in (200, 400), (url, response.status_code)
        assert_escaped(response.content.decode(), f"POST {url}")


def test_live_pushes_escape_what_traders_and_brokers_wrote(
    evil, trader, monkeypatch, django_capture_on_commit_callbacks
):
    """Capture every fragment sent to the trader's websocket group while things happen."""
    sent = []
    presence.joined(trader.pk, "xss-test-page")  # pushes go only to traders with a page open
    original = broadcast._sender.group_send
    monkeypatch.setattr(
        broadcast._sender, "group_send", lambda group, message: (sent.append(message), original(group, message))
    )
    with django_capture_on_commit_callbacks(execute=True):
        rejected = place(trader, evil["account"], symbol=EVIL_SYMBOL, order_type="LIMIT", price="9999")
        place(trader, evil["account"], symbol=EVIL_SYMBOL, quantity=1)
        sources.basket_place(basket=evil["basket"], actor=trader, run_token="xss-run-2")
        sources.strategy_signal(
            strategy=evil["strategy"],
            actor=trader,
            signal_id=f"{SCRIPT}-2",
            via="api",
            instrument=evil["instrument"],
            side="BUY",
            quantity=1,
        )
        sources._notify(evil["scheduled"], f"Scheduled order was not placed: {EVIL}")
        broadcast.push_fragment(user_id=trader.pk, template=DASHBOARD_PUSH, context={"dashboard": dashboard_of(trader)})
    fragments = [message["html"] for message in sent if message.get("type") == "fragment.push"]
    assert len(fragments) >= 4
    for html in fragments:
        assert_escaped(html, "a pushed fragment")
    pushed = "".join(fragments)
    assert ESCAPED_SCRIPT in pushed  # the texts were in the pushes, escaped
    assert f'id="order-{rejected.pk}"' in pushed
    assert rejected.reject_reason and "onerror=alert(1)&gt;" in pushed
