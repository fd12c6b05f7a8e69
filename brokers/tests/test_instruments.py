"""Instruments: loading a broker's dump, the search page, and live prices over the websocket."""

from decimal import Decimal
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.urls import reverse

from brokers import selectors, services
from brokers.base import Quote
from brokers.models import Instrument
from monitoring.tests.test_consumer import connect

SAMPLE = Path(__file__).resolve().parents[1] / "kite" / "samples" / "instruments_nse.csv"


def test_load_instruments_from_a_kite_dump(db, capsys):
    call_command("load_instruments", file=SAMPLE)
    assert "99 created" in capsys.readouterr().out
    row = Instrument.objects.get(exchange="NSE", tradingsymbol="CENTRALBK-BE")
    assert row.tick_size == Decimal("0.05") and row.lot_size == 1 and row.instrument_token == 3813889
    call_command("load_instruments", file=SAMPLE)
    assert "0 created, 99 updated" in capsys.readouterr().out


def test_load_instruments_from_the_paper_broker(paper_market, capsys):
    call_command("load_instruments", broker="paper")
    assert Instrument.objects.filter(tradingsymbol="NIFTY26DECFUT", lot_size=75).exists()
    assert Instrument.objects.get(tradingsymbol="INFY").last_price == Decimal("1500")


def test_load_instruments_refuses_a_file_that_is_not_a_dump(tmp_path, db):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(CommandError, match="not a Kite instrument CSV"):
        call_command("load_instruments", file=bad)
    assert not Instrument.objects.exists()


def test_a_dump_with_index_rows_loads_its_instruments_and_leaves_the_indices_out(tmp_path, db, capsys):
    # Kite's full dump lists indices (segment INDICES) with no tick and no lot: they cannot be
    # ordered, and a row the table cannot hold must not lose the whole refresh.
    dump = tmp_path / "instruments.csv"
    dump.write_text(
        SAMPLE.read_text().rstrip("\n")
        + "\n256265,1001,NIFTY 50,NIFTY 50,0.0,,0.0,0.0,0,EQ,INDICES,NSE"
        + "\n260105,1016,NIFTY BANK,NIFTY BANK,0.0,,0.0,0.0,0,EQ,INDICES,NSE\n"
    )
    call_command("load_instruments", file=dump)
    assert "99 created" in capsys.readouterr().out
    assert Instrument.objects.filter(exchange="NSE", tradingsymbol="CENTRALBK-BE").exists()
    assert not Instrument.objects.filter(tradingsymbol__in=["NIFTY 50", "NIFTY BANK"]).exists()


@pytest.fixture
def instruments(paper_market):
    call_command("load_instruments", broker="paper")


def test_search_by_symbol_or_name(trader_client, instruments):
    page = trader_client.get(reverse("brokers:instruments"), {"q": "infos"}).content.decode()
    assert "INFY" in page and "RELIANCE" not in page
    page = trader_client.get(reverse("brokers:instruments"), {"q": "NIFTY26"}).content.decode()
    assert "NIFTY26DECFUT" in page and "BANKNIFTY26DECFUT" not in page
    page = trader_client.get(reverse("brokers:instruments"), {"q": "zzzz"}).content.decode()
    assert "No instruments match" in page


def test_search_puts_the_symbol_typed_before_the_contracts_that_start_with_it(trader_client, instruments):
    # A real dump has hundreds of INFY options (NFO sorts before NSE): the equity itself must
    # still be among the matches shown, on the instruments page and on the ticket.
    infy = Instrument.objects.get(exchange="NSE", tradingsymbol="INFY")
    Instrument.objects.bulk_create(
        Instrument(
            exchange="NFO",
            tradingsymbol=f"INFY26DEC{1000 + 20 * n}CE",
            name="INFY",
            segment="NFO-OPT",
            instrument_type="CE",
            instrument_token=90000 + n,
            tick_size=Decimal("0.05"),
            lot_size=400,
        )
        for n in range(120)
    )
    rows, truncated = selectors.instruments_search("infy")
    assert rows[0] == infy and truncated
    page = trader_client.get(reverse("brokers:instruments"), {"q": "INFY"}).content.decode()
    assert f'id="instrument-{infy.pk}"' in page
    options = trader_client.get(reverse("orders:instrument_options"), {"q": "INFY"}).content.decode()
    assert f'id="option-{infy.pk}"' in options


