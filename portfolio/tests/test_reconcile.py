"""Positions against the broker's book (``portfolio.reconcile``): a difference the platform's fills
do not explain is reported to the trader once it is seen the same on two runs.

The paper exchange stands in for Kite (``kite_day_books``: it lists today's fills only), so fills
made on a day the platform did not read are never recorded, as at Kite.
"""

from datetime import timedelta
from decimal import Decimal
from unittest.mock import ANY

import pytest
from django.core.cache import cache
from django.utils import timezone

from brokers.base import BrokerPosition, Holding
from brokers.models import Instrument
from brokers.paper import engine
from brokers.paper.adapter import PaperBroker
from brokers.paper.models import PaperInstrument, PaperTrade
from monitoring import cycle
from monitoring.models import BrokerSnapshot
from orders.tests.factories import place
from portfolio import reconcile
from portfolio.models import Position
from portfolio.reconcile import Difference
from portfolio.tests.test_openings import _a_day_passes, history, set_price

D = Decimal
CAUSE = (
    " at the broker: the broker's book holds what the platform's fills do not (trades made while it could not read"
    " the account or before it first did, an opening it could not price, an expiry or settlement, a corporate"
    " action), so its PnL here leaves that out"
)


@pytest.fixture
def at_once(monkeypatch):
    """A difference is confirmed on the next run, however soon (runs here are a second apart)."""
    monkeypatch.setattr(reconcile, "CONFIRM_S", 0)


