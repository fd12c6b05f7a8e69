"""Expired contracts: kept in the table (positions on them remain) but no longer offered to trade."""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse

from accounts import services as account_services
from brokers import base, selectors
from brokers.models import Instrument

NOV, DEC = "NIFTY26NOVFUT", "NIFTY26DECFUT"


@pytest.fixture
def instruments(paper_market):
    """The platform's instruments, with NIFTY's November future expired yesterday and December's expiring today."""
    call_command("load_instruments", broker="paper")
    today = base.ist_today()
    Instrument.objects.filter(tradingsymbol=NOV).update(expiry=today - timedelta(days=1))
    Instrument.objects.filter(tradingsymbol=DEC).update(expiry=today)


def symbols(rows):
    return [row.tradingsymbol for row in rows]


def test_search_leaves_out_expired_contracts_but_keeps_one_expiring_today(instruments):
    rows, truncated = selectors.instruments_search("NIFTY")
    assert DEC in symbols(rows) and NOV not in symbols(rows) and not truncated
    assert "BANKNIFTY26DECFUT" in symbols(rows) and "INFY" not in symbols(rows)
    assert "INFY" in symbols(selectors.instruments_search("")[0])  # equities never expire
    assert Instrument.objects.filter(tradingsymbol=NOV).exists()  # still there for its positions


def test_the_instruments_page_leaves_out_expired_contracts(trader_client, instruments):
    page = trader_client.get(reverse("brokers:instruments"), {"q": "NIFTY26"}).content.decode()
    assert DEC in page and NOV not in page


def test_the_json_api_leaves_out_expired_contracts(client, trader, instruments):
    _, secret = account_services.api_key_create(owner=trader, name="bot")
    page = client.get("/api/v1/instruments", {"q": "NIFTY"}, HTTP_AUTHORIZATION=f"Bearer {secret}").json()
    found = [row["tradingsymbol"] for row in page["items"]]
    assert DEC in found and NOV not in found


def test_the_order_tickets_search_leaves_out_expired_contracts(trader_client, instruments):
    page = trader_client.get(reverse("orders:instrument_options"), {"q": "NIFTY26"}).content.decode()
    assert DEC in page and NOV not in page


def test_instrument_expired_is_true_only_after_the_expiry_day(instruments):
    nov, dec, infy = (Instrument.objects.get(tradingsymbol=s) for s in (NOV, DEC, "INFY"))
    assert nov.is_expired and not dec.is_expired and not infy.is_expired
    assert base.instrument_expired(nov) and not base.instrument_expired(dec)
    assert not base.instrument_expired(infy)
    day_after = base.ist_today() + timedelta(days=1)
    assert base.instrument_expired(dec, today=day_after) and not base.instrument_expired(dec, today=dec.expiry)


def test_the_trading_day_is_indias():
    # 20:00 UTC on 24 November is already 25 November in India: a 24 November expiry has passed.
    late = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)
    assert base.ist_today(late) == date(2026, 11, 25)
    assert base.ist_today(datetime(2026, 11, 24, 18, 0, tzinfo=UTC)) == date(2026, 11, 24)
    contract = Instrument(expiry=date(2026, 11, 24))
    assert base.instrument_expired(contract, today=base.ist_today(late))