def test_search_is_safe_against_injection_and_escapes(trader_client, instruments):
    response = trader_client.get(reverse("brokers:instruments"), {"q": "' OR 1=1 --<script>"})
    assert response.status_code == 200
    assert b"<script>" not in response.content and b"INFY" not in response.content


def test_ticks_update_last_prices(instruments):
    quote = Quote("NSE", "INFY", 408065, Decimal("1512.30"), None, None, Decimal("1500"), 0, None)
    assert services.ticks_apply([quote]) == 1
    infy = Instrument.objects.get(tradingsymbol="INFY")
    assert infy.last_price == Decimal("1512.30") and infy.change == Decimal("12.30")


@pytest.mark.django_db(transaction=True)
async def test_subscribed_pages_get_coalesced_price_pushes(trader, settings, paper_market):
    settings.PRICE_PUSH_INTERVAL_S = 30
    await sync_to_async(call_command)("load_instruments", broker="paper")
    infy = await Instrument.objects.aget(tradingsymbol="INFY")
    tcs = await Instrument.objects.aget(tradingsymbol="TCS")
    communicator, connected, _ = await connect(trader)
    assert connected
    await communicator.send_to(text_data=f'{{"subscribe": ["{infy.pk}"], "HEADERS": {{}}}}')
    await communicator.receive_nothing(timeout=0.2)

    def tick(price):
        return services.ticks_apply(
            [
                Quote("NSE", "INFY", 1, Decimal(price), None, None, Decimal("1500"), 0, None),
                Quote("NSE", "TCS", 2, Decimal("3333"), None, None, Decimal("3100"), 0, None),
            ]
        )

    await sync_to_async(tick)("1510.50")
    html = await communicator.receive_from(timeout=3)
    assert f'id="ltp-{infy.pk}"' in html and "1510.50" in html and 'class="num up"' in html
    assert f"ltp-{tcs.pk}" not in html  # not subscribed
    # A burst inside the push interval sends nothing more.
    await sync_to_async(tick)("1511.00")
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


def test_page_colours_the_change_by_direction(trader_client, instruments):
    services.ticks_apply([Quote("NSE", "INFY", 1, Decimal("1490"), None, None, Decimal("1500"), 0, None)])
    services.ticks_apply([Quote("NSE", "TCS", 2, Decimal("3150"), None, None, Decimal("3100"), 0, None)])
    infy = Instrument.objects.get(tradingsymbol="INFY")
    tcs = Instrument.objects.get(tradingsymbol="TCS")
    page = trader_client.get(reverse("brokers:instruments")).content.decode()
    assert f'class="num down" id="chg-{infy.pk}"' in page and "-10.00 (-0.67%)" in page
    assert f'class="num up" id="chg-{tcs.pk}"' in page and "+50.00 (+1.61%)" in page


@pytest.mark.parametrize("price", ["0", "-3.50"])
def test_a_tick_with_no_price_keeps_the_last_price(instruments, account, price):
    """A tick whose last price is zero (no trade yet) or negative is not a price: the instrument
    keeps the last one it had (read by the order value limit and the fills valued at market),
    and a close that is no price does not replace the previous close either."""
    infy = Instrument.objects.get(tradingsymbol="INFY")
    before = (infy.last_price, infy.previous_close)
    assert before[0] > 0
    quote = Quote("NSE", "INFY", infy.instrument_token, Decimal(price), None, None, Decimal(price), 0, None)
    services.ticks_apply([quote])
    infy.refresh_from_db()
    assert (infy.last_price, infy.previous_close) == before
    assert selectors.instrument_last_price(infy, account=account) == before[0]


@pytest.mark.parametrize(
    ("field", "value"), [("tick_size", ""), ("tick_size", "0.05x"), ("lot_size", "fifty"), ("strike", "?")]
)
def test_a_dump_with_a_value_that_is_no_number_is_refused_naming_its_line_and_field(tmp_path, db, field, value):
    header, first, *rest = SAMPLE.read_text().splitlines()
    columns = header.split(",")
    cells = first.split(",")
    cells[columns.index(field)] = value
    dump = tmp_path / "instruments.csv"
    dump.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    with pytest.raises(CommandError, match=f"not a Kite instrument CSV.*line 2.*{field}"):
        call_command("load_instruments", file=dump)
    assert not Instrument.objects.exists()