@pytest.fixture
def holdings_reads(monkeypatch):
    """How many times the paper adapter's holdings were read."""
    calls = []
    real = PaperBroker.holdings

    def counted(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(PaperBroker, "holdings", counted)
    return calls


def reported(run) -> list[str]:
    return [e["error"] for e in run.errors if e["error"].endswith("leaves that out")]


def the_next_day(account):
    """Today becomes the next day for the account's records (``_a_day_passes``), its holdings read too."""
    _a_day_passes(account)
    BrokerSnapshot.objects.filter(account=account).update(fetched_at=timezone.now() - timedelta(days=1))


def test_fills_on_a_day_the_platform_did_not_read_are_reported_from_the_second_run(
    trader, account, kite_day_books, at_once
):
    """The account holds 100 INFY when it is met. The next day the platform could not read it (its
    session expired) while the trader sold 30 INFY and went short 75 NIFTY futures in the broker's
    own app: Kite lists only a day's own fills, so the platform never records them. The day after,
    its positions say 100 and 0; the broker's book says 70 and -75: the second run says so, for
    each, and changes nothing."""
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    assert cycle.account_monitor(account=account).errors == []
    the_next_day(account)
    history(account, "INFY", "SELL", 30, "1450", days_ago=1)
    history(account, "NIFTY26DECFUT", "SELL", 75, "24100", product="NRML", days_ago=1, exchange="NFO")

    assert reported(cycle.account_monitor(account=account)) == []  # seen once: it could be a fill listed late
    assert reported(cycle.account_monitor(account=account)) == [
        f"position NFO:NIFTY26DECFUT NRML is 0 here and -75{CAUSE}",
        f"position NSE/BSE:INFY CNC is 100 here and 70{CAUSE}",
    ]
    assert list(Position.objects.filter(account=account).values_list("net_quantity", flat=True)) == [100]


def test_a_book_the_platform_follows_is_never_reported(trader, account, kite_day_books, at_once, holdings_reads):
    """Holdings from before the account was met, delivery and intraday trading today through the
    platform, a short future carried from yesterday: the book and the positions agree, run after
    run, and the holdings are read once a day (they are what the day opened with)."""
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    history(account, "NIFTY26DECFUT", "SELL", 75, "24100", product="NRML", days_ago=1, exchange="NFO")
    assert cycle.account_monitor(account=account).errors == []
    set_price("INFY", "1450")
    place(trader, account, symbol="INFY", side="SELL", quantity=40, product="CNC")
    place(trader, account, symbol="INFY", side="BUY", quantity=5, product="MIS")
    for _ in range(3):
        assert cycle.account_monitor(account=account).errors == []
    assert len(holdings_reads) == 2  # the opening's, and the comparison's once for the day

    the_next_day(account)
    for _ in range(2):
        assert cycle.account_monitor(account=account).errors == []
    assert len(holdings_reads) == 3  # a new day: read again


def test_a_fill_the_fill_list_lists_late_is_not_reported(trader, account, kite_day_books, at_once, monkeypatch):
    """The trader sells 40 INFY in the broker's app; the broker counts it in its positions before
    its fill list lists it. That run sees the book differ; the next records the fill, the book and
    the positions agree, and nothing is ever reported."""
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    assert cycle.account_monitor(account=account).errors == []
    listed = PaperBroker.trades
    late = []
    monkeypatch.setattr(PaperBroker, "trades", lambda self: [t for t in listed(self) if t.trade_id not in late])
    set_price("INFY", "1450")
    client = engine.client_get_or_create(user_id=account.client_id)
    sold = engine.order_place(
        client=client, exchange="NSE", tradingsymbol="INFY",
        transaction_type="SELL", order_type="MARKET", quantity=40, product="CNC",
    )  # fmt: skip
    paper = PaperBroker(client_id=account.client_id)
    paper.login()
    late.extend(t.trade_id for t in paper.trades() if t.broker_order_id == sold.order_id)
    assert late

    assert reported(cycle.account_monitor(account=account)) == []
    assert cache.get(reconcile._seen_key(account.pk)) == {"NSE/BSE:INFY:CNC": [100, 60, ANY]}  # seen once
    late.clear()
    assert reported(cycle.account_monitor(account=account)) == []
    assert reported(cycle.account_monitor(account=account)) == []
    assert Position.objects.get(account=account, product="CNC").net_quantity == 60
    assert cache.get(reconcile._seen_key(account.pk)) == {}  # agreed: forgotten


def test_nothing_is_compared_before_the_brokers_day_begins(trader, account, kite_day_books, at_once, settings):
    """Before OPENINGS_FROM the broker's book can still be the day before's: no holdings are read
    for the comparison and nothing is reported, however long the book differs."""
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    assert cycle.account_monitor(account=account).errors == []
    the_next_day(account)
    history(account, "INFY", "SELL", 30, "1450", days_ago=1)
    settings.OPENINGS_FROM = "23:59"
    for _ in range(2):
        assert reported(cycle.account_monitor(account=account)) == []
    assert BrokerSnapshot.objects.get(account=account, kind="holdings").fetched_at < timezone.now() - timedelta(hours=1)


def test_without_holdings_delivery_is_left_out_and_the_rest_compared(
    trader, account, kite_day_books, at_once, monkeypatch
):
    """The broker's holdings cannot be read today: delivery is not compared (the run says why),
    the carried future still is."""
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    assert cycle.account_monitor(account=account).errors == []
    the_next_day(account)
    history(account, "INFY", "SELL", 30, "1450", days_ago=1)
    history(account, "NIFTY26DECFUT", "SELL", 75, "24100", product="NRML", days_ago=1, exchange="NFO")

    def broken(self):
        raise RuntimeError("holdings unavailable")

    monkeypatch.setattr(PaperBroker, "holdings", broken)
    cycle.account_monitor(account=account)
    run = cycle.account_monitor(account=account)
    assert reported(run) == [f"position NFO:NIFTY26DECFUT NRML is 0 here and -75{CAUSE}"]
    assert any("holdings not read (RuntimeError: holdings unavailable)" in action for action in run.actions)


def _position(exchange, symbol, product, quantity):
    zero = D(0)
    return BrokerPosition(exchange, symbol, product, quantity, zero, zero, zero, zero, 0, zero, 0, zero)


def _holding(exchange, symbol, quantity):
    return Holding(exchange, symbol, quantity, D("100"), D("100"), D("100"))


def test_delivery_is_one_position_across_nse_and_bse(instruments):
    """Kite lists a holding under one exchange whichever it was bought on, and it can be sold on
    the other: delivery is compared per symbol across both. A multiplied exchange's (MCX) and an
    instrument not loaded are left out (their fills are not recorded, and runs say so)."""
    nse = Instrument.objects.get(exchange="NSE", tradingsymbol="INFY")
    Instrument.objects.create(
        **{f.name: getattr(nse, f.name) for f in Instrument._meta.concrete_fields if f.name != "id"}
        | {"exchange": "BSE", "segment": "BSE", "instrument_token": nse.instrument_token + 1}
    )
    held = [("NSE", "INFY", "CNC", 16), ("NSE", "INFY", "MIS", 5)]
    positions = [_position("NSE", "INFY", "MIS", 5), _position("MCX", "GOLDGUINEA17DECFUT", "NRML", 3)]
    positions.append(_position("NSE", "NOT-LOADED", "MIS", 7))
    assert reconcile.differences(held=held, positions=positions, holdings=[_holding("BSE", "INFY", 16)]) == []
    assert reconcile.differences(held=held, positions=positions, holdings=[_holding("BSE", "INFY", 10)]) == [
        Difference("NSE/BSE", "INFY", "CNC", platform=16, broker=10)
    ]
    assert reconcile.differences(held=held, positions=positions, holdings=None) == []  # delivery not compared
    # A holding listed under an exchange not loaded is the opening's waiting lot, not a difference.
    waiting = [_holding("BSE", "TCS", 7), _holding("NSE", "TCS", 3)]
    assert reconcile.differences(held=[("NSE", "TCS", "CNC", 3)], positions=[], holdings=waiting) == []


def test_a_difference_is_confirmed_when_seen_the_same_again_after_the_wait(db):
    """Seen once, then the same again CONFIRM_S later: reported, and on every run after while it
    lasts. A difference that changes starts over; one that goes is forgotten."""
    wait = reconcile.CONFIRM_S
    first, changed = Difference("NFO", "NIFTY", "NRML", 0, -75), Difference("NFO", "NIFTY", "NRML", 0, -150)
    assert reconcile.confirmed({7: [first]}, now=1000) == {}
    assert reconcile.confirmed({7: [first]}, now=1000 + wait - 1) == {}
    assert reconcile.confirmed({7: [first]}, now=1000 + wait) == {7: [first]}
    assert reconcile.confirmed({7: [first]}, now=1000 + wait + 60) == {7: [first]}
    assert reconcile.confirmed({7: [changed]}, now=1000 + wait + 120) == {}
    assert reconcile.confirmed({7: [changed]}, now=1000 + 2 * wait + 120) == {7: [changed]}
    assert reconcile.confirmed({7: []}, now=2000) == {}
    assert reconcile.confirmed({7: [changed]}, now=2000 + wait) == {}  # gone in between: seen anew


def test_a_holding_waiting_for_its_instrument_is_not_reported_as_a_difference(trader, account, kite_day_books, at_once):
    """Only NSE's instruments are loaded (``load_instruments --exchange NSE``) and the broker lists
    100 INFY under BSE, where they were bought: the opening lot waits for BSE:INFY to be loaded, and
    each run says so. Its fills would not be recorded either: no difference to report, not even
    when INFY is traded on NSE today."""
    nse = PaperInstrument.objects.get(exchange="NSE", tradingsymbol="INFY")
    PaperInstrument.objects.create(
        **{f.name: getattr(nse, f.name) for f in PaperInstrument._meta.concrete_fields if f.name != "id"}
        | {"exchange": "BSE", "segment": "BSE", "instrument_token": nse.instrument_token + 1}
    )
    history(account, "INFY", "BUY", 100, "1400", days_ago=10, exchange="BSE")
    waits = "opening position CNC 100 BSE:INFY is not recorded yet"
    assert [e["error"].startswith(waits) for e in cycle.account_monitor(account=account).errors] == [True]
    set_price("INFY", "1450")
    place(trader, account, symbol="INFY", side="BUY", quantity=5, product="CNC")
    for _ in range(2):
        run = cycle.account_monitor(account=account)
        assert reported(run) == []
        assert [e["error"].startswith(waits) for e in run.errors] == [True]


def test_a_position_the_broker_converted_to_another_product_is_not_reported(trader, account, kite_day_books, at_once):
    """The trader buys 10 INFY intraday (MIS) here and, before the broker squares it off, converts
    it to delivery in the broker's app (Kite's position conversion): the broker's book lists 110
    CNC and no MIS, its fill keeps the product it was placed with, and so does the platform. The
    account holds what the platform says, run after run and the next day (110 in the holdings):
    nothing is reported."""
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    assert cycle.account_monitor(account=account).errors == []
    set_price("INFY", "1450")
    place(trader, account, symbol="INFY", side="BUY", quantity=10, product="MIS")
    assert cycle.account_monitor(account=account).errors == []
    PaperTrade.objects.filter(product="MIS").update(product="CNC")  # converted at the broker

    for _ in range(2):
        assert reported(cycle.account_monitor(account=account)) == []
    the_next_day(account)
    for _ in range(2):
        assert reported(cycle.account_monitor(account=account)) == []
    assert dict(Position.objects.filter(account=account).values_list("product", "net_quantity")) == {
        "CNC": 100,
        "MIS": 10,
    }
