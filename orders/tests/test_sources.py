"""Baskets, scheduled orders and strategy signals: every one through order_place, exactly once."""

import hashlib
import json
import threading
import time as clock
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from accounts import services as account_services
from accounts.models import BrokerAccount
from accounts.tests.factories import make_broker_account
from brokers.models import Instrument
from brokers.paper.models import PaperOrder
from orders import services, sources
from orders.models import BasketRun, Order, ScheduledFire, ScheduledOrder, Strategy, StrategySignal
from orders.tests.factories import instrument, placed_then_database_lost
from tradingplatform import background
from tradingplatform.api import RepeatedKey, unique_keys

IST = ZoneInfo("Asia/Kolkata")


def spec(symbol="INFY", **overrides):
    values = {
        "instrument": instrument(symbol),
        "side": "BUY",
        "quantity": 1,
        "order_type": "MARKET",
        "product": "MIS",
        "price": None,
        "trigger_price": None,
    }
    values.update(overrides)
    return values


# --- Baskets ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_basket_places_every_item_on_every_account_with_multipliers(trader, instruments):
    one = make_broker_account(trader, broker="paper", client_id="B1")
    two = make_broker_account(trader, broker="paper", client_id="B2", copy_multiplier=Decimal("2.5"))
    basket = sources.basket_save(
        owner=trader,
        name="Morning",
        account_ids=[one.pk, two.pk],
        items=[spec(quantity=2), spec("TCS", side="SELL", order_type="LIMIT", price=Decimal("3200"), quantity=1)],
    )
    results = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [(r["account_id"], r["symbol"], r["quantity"]) for r in results] == [
        (one.pk, "INFY", 2),
        (one.pk, "TCS", 1),
        (two.pk, "INFY", 5),
        (two.pk, "TCS", 2),
    ]
    # Each answered with what the exchange said of it.
    at_exchange = {o.tag: {"COMPLETE": "FILLED"}.get(o.status, o.status) for o in PaperOrder.objects.all()}
    assert {Order.objects.get(pk=r["order_id"]).reference: r["status"] for r in results} == at_exchange
    assert PaperOrder.objects.count() == 4
    # The same run again (a double click) places nothing more.
    again = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [r["order_id"] for r in again] == [r["order_id"] for r in results]
    assert PaperOrder.objects.count() == 4
    basket.refresh_from_db()
    assert basket.last_results == again and basket.last_placed_at


def test_a_baskets_items_go_out_item_by_item_across_its_accounts(trader, instruments, monkeypatch):
    """Each account's first item is sent before any account's second: a slow or rate-limited
    account's items must not take every sending thread while the other accounts' wait (fills at
    the open come late). The results keep the accounts' order."""
    one = make_broker_account(trader, broker="paper", client_id="B1")
    two = make_broker_account(trader, broker="paper", client_id="B2")
    basket = sources.basket_save(
        owner=trader, name="Open", account_ids=[one.pk, two.pk], items=[spec(quantity=1), spec("TCS", quantity=1)]
    )
    sent, real = [], sources._place_item
    monkeypatch.setattr(
        sources,
        "_place_item",
        lambda actor, account, spec, *a, **kw: (
            sent.append((account.pk, spec["instrument"].tradingsymbol)) or real(actor, account, spec, *a, **kw)
        ),
    )
    results = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert sent == [(one.pk, "INFY"), (two.pk, "INFY"), (one.pk, "TCS"), (two.pk, "TCS")]
    assert [(r["account_id"], r["symbol"]) for r in results] == [
        (one.pk, "INFY"), (one.pk, "TCS"), (two.pk, "INFY"), (two.pk, "TCS")
    ]  # fmt: skip


def test_an_account_deactivated_while_its_basket_is_placed_gets_none_of_the_items_not_yet_sent(
    trader, instruments, monkeypatch
):
    """Staff (or the trader) deactivating an account stops its trading at once: a long placement
    (many items, a rate budget) sends none of that account's items after it, as order_place refuses
    any order on it; the other accounts' items still go out."""
    one = make_broker_account(trader, broker="paper", client_id="B1")
    two = make_broker_account(trader, broker="paper", client_id="B2")
    basket = sources.basket_save(
        owner=trader, name="Open", account_ids=[one.pk, two.pk], items=[spec(quantity=1), spec("TCS", quantity=1)]
    )
    real = sources._place_item

    def place_then_deactivate(actor, account, spec, *args, **kwargs):
        result = real(actor, account, spec, *args, **kwargs)
        if (account.pk, spec["instrument"].tradingsymbol) == (two.pk, "INFY"):  # the first turn is done
            account_services.broker_account_set_active(
                account=BrokerAccount.objects.get(pk=one.pk), actor=trader, active=False
            )
        return result

    monkeypatch.setattr(sources, "_place_item", place_then_deactivate)
    results = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [(r["account_id"], r["symbol"], r["status"], r.get("field")) for r in results] == [
        (one.pk, "INFY", "FILLED", None),
        (one.pk, "TCS", "INVALID", "account"),
        (two.pk, "INFY", "FILLED", None),
        (two.pk, "TCS", "FILLED", None),
    ]
    assert "deactivated" in results[1]["error"]
    assert PaperOrder.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_repeat_of_a_placement_after_the_basket_was_saved_again_places_nothing_more(trader, account, instruments):
    items = [spec(quantity=2), spec("TCS", quantity=1)]
    basket = sources.basket_save(owner=trader, name="Morning", account_ids=[account.pk], items=items)
    first = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    # Saved again as it was (a rename that sends the items too; a PUT): its items are new rows.
    basket = sources.basket_save(owner=trader, name="Opening", account_ids=[account.pk], items=items, basket=basket)
    again = sources.basket_place(basket=basket, actor=trader, run_token="t1")  # the client's retry
    assert [r["order_id"] for r in again] == [r["order_id"] for r in first]
    assert PaperOrder.objects.count() == 2
    # Items changed meanwhile: the repeat answers what it placed, as it was placed (not "a different
    # order", read as not placed, and placed again); nothing is placed twice.
    basket = sources.basket_save(
        owner=trader, name="Opening", account_ids=[account.pk], items=[spec(quantity=3), items[1]], basket=basket
    )
    changed = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [(r["order_id"], r["quantity"], r.get("error")) for r in changed] == [
        (first[0]["order_id"], 2, None),
        (first[1]["order_id"], 1, None),
    ]
    assert PaperOrder.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_repeat_of_a_placement_after_an_item_was_taken_off_still_answers_its_order(trader, instruments):
    """The client's retry (its first answer lost) after the basket lost an item answers every order
    the placement placed: the taken-off item's too, or it reads as never placed (and the trader's
    position in it as not there); nothing is placed twice, nothing new is placed."""
    one = make_broker_account(trader, broker="paper", client_id="D1")
    two = make_broker_account(trader, broker="paper", client_id="D2")
    items = [spec(quantity=2), spec("TCS", quantity=1)]
    basket = sources.basket_save(owner=trader, name="Morning", account_ids=[one.pk, two.pk], items=items)
    first = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    basket = sources.basket_save(
        owner=trader, name="Morning", account_ids=[one.pk, two.pk], items=items[:1], basket=basket
    )
    again = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [(r["account_id"], r["order_id"], r["symbol"]) for r in again] == [
        (r["account_id"], r["order_id"], r["symbol"]) for r in first
    ]
    assert PaperOrder.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_a_repeat_of_a_placement_whose_first_request_died_answers_its_orders_as_their_broker_has_them(
    trader, instruments, settings
):
    """The first request died after writing its orders: one taken by the exchange before the
    answer was recorded, one never sent (a minute ago). The client's retry answers each as
    ``order_place`` answers a repeat of its key: the first FILLED (its broker's word), the second
    FAILED, never sent (to be placed again), not NEW (read as on its way). Nothing is sent again."""
    settings.REPLAY_WAIT_S = 0.1
    account = make_broker_account(trader, broker="paper", client_id="DIED")
    basket = sources.basket_save(
        owner=trader, name="Open", account_ids=[account.pk], items=[spec(quantity=2), spec("TCS", quantity=1)]
    )

    class DiesAfterSending(services.AccountBroker):
        def place_order(self, request, **options):
            super().place_order(request, **options)
            raise KeyboardInterrupt  # the process stopped here

    sources._basket_run(basket, trader, "t1", None, [account], list(basket.items.all()))  # as the first request
    key = f"basket:{basket.pk}:t1:{account.pk}:#"
    with pytest.raises(KeyboardInterrupt):
        services.order_place(
            actor=trader, account=account, **spec(quantity=2), source=Order.Source.BASKET, basket=basket,
            cause="basket Open", idempotency_key=key + "1", broker=DiesAfterSending(account),
        )  # fmt: skip
    unsent, _ = services.order_prepare(
        actor=trader, account=account, **spec("TCS", quantity=1), source=Order.Source.BASKET, basket=basket,
        cause="basket Open", idempotency_key=key + "2",
    )  # fmt: skip
    Order.objects.filter(pk=unsent.pk).update(
        created_at=timezone.now() - timedelta(seconds=services.UNSENT_STALE_S + 1)
    )
    again = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [(r["symbol"], r["status"], r["reason"]) for r in again] == [
        ("INFY", Order.Status.FILLED, ""),
        ("TCS", Order.Status.FAILED, services.NEVER_SENT),
    ]
    assert PaperOrder.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_repeat_of_a_placement_after_a_copy_multiplier_changed_answers_what_it_placed(trader, instruments):
    account = make_broker_account(trader, broker="paper", client_id="M1")
    basket = sources.basket_save(owner=trader, name="Copy", account_ids=[account.pk], items=[spec(quantity=2)])
    first = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    account_services.broker_account_update(account=account, actor=trader, copy_multiplier=Decimal("2"))
    again = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [(r["order_id"], r["status"], r["quantity"]) for r in again] == [
        (first[0]["order_id"], first[0]["status"], 2)
    ]
    assert PaperOrder.objects.count() == 1


def test_a_repeat_of_a_placement_is_on_the_accounts_it_placed_on_whatever_the_basket_has_now(trader, instruments):
    """A client's retry after the basket's accounts were edited answers what the placement placed:
    nothing on an account added since, and the orders of one taken off."""
    one = make_broker_account(trader, broker="paper", client_id="R1")
    two = make_broker_account(trader, broker="paper", client_id="R2")
    basket = sources.basket_save(owner=trader, name="Morning", account_ids=[one.pk], items=[spec(quantity=1)])
    first = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    basket = sources.basket_save(
        owner=trader, name="Morning", account_ids=[two.pk], items=[spec(quantity=1)], basket=basket
    )
    again = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [(r["account_id"], r["order_id"]) for r in again] == [(one.pk, first[0]["order_id"])]
    assert PaperOrder.objects.count() == 1
    assert sources.basket_place(basket=basket, actor=trader, run_token="t2")[0]["account_id"] == two.pk  # a new one


def test_a_repeat_sent_at_once_with_its_first_request_places_on_the_accounts_the_first_placed_on(
    trader, instruments, monkeypatch
):
    """A double click (or the client's retry) while the basket's accounts were being edited: the first
    request read the basket's accounts (R1), the edit added R2, and the repeat read the accounts (R1
    and R2) before the first had recorded its run, then found the run as the first recorded it. It
    placed the run's item on R2 too, under the run's key: an order the placement never asked for.
    A repeat places on the accounts its run placed on, however early it read the basket."""
    one = make_broker_account(trader, broker="paper", client_id="R1")
    two = make_broker_account(trader, broker="paper", client_id="R2")
    basket = sources.basket_save(owner=trader, name="Morning", account_ids=[one.pk], items=[spec(quantity=1)])
    basket = sources.basket_save(
        owner=trader, name="Morning", account_ids=[one.pk, two.pk], items=[spec(quantity=1)], basket=basket
    )
    real = sources._basket_run

    def first_records_its_run_meanwhile(basket, actor, token, account_ids, accounts, items):
        monkeypatch.setattr(sources, "_basket_run", real)
        real(basket, actor, token, account_ids, [one], items)  # the first request, as it read the basket
        return real(basket, actor, token, account_ids, accounts, items)

    monkeypatch.setattr(sources, "_basket_run", first_records_its_run_meanwhile)
    again = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [r["account_id"] for r in again] == [one.pk]
    assert not Order.objects.filter(account=two).exists() and PaperOrder.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_one_failing_item_does_not_undo_the_others(trader, instruments):
    account = make_broker_account(trader, broker="paper", client_id="B3")
    basket = sources.basket_save(
        owner=trader,
        name="Mixed",
        account_ids=[account.pk],
        items=[spec(), spec(order_type="LIMIT", price=Decimal("2500")), spec("TCS")],
    )
    account_services.broker_account_update(account=account, actor=trader, max_quantity=1)
    results = sources.basket_place(basket=basket, actor=trader, run_token="t2")
    assert [r["status"] for r in results] == ["FILLED", "REJECTED", "FILLED"]
    assert results[1]["reason"].startswith("Your order price is outside the price band")
    assert PaperOrder.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_an_error_in_one_item_still_answers_every_item(trader, account, instruments, monkeypatch):
    basket = sources.basket_save(
        owner=trader, name="Mixed", account_ids=[account.pk], items=[spec(), spec("TCS"), spec("SBIN")]
    )
    place = services.order_place

    def place_but_tcs(**order):
        if order["instrument"].tradingsymbol == "TCS":
            raise RuntimeError("lost the database connection")
        return place(**order)

    monkeypatch.setattr(services, "order_place", place_but_tcs)
    results = sources.basket_place(basket=basket, actor=trader, run_token="t3")
    # The others are placed and answered; the failed one says it was not placed.
    assert [(r["symbol"], r["status"]) for r in results] == [("INFY", "FILLED"), ("TCS", "FAILED"), ("SBIN", "FILLED")]
    assert "order_id" not in results[1] and results[1]["error"].startswith("Not placed")
    assert PaperOrder.objects.count() == 2
    basket.refresh_from_db()
    assert basket.last_results == results
    # The retry of that run places the failed one only.
    monkeypatch.setattr(services, "order_place", place)
    again = sources.basket_place(basket=basket, actor=trader, run_token="t3")
    assert [r["status"] for r in again] == ["FILLED", "FILLED", "FILLED"]
    assert again[0]["order_id"] == results[0]["order_id"] and again[2]["order_id"] == results[2]["order_id"]
    assert PaperOrder.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_an_item_whose_answer_and_lookup_both_lost_the_database_is_not_said_unplaced(trader, account, monkeypatch):
    """The item reached the exchange; recording its answer lost the database connection, and so did
    the look for its order. It may well be placed (it is): never "Not placed ... place it again",
    which a trader would answer by placing it twice."""
    basket = sources.basket_save(owner=trader, name="One", account_ids=[account.pk], items=[spec()])
    place = placed_then_database_lost(monkeypatch)
    results = sources.basket_place(basket=basket, actor=trader, run_token="t4")
    assert PaperOrder.objects.count() == 1
    assert results[0]["status"] != "FAILED" and "place it again" not in results[0]["error"]
    # The retry of that run answers with the order, placed once.
    monkeypatch.setattr(services, "order_place", place)
    again = sources.basket_place(basket=basket, actor=trader, run_token="t4")
    assert again[0]["status"] == "FILLED" and PaperOrder.objects.count() == 1


def test_a_repeat_of_an_earlier_placement_leaves_the_baskets_last_results_the_latest_placements(
    trader, account, instruments
):
    """The basket placed (run t1), then placed again (t2); then t1's key sent again (the CLI's
    advice after a lost answer, a reload of the first page's form): it answers t1's orders, and
    it also wrote them as the basket's last results, at the time of the repeat, so the basket's
    page and ``GET /baskets`` showed the earlier placement's orders as the latest and t2's were
    gone from it. The basket's last results stay its latest placement's."""
    basket = sources.basket_save(owner=trader, name="Morning", account_ids=[account.pk], items=[spec()])
    first = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    second = sources.basket_place(basket=basket, actor=trader, run_token="t2")
    basket.refresh_from_db()
    placed_at = basket.last_placed_at
    again = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [r["order_id"] for r in again] == [r["order_id"] for r in first]
    basket.refresh_from_db()
    assert [r["order_id"] for r in basket.last_results] == [r["order_id"] for r in second]
    assert basket.last_placed_at == placed_at
    # A repeat of the latest placement is still its answer, as before.
    sources.basket_place(basket=basket, actor=trader, run_token="t2")
    basket.refresh_from_db()
    assert [r["order_id"] for r in basket.last_results] == [r["order_id"] for r in second]


def test_basket_validation(trader, account, other_trader):
    with pytest.raises(ValidationError) as error:
        sources.basket_save(owner=trader, name="", items=[spec()], account_ids=[])
    assert "name" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        sources.basket_save(owner=trader, name="x", items=[{"instrument": None}], account_ids=[])
    assert "items.0.instrument" in error.value.message_dict
    theirs = make_broker_account(other_trader, broker="paper", client_id="THEIRS")
    with pytest.raises(ValidationError) as error:
        sources.basket_save(owner=trader, name="x", items=[spec()], account_ids=[theirs.pk])
    assert "account_ids" in error.value.message_dict


def test_copy_quantity_rounds_down_to_whole_lots(trader, account):
    account.copy_multiplier = Decimal("1.5")
    future = instrument("NIFTY26DECFUT", "NFO")
    future_lot = future.lot_size
    assert sources._copy_quantity(future_lot, account, future) == future_lot
    assert sources._copy_quantity(2 * future_lot, account, future) == 3 * future_lot
    account.copy_multiplier = Decimal("0.5")
    assert sources._copy_quantity(future_lot, account, future) == 0


@pytest.mark.django_db(transaction=True)
def test_a_basket_item_off_its_lot_is_refused_on_every_account_not_cut_to_a_lot(trader, account):
    """An item of 100 of a 75-lot future (a row from before the rules, or a lot size revised since)
    asks for what the exchange cannot take. Rounded down it placed 75 on an account whose multiplier
    is 1 (and 150 at 1.5): a quantity the trader never asked for. It is refused on each account for
    its lot, as the ticket, the API and a signal refuse it; nothing is sent."""
    more = make_broker_account(trader, broker="paper", client_id="B15", label="More", copy_multiplier=Decimal("1.5"))
    future = instrument("NIFTY26DECFUT", "NFO")
    item = spec(instrument=future, quantity=75, product="NRML")
    basket = sources.basket_save(owner=trader, name="Futures", account_ids=[account.pk, more.pk], items=[item])
    basket.items.update(quantity=100)
    results = sources.basket_place(basket=basket, actor=trader, run_token="lots")
    assert [(r["status"], r.get("field")) for r in results] == [("INVALID", "quantity")] * 2, [
        (r["quantity"], r["status"], r.get("reason")) for r in results
    ]
    assert {r["error"] for r in results} == {"Quantity must be a multiple of the lot size, 75."}
    assert not PaperOrder.objects.exists() and not Order.objects.exists()


def test_a_basket_left_with_no_items_is_refused_not_answered_as_placed(trader, account):
    """A basket whose items were all taken off in the admin: placing it answered an empty list (the
    page showed nothing, no word, and wrote it as its last placement), as though it had been
    placed. It is refused naming its items; nothing is written."""
    basket = sources.basket_save(owner=trader, name="Emptied", account_ids=[account.pk], items=[spec()])
    basket.items.all().delete()
    with pytest.raises(ValidationError) as error:
        sources.basket_place(basket=basket, actor=trader, run_token="empty")
    assert "items" in error.value.message_dict
    basket.refresh_from_db()
    assert basket.last_placed_at is None and not BasketRun.objects.exists() and not Order.objects.exists()


# --- Scheduled orders ------------------------------------------------------------------------


def make_scheduled(trader, account, **overrides):
    soon = timezone.now().astimezone(IST) + timedelta(minutes=5)
    values = {
        "recurrence": "once",
        "time_of_day": soon.time().replace(microsecond=0),
        "timezone_name": "Asia/Kolkata",
        "run_on": soon.date(),
    }
    values.update(overrides)
    return sources.scheduled_save(owner=trader, account=account, spec=spec(), **values)


def test_next_occurrence_for_each_recurrence(trader, account):
    row = make_scheduled(trader, account, recurrence="weekdays", weekdays=[2], run_on=None, time_of_day=time(9, 30))
    saturday = datetime(2026, 11, 21, 12, 0, tzinfo=IST)
    assert sources.next_occurrence(row, saturday) == datetime(2026, 11, 25, 9, 30, tzinfo=IST)
    row.recurrence = "trading_days"
    assert sources.next_occurrence(row, saturday) == datetime(2026, 11, 23, 9, 30, tzinfo=IST)
    row.recurrence, row.run_on = "once", saturday.date()
    assert sources.next_occurrence(row, saturday) is None


def test_scheduled_validation_names_the_field(trader, account):
    with pytest.raises(ValidationError) as error:
        make_scheduled(trader, account, run_on=None)
    assert "run_on" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        make_scheduled(trader, account, run_on=datetime(2020, 1, 1).date())
    assert "run_on" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        sources.scheduled_save(
            owner=trader,
            account=account,
            spec=spec(order_type="LIMIT"),
            recurrence="once",
            time_of_day=time(9),
            timezone_name="Asia/Kolkata",
            run_on=datetime(2030, 1, 1).date(),
        )
    assert "price" in error.value.message_dict
    assert not ScheduledOrder.objects.exists()


def test_a_date_at_the_start_of_the_calendar_is_refused_naming_it_not_a_500(trader, account):
    # 0001-01-01 00:00 in a zone east of UTC is before the first UTC time there is.
    for zone in ("Asia/Kolkata", "America/New_York"):
        with pytest.raises(ValidationError) as error:
            make_scheduled(trader, account, run_on=date.min, time_of_day=time(0), timezone_name=zone)
        assert "run_on" in error.value.message_dict
    assert not ScheduledOrder.objects.exists()


def test_a_due_order_fires_once_however_often_it_is_dispatched(trader, account):
    row = make_scheduled(trader, account)
    assert sources.scheduled_claim_due() == []  # not due yet
    due_at = row.next_run_at
    fires = sources.scheduled_claim_due(now=due_at + timedelta(milliseconds=300))
    assert len(fires) == 1
    assert sources.scheduled_claim_due(now=due_at + timedelta(seconds=1)) == []  # claimed already
    ScheduledOrder.objects.filter(pk=row.pk).update(status="active", next_run_at=due_at)  # a replayed claim
    assert sources.scheduled_claim_due(now=due_at + timedelta(seconds=1)) == []  # unique (scheduled, due_at)
    ScheduledFire.objects.filter(pk=fires[0]).update(claimed_at=timezone.now(), due_at=timezone.now())  # time's come
    first = sources.scheduled_fire(fire_id=fires[0])
    second = sources.scheduled_fire(fire_id=fires[0])  # a duplicate task delivery
    assert first.status == second.status == "placed"
    assert Order.objects.filter(scheduled=row).count() == 1 and PaperOrder.objects.count() == 1
    row.refresh_from_db()
    assert row.status == "done" and row.next_run_at is None and row.last_result.endswith("FILLED")


def test_a_run_the_broker_refused_is_told_to_the_trader(trader, account, monkeypatch):
    """Its order was placed and REJECTED (here outside the price band): the run said "Placed" and
    the trader was told nothing, as they are of a run that failed."""
    notices = []
    monkeypatch.setattr(sources, "_notify", lambda scheduled, text: notices.append(text))
    soon = timezone.now().astimezone(IST) + timedelta(minutes=5)
    row = sources.scheduled_save(
        owner=trader,
        account=account,
        spec=spec(order_type="LIMIT", price="2500"),
        recurrence="once",
        time_of_day=soon.time().replace(microsecond=0),
        timezone_name="Asia/Kolkata",
        run_on=soon.date(),
    )
    [fire] = sources.scheduled_claim_due(now=row.next_run_at + timedelta(milliseconds=300))
    ScheduledFire.objects.filter(pk=fire).update(due_at=timezone.now())  # its time has come
    done = sources.scheduled_fire(fire_id=fire)
    order = Order.objects.get(scheduled=row)
    assert order.status == Order.Status.REJECTED and done.status == "placed" and "REJECTED" in done.detail
    assert notices == [f"Scheduled order #{row.pk} was refused by the broker: {done.detail}"]


def test_a_missed_time_is_reported_not_fired_late(trader, account):
    row = make_scheduled(trader, account)
    fires = sources.scheduled_claim_due(now=row.next_run_at + timedelta(hours=3))
    assert fires == []
    fire = ScheduledFire.objects.get(scheduled=row)
    assert fire.status == "missed" and "late" in fire.detail
    assert not PaperOrder.objects.exists()


def test_a_missed_time_is_reported_at_the_time_the_trader_chose_in_their_zone(trader, account, monkeypatch):
    notices = []
    monkeypatch.setattr(sources, "_notify", lambda scheduled, text: notices.append(text))
    row = make_scheduled(trader, account, run_on=datetime(2030, 1, 2).date(), time_of_day=time(9, 15))
    sources.scheduled_claim_due(now=row.next_run_at + timedelta(hours=3))
    assert ScheduledFire.objects.get(scheduled=row).status == "missed"
    # 09:15 in Kolkata, not 03:45 (the due time in UTC).
    assert notices == [f"Scheduled order #{row.pk} missed its time (2030-01-02 09:15:00 Asia/Kolkata); not placed."]


def test_a_scheduled_orders_events_say_its_due_time_in_the_zone_the_trader_chose(trader, account):
    """The order's timeline says which run made it: at the time the trader set, in their zone (the
    order page shows it as text), not the due time in UTC, which reads as a time hours away."""
    york = ZoneInfo("America/New_York")
    soon = timezone.now().astimezone(york) + timedelta(minutes=5)
    row = make_scheduled(
        trader,
        account,
        timezone_name="America/New_York",
        run_on=soon.date(),
        time_of_day=soon.time().replace(microsecond=0),
    )
    due_at = _due_soon(row, -0.5)
    [fire_id] = sources.scheduled_claim_due()
    assert sources.scheduled_fire(fire_id=fire_id).status == "placed"
    order = Order.objects.get(scheduled=row)
    wanted = f"scheduled order #{row.pk} due {due_at.astimezone(york):%Y-%m-%d %H:%M:%S} America/New_York"
    assert set(order.events.filter(kind__in=["created", "submitted"]).values_list("cause", flat=True)) == {wanted}


def test_a_grace_window_allows_a_late_fire(trader, account):
    row = make_scheduled(trader, account, grace_s=4 * 3600)
    fires = sources.scheduled_claim_due(now=row.next_run_at + timedelta(hours=3))
    assert len(fires) == 1


def test_after_an_outage_each_missed_run_is_reported_and_one_still_within_its_grace_is_placed(trader, account):
    # The dispatcher was down from before yesterday's run until an hour after today's.
    ran_at = (timezone.now() - timedelta(hours=1)).astimezone(IST).replace(microsecond=0)
    daily = dict(recurrence="weekdays", weekdays=list(range(7)), run_on=None, grace_s=2 * 3600)
    row = make_scheduled(trader, account, time_of_day=ran_at.time(), **daily)
    yesterday = ran_at - timedelta(days=1)
    ScheduledOrder.objects.filter(pk=row.pk).update(next_run_at=yesterday)
    claimed = [fire for _beat in range(3) for fire in sources.scheduled_claim_due()]  # the next beats
    fires = {fire.due_at: fire for fire in ScheduledFire.objects.filter(scheduled=row)}
    assert fires[yesterday].status == "missed"  # a day late: beyond its grace, reported
    assert fires[ran_at].status == "pending" and claimed == [fires[ran_at].pk]  # an hour late: within it
    row.refresh_from_db()
    assert row.next_run_at == ran_at + timedelta(days=1)


def _daily_after_an_outage(trader, account, *, days_down: int, back_s: float, grace_s: int = 0):
    """A daily order (IST) whose dispatcher was down for ``days_down`` of its runs before today's,
    due ``back_s`` after the dispatcher is back (negative: already come); today's due time."""
    back = timezone.now()
    today = (back + timedelta(seconds=back_s)).astimezone(IST).replace(microsecond=0)
    daily = dict(recurrence="weekdays", weekdays=list(range(7)), run_on=None, grace_s=grace_s)
    row = make_scheduled(trader, account, time_of_day=today.time(), **daily)
    ScheduledOrder.objects.filter(pk=row.pk).update(next_run_at=today - timedelta(days=days_down))
    return row, today, back


def test_after_a_long_outage_todays_run_is_placed_on_time_and_each_missed_run_reported(
    trader, account, settings, monkeypatch
):
    """The dispatcher comes back 2 s before a daily order's time, after three weeks down. Each beat
    (one a second) claimed one past run of the order, so today's came to be claimed 19 s after its
    time, past the on-time window: reported missed, never placed, with the platform up all along.
    Every past run is reported at the first beat and today's is claimed on time."""
    notices = []
    monkeypatch.setattr(sources, "_notify", lambda scheduled, text: notices.append(text))
    row, today, back = _daily_after_an_outage(trader, account, days_down=21, back_s=2)
    for beat in range(25):
        sources.scheduled_claim_due(now=back + timedelta(seconds=beat), lead_s=settings.SCHEDULE_LEAD_S)
    fires = {fire.due_at: fire for fire in ScheduledFire.objects.filter(scheduled=row)}
    assert (fires[today].status, fires[today].detail) == ("pending", "")
    assert [fires[today - timedelta(days=days)].status for days in range(1, 22)] == ["missed"] * 21
    assert len(notices) == 21
    row.refresh_from_db()
    assert row.next_run_at == today + timedelta(days=1)


def test_after_an_outage_a_grace_of_a_day_places_one_run_not_yesterdays_and_todays_at_once(trader, account):
    """A daily order with a day's grace; the dispatcher was down over yesterday's run and comes back
    just after today's. Both were within the grace, and each beat claimed one: yesterday's order and
    today's were placed together, twice what the trader places a day. Only the latest run that came
    is placed; the earlier one is reported missed."""
    row, today, back = _daily_after_an_outage(trader, account, days_down=1, back_s=-5, grace_s=86400)
    claimed = [fire for beat in range(3) for fire in sources.scheduled_claim_due(now=back + timedelta(seconds=beat))]
    fires = {fire.due_at: fire for fire in ScheduledFire.objects.filter(scheduled=row)}
    assert claimed == [fires[today].pk]
    assert fires[today - timedelta(days=1)].status == "missed"
    assert "later run" in fires[today - timedelta(days=1)].detail


def test_after_an_outage_a_grace_of_a_day_does_not_place_yesterdays_run_seconds_before_todays(trader, account):
    """A daily order with a grace longer than a day; the dispatcher was down over yesterday's run
    and comes back 30 s before today's. Yesterday's was within its grace and placed at once, today's
    30 s later: two orders seconds apart. Yesterday's is reported missed, overtaken by today's."""
    row, today, back = _daily_after_an_outage(trader, account, days_down=1, back_s=30, grace_s=90000)
    if today.date() != back.astimezone(IST).date():
        pytest.skip("too close to midnight in India")
    now_claimed = sources.scheduled_claim_due(now=back)
    then_claimed = sources.scheduled_claim_due(now=today)
    fires = {fire.due_at: fire for fire in ScheduledFire.objects.filter(scheduled=row)}
    yesterdays = fires[today - timedelta(days=1)]
    assert now_claimed == [] and then_claimed == [fires[today].pk]
    assert yesterdays.status == "missed" and "later run" in yesterdays.detail


def test_a_recurring_order_moves_to_its_next_time(trader, account):
    row = make_scheduled(trader, account, recurrence="trading_days", run_on=None)
    first_due = row.next_run_at
    sources.scheduled_claim_due(now=first_due + timedelta(seconds=1))
    row.refresh_from_db()
    assert row.status == "active" and row.next_run_at > first_due


def test_cancel(trader, other_trader, account):
    row = make_scheduled(trader, account)
    with pytest.raises(ValidationError):
        sources.scheduled_cancel(scheduled=row, actor=other_trader)
    assert sources.scheduled_cancel(scheduled=row, actor=trader).live is True
    assert sources.scheduled_claim_due(now=timezone.now() + timedelta(hours=1)) == []


def test_an_edit_read_before_a_cancel_does_not_bring_the_order_back(trader, account):
    row = make_scheduled(trader, account)
    read_for_the_edit = ScheduledOrder.objects.get(pk=row.pk)
    assert sources.scheduled_cancel(scheduled=row, actor=trader).live is True  # on another tab
    soon = timezone.now().astimezone(IST) + timedelta(minutes=9)
    with pytest.raises(ValidationError) as error:
        sources.scheduled_save(
            owner=trader,
            account=account,
            spec=spec(),
            scheduled=read_for_the_edit,
            recurrence="once",
            time_of_day=soon.time().replace(microsecond=0),
            timezone_name="Asia/Kolkata",
            run_on=soon.date(),
        )
    assert "cancelled" in error.value.message_dict["scheduled"][0]
    assert ScheduledOrder.objects.get(pk=row.pk).status == ScheduledOrder.Status.CANCELLED
    assert sources.scheduled_claim_due(now=timezone.now() + timedelta(hours=1)) == []


def _due_soon(row, seconds: float):
    due_at = timezone.now() + timedelta(seconds=seconds)
    ScheduledOrder.objects.filter(pk=row.pk).update(next_run_at=due_at)
    return due_at


def _daily_due_a_moment_ago(trader, account):
    """A daily order whose due time came 2 s ago, claimed, no worker on it yet; the time it is moved to."""
    zone = next(
        z for z in ("UTC", "Asia/Kolkata", "America/New_York") if 1 <= timezone.now().astimezone(ZoneInfo(z)).hour < 23
    )
    local = timezone.now().astimezone(ZoneInfo(zone))
    daily = dict(recurrence="weekdays", weekdays=list(range(7)), run_on=None, timezone_name=zone)
    row = make_scheduled(
        trader, account, time_of_day=(local + timedelta(minutes=30)).time().replace(microsecond=0), **daily
    )
    _due_soon(row, -2)
    [fire_id] = sources.scheduled_claim_due()
    later = (local + timedelta(minutes=5)).time().replace(microsecond=0)
    return row, fire_id, dict(time_of_day=later, **daily), local


def test_moving_a_daily_time_later_just_after_its_time_came_places_once_that_day_at_the_new_time(trader, account):
    # The later time replaces the one that came (a late worker would have missed it, or placed it
    # and the later time a second one): one order today, at the time the trader asked.
    row, fire_id, moved, local = _daily_due_a_moment_ago(trader, account)
    row = sources.scheduled_save(owner=trader, account=account, spec=spec(), scheduled=row, **moved)
    assert row.next_run_at == datetime.combine(local.date(), moved["time_of_day"], tzinfo=local.tzinfo)
    assert sources.scheduled_fire(fire_id=fire_id).status == "cancelled"
    assert not Order.objects.filter(scheduled=row).exists()


def test_moving_a_daily_time_whose_due_time_a_worker_took_places_next_tomorrow(trader, account):
    row, fire_id, moved, local = _daily_due_a_moment_ago(trader, account)
    ScheduledFire.objects.filter(pk=fire_id).update(status=ScheduledFire.Status.PLACING)  # a worker has it
    # While it is being placed the change is refused (that order has the settings it had) ...
    with pytest.raises(ValidationError) as error:
        sources.scheduled_save(owner=trader, account=account, spec=spec(), scheduled=row, **moved)
    assert error.value.error_dict["scheduled"][0].code == "conflict"
    assert "being placed now" in error.value.message_dict["scheduled"][0]
    # ... and once it is placed, it was today's run: the next is tomorrow.
    ScheduledFire.objects.filter(pk=fire_id).update(status=ScheduledFire.Status.PLACED)
    row = sources.scheduled_save(owner=trader, account=account, spec=spec(), scheduled=row, **moved)
    assert row.next_run_at.astimezone(local.tzinfo).date() > local.date()


def test_a_cancel_while_a_worker_places_a_run_says_that_run_still_goes_out(
    trader, account, staff, monkeypatch, django_capture_on_commit_callbacks
):
    """A cancel cannot stop a run a worker is already placing: it was answered as a plain "Cancelled"
    (staff's notice to the trader: "it will not be placed") and an order came a moment later."""
    row, fire_id, _moved, _local = _daily_due_a_moment_ago(trader, account)
    ScheduledFire.objects.filter(pk=fire_id).update(status=ScheduledFire.Status.PLACING)  # a worker has it
    due_at = ScheduledFire.objects.get(pk=fire_id).due_at
    answer = sources.scheduled_cancel(scheduled=row, actor=trader)
    assert answer and answer.placing_due == due_at
    assert answer.text(row) == (
        f"Its run due {sources._due_text(row, due_at)} was already being placed and goes out as it was."
    )
    assert ScheduledOrder.objects.get(pk=row.pk).status == ScheduledOrder.Status.CANCELLED
    assert ScheduledFire.objects.get(pk=fire_id).status == ScheduledFire.Status.PLACING  # not taken from the worker
    # Staff cancelling tell the trader the same.
    row, fire_id, _moved, _local = _daily_due_a_moment_ago(trader, account)
    ScheduledFire.objects.filter(pk=fire_id).update(status=ScheduledFire.Status.PLACING)
    told = []
    monkeypatch.setattr(sources, "_notify", lambda scheduled, text: told.append(text))
    with django_capture_on_commit_callbacks(execute=True):
        answer = sources.scheduled_cancel_by_staff(scheduled=row, staff=staff)
    assert answer.placing_due == ScheduledFire.objects.get(pk=fire_id).due_at
    assert told == [f"Scheduled order #{row.pk} was cancelled by staff: no later run is placed. {answer.text(row)}"]
    # Nothing being placed: nothing more to say.
    quiet = make_scheduled(trader, account)
    answer = sources.scheduled_cancel(scheduled=quiet, actor=trader)
    assert answer and answer.placing_due is None and answer.text(quiet) == ""
    assert not sources.scheduled_cancel(scheduled=quiet, actor=trader)  # cancelled already


def test_a_due_time_is_claimed_ahead_and_placed_at_its_time_not_before(trader, account):
    row = make_scheduled(trader, account)
    now = timezone.now()
    due_at = _due_soon(row, 1.5)
    assert sources.scheduled_claim_due(now=now) == []  # not due yet
    fires = sources.scheduled_claim_due(now=now, lead_s=2)
    assert len(fires) == 1
    fire = sources.scheduled_fire(fire_id=fires[0])  # a worker that got it early waits for its time
    assert fire.status == "placed"
    order = Order.objects.get(scheduled=row)
    assert order.events.get(kind="submitted").created_at >= due_at


def test_a_due_time_claimed_ahead_is_dropped_by_a_cancel_or_a_change(trader, account):
    cancelled, changed = make_scheduled(trader, account), make_scheduled(trader, account)
    for row in (cancelled, changed):
        _due_soon(row, 30)
    fires = sources.scheduled_claim_due(lead_s=60)
    assert len(fires) == 2
    ScheduledOrder.objects.filter(pk=cancelled.pk).update(status="done")  # a once order is done once claimed
    assert sources.scheduled_cancel(scheduled=cancelled, actor=trader).live is True
    changed.refresh_from_db()
    sources.scheduled_save(
        owner=trader,
        account=account,
        spec=spec(),
        recurrence="once",
        time_of_day=(timezone.now().astimezone(IST) + timedelta(minutes=9)).time().replace(microsecond=0),
        timezone_name="Asia/Kolkata",
        run_on=(timezone.now().astimezone(IST) + timedelta(minutes=9)).date(),
        scheduled=changed,
    )
    assert set(ScheduledFire.objects.filter(pk__in=fires).values_list("status", flat=True)) == {"cancelled"}
    cancelled.refresh_from_db()
    assert cancelled.status == "cancelled"
    assert [sources.scheduled_fire(fire_id=pk).status for pk in fires] == ["cancelled", "cancelled"]
    assert not Order.objects.exists() and not PaperOrder.objects.exists()


def test_the_dispatcher_sends_each_claimed_fire_at_once_and_the_worker_prepares_it_then_sends_it_at_its_time(
    trader, account, monkeypatch
):
    from orders import tasks

    sent = []
    monkeypatch.setattr(tasks.fire_scheduled, "apply_async", lambda args, eta=None: sent.append((args[0], eta)))
    row = make_scheduled(trader, account)
    due_at = _due_soon(row, 1.5)
    assert tasks.dispatch_scheduled() == 1
    fire = ScheduledFire.objects.get(scheduled=row)
    assert sent == [([fire.pk], None)] and fire.status == "pending"

    # The worker, ahead of the time: the order checked and written, numbered, not sent; the task
    # comes again at the time.
    assert tasks.fire_scheduled([fire.pk]) == ["prepared"]
    assert sent[1:] == [([fire.pk], due_at)]
    order = Order.objects.get(scheduled=row)
    assert order.status == "NEW" and order.reference.endswith("N000001")
    assert list(order.events.values_list("kind", flat=True)) == ["created"]
    assert not PaperOrder.objects.exists()
    assert tasks.fire_scheduled([fire.pk]) == ["prepared"]  # a redelivery ahead of the time: nothing more
    assert Order.objects.count() == 1 and len(sent) == 3

    # At the time: only sent, once, however often the task comes.
    clock.sleep(max(0, (due_at - timezone.now()).total_seconds()))
    assert tasks.fire_scheduled([fire.pk]) == ["placed"]
    assert tasks.fire_scheduled([fire.pk]) == ["placed"]
    order.refresh_from_db()
    assert order.status in ("SUBMITTED", "OPEN", "FILLED") and order.events.get(kind="submitted").created_at >= due_at
    assert Order.objects.count() == 1 and PaperOrder.objects.filter(tag=order.reference).count() == 1


def test_fires_due_at_the_same_time_go_to_a_worker_together_in_batches(trader, account, monkeypatch, settings):
    from orders import tasks

    settings.SCHEDULE_FIRE_BATCH = 2
    sent = []
    monkeypatch.setattr(tasks.fire_scheduled, "apply_async", lambda args, eta=None: sent.append((args[0], eta)))
    rows = [make_scheduled(trader, account) for _ in range(4)]
    due_at = timezone.now() + timedelta(seconds=1)
    ScheduledOrder.objects.filter(pk__in=[r.pk for r in rows[:3]]).update(next_run_at=due_at)
    _due_soon(rows[3], 1.5)
    assert tasks.dispatch_scheduled() == 4

    fires = dict(ScheduledFire.objects.values_list("scheduled_id", "pk"))
    first_three = sorted(fires[r.pk] for r in rows[:3])
    assert [eta for _, eta in sent] == [None, None, None]  # at once: the worker prepares them ahead
    assert sorted(pk for ids, _ in sent[:2] for pk in ids) == first_three and len(sent[0][0]) == 2
    assert sent[2][0] == [fires[rows[3].pk]]


def test_a_batch_places_each_fire_once_and_a_redelivery_places_nothing_more(trader, account):
    rows = [make_scheduled(trader, account) for _ in range(3)]
    sources.scheduled_claim_due(now=rows[0].next_run_at + timedelta(seconds=1))
    of_row = dict(ScheduledFire.objects.values_list("scheduled_id", "pk"))
    ids = [of_row[row.pk] for row in rows]
    ScheduledFire.objects.filter(pk__in=ids).update(due_at=timezone.now())  # their time has come
    ScheduledFire.objects.filter(pk=ids[1]).update(status="placing")  # a worker died placing it
    sources.scheduled_cancel(scheduled=rows[2], actor=trader)

    fires = sources.scheduled_fires(fire_ids=ids)
    assert [fire.pk for fire in fires] == ids  # in the order asked
    assert [fire.status for fire in fires] == ["placed", "placed", "cancelled"]
    again = sources.scheduled_fires(fire_ids=ids)  # the same task delivered again
    assert [fire.status for fire in again] == ["placed", "placed", "cancelled"]
    assert Order.objects.filter(scheduled__in=rows).count() == 2 and PaperOrder.objects.count() == 2
    for row in rows[:2]:
        row.refresh_from_db()
        assert row.last_result.endswith("FILLED")


def test_a_fire_that_fails_unexpectedly_stays_placing_and_the_others_are_recorded(trader, account, monkeypatch):
    from orders import services

    rows = [make_scheduled(trader, account) for _ in range(3)]
    sources.scheduled_claim_due(now=rows[0].next_run_at + timedelta(seconds=1))
    of_row = dict(ScheduledFire.objects.values_list("scheduled_id", "pk"))
    ids = [of_row[row.pk] for row in rows]
    ScheduledFire.objects.filter(pk__in=ids).update(due_at=timezone.now())
    broken = rows[1].pk
    place = services.order_place

    def order_place(**kwargs):
        if kwargs["scheduled"].pk == broken:
            raise RuntimeError("a bug while placing")
        return place(**kwargs)

    monkeypatch.setattr(services, "order_place", order_place)
    assert [fire.status for fire in sources.scheduled_fires(fire_ids=ids)] == ["placed", "placing", "placed"]
    monkeypatch.setattr(services, "order_place", place)  # sent again later (scheduled_dispatch's refire)
    assert sources.scheduled_fire(fire_id=ids[1]).status == "placed"
    assert Order.objects.filter(scheduled__in=rows).count() == 3


@pytest.mark.django_db(transaction=True)
def test_fire_tasks_side_by_side_place_at_most_the_parallelism_at_once(trader, account, monkeypatch, settings):
    """A threads-pool worker runs several fire tasks at once: together they hold at most
    ``SCHEDULE_FIRE_PARALLELISM`` database connections for placing."""
    from orders import services

    settings.SCHEDULE_FIRE_PARALLELISM = 2
    # A fresh pool: one an earlier test used at a higher setting keeps its idle threads a while.
    monkeypatch.setattr(sources, "_fires", background.Pool("SCHEDULE_FIRE_PARALLELISM", "placing-scheduled"))
    rows = [make_scheduled(trader, account) for _ in range(8)]
    sources.scheduled_claim_due(now=rows[0].next_run_at + timedelta(seconds=1))
    ids = sorted(ScheduledFire.objects.values_list("pk", flat=True))
    ScheduledFire.objects.filter(pk__in=ids).update(due_at=timezone.now())
    place, lock, at_once = services.order_place, threading.Lock(), {"now": 0, "most": 0}

    def order_place(**kwargs):
        with lock:
            at_once["now"] += 1
            at_once["most"] = max(at_once["most"], at_once["now"])
        try:
            clock.sleep(0.05)
            return place(**kwargs)
        finally:
            with lock:
                at_once["now"] -= 1

    def task(fire_ids):  # a fire task on a worker thread of its own
        try:
            sources.scheduled_fires(fire_ids=fire_ids)
        finally:
            connection.close()

    monkeypatch.setattr(services, "order_place", order_place)
    tasks = [threading.Thread(target=task, args=(ids[k::2],)) for k in range(2)]
    for thread in tasks:
        thread.start()
    for thread in tasks:
        thread.join()
    assert at_once["most"] == 2
    assert set(ScheduledFire.objects.values_list("status", flat=True)) == {"placed"}
    assert Order.objects.filter(scheduled__in=rows).count() == 8


def test_an_edit_that_keeps_a_claimed_time_still_places_it(trader, account):
    row = make_scheduled(trader, account)
    keep = row.next_run_at  # five minutes away
    fires = sources.scheduled_claim_due(now=keep)  # claimed (as if ahead of its time)
    assert len(fires) == 1
    sources.scheduled_save(  # only the quantity changes
        owner=trader,
        account=account,
        spec=spec(quantity=2),
        recurrence="once",
        time_of_day=row.time_of_day,
        timezone_name=row.timezone,
        run_on=row.run_on,
        scheduled=row,
    )
    assert ScheduledFire.objects.get(pk=fires[0]).status == "cancelled"
    assert sources.scheduled_fire(fire_id=fires[0]).status == "cancelled"
    assert sources.scheduled_claim_due(now=keep) == fires  # the same due time, taken again
    assert sources.scheduled_fire(fire_id=fires[0]).status == "pending"  # five minutes early: not placed
    ScheduledFire.objects.filter(pk=fires[0]).update(due_at=timezone.now())  # its time has come
    assert sources.scheduled_fire(fire_id=fires[0]).status == "placed"
    assert Order.objects.get(scheduled=row).quantity == 2


def test_a_cancel_stops_a_due_time_waiting_for_a_worker_and_is_too_late_once_a_worker_took_it(trader, account):
    waiting = make_scheduled(trader, account, recurrence="trading_days", run_on=None)
    taken = make_scheduled(trader, account, recurrence="trading_days", run_on=None)
    late = max(waiting.next_run_at, taken.next_run_at) + timedelta(seconds=1)
    fires = dict(zip((waiting.pk, taken.pk), [None, None], strict=True))
    for pk in sources.scheduled_claim_due(now=late):
        fire = ScheduledFire.objects.get(pk=pk)
        fires[fire.scheduled_id] = pk
    ScheduledFire.objects.filter(pk__in=fires.values()).update(due_at=timezone.now())  # their time has come
    ScheduledFire.objects.filter(pk=fires[taken.pk]).update(status="placing")  # a worker is placing it
    for row in (waiting, taken):
        assert sources.scheduled_cancel(scheduled=row, actor=trader).live is True
    assert sources.scheduled_fire(fire_id=fires[waiting.pk]).status == "cancelled"
    assert sources.scheduled_fire(fire_id=fires[taken.pk]).status == "placed"  # redelivered: placed once
    assert sources.scheduled_fire(fire_id=fires[taken.pk]).status == "placed"
    assert list(Order.objects.values_list("scheduled_id", flat=True)) == [taken.pk]
    assert PaperOrder.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_at_once_claim_each_due_time_once(trader, instruments):
    account = make_broker_account(trader, broker="paper", client_id="S1")
    rows = [make_scheduled(trader, account) for _ in range(20)]
    now = max(row.next_run_at for row in rows) + timedelta(seconds=1)
    claimed, barrier = [], threading.Barrier(2)

    def dispatcher():
        try:
            barrier.wait()
            claimed.extend(sources.scheduled_claim_due(now=now))
        finally:
            connection.close()

    threads = [threading.Thread(target=dispatcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 20
    assert ScheduledFire.objects.count() == 20


# --- Strategies ------------------------------------------------------------------------------


@pytest.fixture
def strategy(trader, account):
    row, secret = sources.strategy_save(owner=trader, name="Breakout", account_ids=[account.pk], stop_loss=Decimal("1"))
    row.secret = secret
    return row


def test_the_webhook_secret_is_shown_once_and_stored_hashed(strategy):
    assert strategy.secret.startswith("whsec_")
    assert strategy.webhook_secret_hash == hashlib.sha256(strategy.secret.encode()).hexdigest()
    _, again = sources.strategy_save(owner=strategy.owner, name="Breakout", account_ids=[], strategy=strategy)
    assert again == ""


def test_an_edit_keeps_a_secret_rotated_since_the_strategy_was_read(strategy):
    # The edit page (or a PUT) read the strategy, the trader rotated the leaked secret on another
    # tab, then the edit is saved: the old secret must not come back.
    read_for_the_edit = Strategy.objects.get(pk=strategy.pk)
    new_secret = sources.strategy_rotate_secret(strategy=strategy)
    sources.strategy_save(
        owner=strategy.owner, name="Renamed", account_ids=[], strategy=read_for_the_edit, take_profit=Decimal("2")
    )
    row = Strategy.objects.get(pk=strategy.pk)
    assert row.webhook_secret_hash == hashlib.sha256(new_secret.encode()).hexdigest()
    assert (row.name, row.take_profit, row.stop_loss) == ("Renamed", Decimal("2"), Decimal("1"))


def test_a_signal_places_on_each_account_and_a_replay_places_nothing(trader, strategy, instruments):
    second = make_broker_account(trader, broker="paper", client_id="SIG2", copy_multiplier=Decimal("3"))
    strategy.accounts.add(second)
    signal, replayed = sources.strategy_signal(
        strategy=strategy, actor=trader, signal_id="s-1", via="api", instrument=instrument(), side="BUY", quantity=2
    )
    assert replayed is False
    assert sorted(r["quantity"] for r in signal.results) == [2, 6]
    assert Order.objects.filter(strategy=strategy, source="strategy").count() == 2
    again, replayed = sources.strategy_signal(
        strategy=strategy, actor=trader, signal_id="s-1", via="api", instrument=instrument(), side="BUY", quantity=2
    )
    assert replayed is True and again.pk == signal.pk
    assert PaperOrder.objects.count() == 2


def test_a_signal_repeated_after_its_strategy_was_paused_answers_what_it_placed(trader, strategy, instruments):
    """A client's retry of a signal placed before the pause (its answer was lost) is told what the
    signal placed, not "paused" as if it had placed nothing; a new signal is refused."""
    signal = {"via": "api", "instrument": instrument(), "side": "BUY", "quantity": 2}
    placed, _ = sources.strategy_signal(strategy=strategy, actor=trader, signal_id="s-1", **signal)
    sources.strategy_change(owner=trader, strategy=strategy, is_active=False)
    strategy.refresh_from_db()
    again, replayed = sources.strategy_signal(strategy=strategy, actor=trader, signal_id="s-1", **signal)
    assert replayed is True and again.results == placed.results and PaperOrder.objects.count() == 1
    with pytest.raises(ValidationError) as refused:
        sources.strategy_signal(strategy=strategy, actor=trader, signal_id="s-2", **signal)
    assert refused.value.message_dict == {"strategy": ["This strategy is paused."]}


def died_before_the_second_account(client, trader, strategy, **alert):
    """A second account on the strategy, and a first delivery of the alert that placed on the first
    and died (its worker lost) before the second: (first, second)."""
    first = strategy.accounts.get()
    second = make_broker_account(trader, broker="paper", client_id="SIG2")
    strategy.accounts.add(second)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services, "order_place", failing_on(second, WorkerLost))
        with pytest.raises(WorkerLost):
            webhook(client, strategy, **alert)
    return first, second


def test_a_signal_whose_first_request_died_is_placed_by_its_retry_once(client, trader, strategy):
    """The first delivery took the signal's id, placed on one account and died before the other (a
    worker restarted, a timeout): TradingView's retry places what is missing, not nothing and not
    the first account's order again."""

    _, second = died_before_the_second_account(client, trader, strategy)
    assert PaperOrder.objects.count() == 1
    retried = webhook(client, strategy)
    assert retried.json()["replayed"] is True
    assert sorted(row["account_id"] for row in retried.json()["results"]) == sorted(
        [strategy.accounts.first().pk, second.pk]
    )
    assert Order.objects.filter(strategy=strategy).count() == PaperOrder.objects.count() == 2
    assert webhook(client, strategy).json()["replayed"] is True
    assert PaperOrder.objects.count() == 2


def test_the_strategys_page_shows_the_orders_of_a_signal_whose_request_died_before_its_results(
    client, trader, strategy
):
    """The first delivery placed on one account and died before the other, before recording its
    results. The strategy's page listed the signal as "no results recorded yet", on every visit,
    while its order stood at the broker: read as nothing placed. It shows the orders the signal
    placed, as they are now, and that its results were not all recorded (a repeat places the rest)."""
    from django.urls import reverse

    first, _second = died_before_the_second_account(client, trader, strategy)
    order = Order.objects.get(strategy=strategy)
    client.force_login(trader)
    page = client.get(reverse("sources:strategy_detail", args=[strategy.pk])).content.decode()
    assert order.reference in page and "FILLED" in page
    assert "no results recorded yet" not in page and "not all recorded" in page


def test_an_account_a_dead_signal_never_reached_is_shown_not_sent_once_it_cannot_be_placing(client, trader, strategy):
    """The first delivery placed on one account and died before the other, before recording its
    results. The strategy's page showed the first's order and "not all recorded" for good: the
    account it never reached was not listed, and nothing ever finished the signal. Once its placement
    can no longer be running (its lock free, and long enough after it began), the dispatcher's sweep
    records that account not placed, with why, and the other as its order; neither a signal still
    placing nor a second sweep changes anything, and a repeat of the signal places that one, once."""
    from django.urls import reverse

    from orders import tasks
    from tradingplatform import locks

    first, second = died_before_the_second_account(client, trader, strategy)
    order = Order.objects.get(strategy=strategy)
    signal = StrategySignal.objects.get(strategy=strategy)
    later = timezone.now() + timedelta(seconds=sources.PLACEMENT_STALE_S + 1)

    assert sources.signals_finish() == 0  # too soon after it began, however free its lock
    lock = f"orders:placing-signal:{trader.pk}:{signal.pk}"
    token = locks.acquire(lock, ttl_s=60)  # a request of the signal still placing
    assert sources.signals_finish(now=later) == 0
    locks.release(lock, token)
    signal.refresh_from_db()
    assert signal.results == []

    stale = timezone.now() - timedelta(seconds=sources.PLACEMENT_STALE_S + 1)
    StrategySignal.objects.filter(pk=signal.pk).update(placing_since=stale)
    assert tasks.runs_finish() == 1
    assert sources.signals_finish(now=later) == 0  # a second sweep: nothing left to finish
    client.force_login(trader)
    page = client.get(reverse("sources:strategy_detail", args=[strategy.pk]))
    (shown,) = page.context["signals"]
    assert [(row["account_id"], row["status"], row.get("order_id")) for row in shown.rows] == [
        (first.pk, "FILLED", order.pk),
        (second.pk, "FAILED", None),
    ], shown.rows
    assert shown.rows[1]["error"] == sources.SIGNAL_NOT_SENT
    text = page.content.decode()
    assert second.label in text and "Not placed: the signal&#x27;s placement stopped" in text
    assert "not all recorded" not in text
    assert PaperOrder.objects.count() == 1  # nothing sent by the sweep

    retried = webhook(client, strategy)
    assert retried.json()["replayed"] is True
    assert {row["account_id"]: row["status"] for row in retried.json()["results"]} == {
        first.pk: "FILLED",
        second.pk: "FILLED",
    }
    webhook(client, strategy)
    assert Order.objects.filter(strategy=strategy).count() == PaperOrder.objects.count() == 2


def test_the_sweep_never_shows_not_sent_an_account_whose_order_a_dead_signal_wrote(client, trader, strategy):
    """The request wrote the second account's order (with its key) and died before sending it to
    its broker: that account is its order, left to the order's own path, not "not sent"."""
    first = strategy.accounts.get()
    second = make_broker_account(trader, broker="paper", client_id="SIG2")
    strategy.accounts.add(second)
    submit = services.order_submit

    def dies_before_sending_the_second(*, order, **kwargs):
        if order.account_id == second.pk:
            raise WorkerLost
        return submit(order=order, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services, "order_submit", dies_before_sending_the_second)
        with pytest.raises(WorkerLost):
            webhook(client, strategy)
    written = Order.objects.get(account=second)
    StrategySignal.objects.update(placing_since=timezone.now() - timedelta(seconds=sources.PLACEMENT_STALE_S + 1))

    assert sources.signals_finish() == 0
    signal = StrategySignal.objects.get()
    assert signal.placing_since is None
    assert [(row["account_id"], row.get("order_id")) for row in signal.results] == [
        (first.pk, Order.objects.get(account=first).pk),
        (second.pk, written.pk),
    ]
    assert all("error" not in row for row in signal.results)


def test_the_sweep_shows_a_copy_below_one_lot_as_below_one_lot_not_as_not_sent(client, trader, strategy):
    """The request placed on the first account and died at the third; the second's copy was below one
    lot after its multiplier (never an order: the request would have answered so). The sweep recorded
    it "Not placed: ... Sending the signal again with its id places it", which no repeat does. It is
    recorded as the request records it, below one lot; the copy it never reached, not sent."""
    first = strategy.accounts.get()
    small = make_broker_account(trader, broker="paper", client_id="SIG-HALF", copy_multiplier=Decimal("0.5"))
    third = make_broker_account(trader, broker="paper", client_id="SIG3")
    strategy.accounts.add(small, third)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services, "order_place", failing_on(third, WorkerLost))
        with pytest.raises(WorkerLost):
            webhook(client, strategy)
    StrategySignal.objects.update(placing_since=timezone.now() - timedelta(seconds=sources.PLACEMENT_STALE_S + 1))

    assert sources.signals_finish() == 1  # the third only
    rows = {row["account_id"]: row for row in StrategySignal.objects.get().results}
    assert rows[first.pk]["order_id"] == Order.objects.get(account=first).pk
    assert rows[small.pk]["status"] == "INVALID" and rows[small.pk]["quantity"] == 0, rows[small.pk]
    assert rows[small.pk]["error"].startswith("Below one lot on") and "order_id" not in rows[small.pk]
    assert rows[third.pk]["status"] == "FAILED" and rows[third.pk]["error"] == sources.SIGNAL_NOT_SENT
    # A repeat places the copy never sent, and answers the one below a lot as before.
    retried = {row["account_id"]: row for row in webhook(client, strategy).json()["results"]}
    assert retried[third.pk]["status"] == "FILLED" and retried[small.pk]["status"] == "INVALID"
    assert Order.objects.filter(strategy=strategy).count() == PaperOrder.objects.count() == 2


def test_a_retry_of_a_signal_whose_first_request_died_after_a_pause_answers_what_it_placed(client, trader, strategy):
    """The first delivery placed on one account and died before the other; the trader then paused
    the strategy. The retry was refused, 422 "This strategy is paused.", naming no order, while the
    first account's order stood at its broker: the client read it as nothing placed. It answers
    what the signal placed (replayed) and the copy the pause kept from being placed, and places
    nothing more."""
    first, second = died_before_the_second_account(client, trader, strategy)
    sources.strategy_change(owner=trader, strategy=strategy, is_active=False)

    retried = webhook(client, strategy)
    assert retried.status_code == 200, retried.json()
    assert retried.json()["replayed"] is True
    answers = {row["account_id"]: row for row in retried.json()["results"]}
    assert answers[first.pk]["status"] == "FILLED" and answers[first.pk]["order_id"] == Order.objects.get().pk
    assert answers[second.pk]["status"] == "FAILED" and "paused" in answers[second.pk]["error"]
    assert PaperOrder.objects.count() == 1
    # Live again, a retry places the copy the pause held back, and only it.
    sources.strategy_change(owner=trader, strategy=strategy, is_active=True)
    again = {row["account_id"]: row["status"] for row in webhook(client, strategy).json()["results"]}
    assert again == {first.pk: "FILLED", second.pk: "FILLED"}
    assert Order.objects.filter(strategy=strategy).count() == PaperOrder.objects.count() == 2
    # A new signal on a paused strategy is still refused, as before.
    sources.strategy_change(owner=trader, strategy=strategy, is_active=False)
    assert webhook(client, strategy, id="tv-new").json()["error"]["field"] == "strategy"


class WorkerLost(BaseException):
    """The request's process stopped in the middle (killed, restarted): nothing after it runs."""


def failing_on(account, error, place=services.order_place):
    """``order_place`` that raises ``error`` for ``account``'s order and places the others."""

    def order_place(**order):
        if order["account"].pk == account.pk:
            raise error
        return place(**order)

    return order_place


def test_an_error_on_one_account_still_answers_and_records_the_others_and_its_repeat_places_it(
    client, trader, strategy, monkeypatch
):
    """One account's placement raised something unexpected (a bug, a lost connection): the signal
    is answered with every account's result and recorded (TradingView does not retry, and a 500
    would leave the strategy's page without the order that was placed), that account's saying it
    was not placed; a repeat of the signal places it, and only it."""
    first = strategy.accounts.get()
    second = make_broker_account(trader, broker="paper", client_id="SIG2")
    strategy.accounts.add(second)
    real = services.order_place

    monkeypatch.setattr(services, "order_place", failing_on(second, RuntimeError("lost the database connection")))
    response = webhook(client, strategy)
    assert response.status_code == 201
    answers = {row["account_id"]: row for row in response.json()["results"]}
    assert (answers[first.pk]["status"], answers[second.pk]["status"]) == ("FILLED", "FAILED")
    assert answers[second.pk]["error"].startswith("Not placed")
    assert StrategySignal.objects.get(strategy=strategy).results == response.json()["results"]
    assert PaperOrder.objects.count() == 1

    monkeypatch.setattr(services, "order_place", real)
    retried = webhook(client, strategy)
    assert retried.json()["replayed"] is True
    answers = {row["account_id"]: row for row in retried.json()["results"]}
    assert (answers[first.pk]["status"], answers[second.pk]["status"]) == ("FILLED", "FILLED")
    assert Order.objects.filter(strategy=strategy).count() == PaperOrder.objects.count() == 2
    assert StrategySignal.objects.get(strategy=strategy).results == retried.json()["results"]
    assert webhook(client, strategy).json()["results"] == retried.json()["results"]
    assert PaperOrder.objects.count() == 2


def webhook(client, strategy, **overrides):
    payload = {
        "secret": strategy.secret,
        "id": "tv-1",
        "timestamp": clock.time(),
        "symbol": "NSE:INFY",
        "side": "buy",
        "quantity": 1,
    }
    payload.update(overrides)
    return client.post(f"/hooks/strategies/{strategy.pk}/", json.dumps(payload), content_type="application/json")


def test_webhook_places_once_and_refuses_forgeries_and_replays(client, strategy):
    response = webhook(client, strategy)
    assert response.status_code == 201 and response.json()["results"][0]["status"] == "FILLED"
    assert webhook(client, strategy).json()["replayed"] is True
    assert webhook(client, strategy, id="tv-2", secret="whsec_wrong").status_code == 403
    assert webhook(client, strategy, id="tv-3", timestamp=clock.time() - 3600).status_code == 403
    assert webhook(client, strategy, id="tv-4", timestamp="soon").status_code == 422
    assert (
        client.post(f"/hooks/strategies/{strategy.pk}/", "nonsense", content_type="application/json").status_code == 400
    )
    nested = client.post(f"/hooks/strategies/{strategy.pk}/", "[" * 100_000, content_type="application/json")
    assert nested.status_code == 400 and nested.json()["error"]["code"] == "invalid"
    assert client.get(f"/hooks/strategies/{strategy.pk}/").status_code == 405
    assert PaperOrder.objects.count() == 1


def test_refused_alerts_are_counted_on_the_strategys_page_with_the_last_ones_reason(client, trader, strategy):
    """An alert refused (a wrong secret, a paused strategy...) left no trace: only the sender saw
    the answer, and a trader whose TradingView alerts placed nothing could not tell why. The
    strategy's page shows how many were refused and the last one's time and reason: the owner is
    told the secret was wrong (the sender only "forbidden"), a row that does not grow with what an
    unauthenticated sender sends, and never the secret sent."""
    from django.urls import reverse

    wrong = "whsec_not-the-secret-0123456789"
    for number in range(3):
        assert webhook(client, strategy, id=f"bad-{number}", secret=wrong).status_code == 403
    strategy.refresh_from_db()
    assert strategy.alerts_refused == 3 and strategy.alert_refused_reason == "wrong secret"
    assert strategy.alert_refused_at is not None
    assert not StrategySignal.objects.exists()
    # Refused by the signal's rules (422 naming the field) or as paused: the last one's reason.
    assert webhook(client, strategy, id="x1", symbol="NSE:NOPE").status_code == 422
    Strategy.objects.filter(pk=strategy.pk).update(is_active=False)
    assert webhook(client, strategy, id="x2").status_code == 422
    assert webhook(client, strategy, id="x3").status_code == 422  # counted, not a row each
    assert client.get(f"/hooks/strategies/{strategy.pk}/").status_code == 405  # no alert: not counted
    strategy.refresh_from_db()
    assert strategy.alerts_refused == 6 and strategy.alert_refused_reason == "strategy: This strategy is paused."
    assert wrong not in str(Strategy.objects.filter(pk=strategy.pk).values().get())

    client.force_login(trader)
    page = client.get(reverse("sources:strategy_detail", args=[strategy.pk])).content.decode()
    refused = page.split('id="alerts-refused"')[1].split("</p>")[0]
    assert "Alerts refused: 6" in refused and "This strategy is paused." in refused and wrong not in page


def test_a_refused_alert_before_its_secret_is_read_stores_no_text_of_the_sender(client, trader, strategy):
    """A body whose JSON repeats a key is refused before its secret is read: anyone may send it.
    Its reason, kept on the strategy and shown on its owner's page, quoted the repeated key as the
    sender wrote it: an unauthenticated sender wrote text of their own (up to 200 characters) on the
    owner's page. It is counted with our reason alone; the sender's answer is as it was."""
    from django.urls import reverse

    planted = "Your account is locked: call +1 555 0100 now"
    body = '{"secret": "whsec_not-it", "' + planted + '": 1, "' + planted + '": 2}'
    response = client.post(f"/hooks/strategies/{strategy.pk}/", body, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"
    assert planted in response.json()["error"]["message"]  # the sender is still told which key
    strategy.refresh_from_db()
    assert strategy.alerts_refused == 1 and strategy.alert_refused_reason
    assert planted not in strategy.alert_refused_reason, strategy.alert_refused_reason
    client.force_login(trader)
    page = client.get(reverse("sources:strategy_detail", args=[strategy.pk])).content.decode()
    assert "Alerts refused: 1" in page and "call +1 555" not in page


def test_a_replayed_signal_answers_its_orders_as_they_are_now(client, trader, strategy):
    """A LIMIT entry rested OPEN and was cancelled since; the alert's retry (or the CLI's command
    repeated to find out what the signal did) was answered "OPEN", the status recorded when it was
    first placed, as if the entry were still working at the exchange. A replay answers each order
    as it is now (as a basket placement's repeat, and the strategy's page, do), and places nothing."""
    alert = {"order_type": "LIMIT", "price": "1400"}
    first = webhook(client, strategy, **alert)
    assert first.status_code == 201 and first.json()["results"][0]["status"] == "OPEN", first.json()
    order = Order.objects.get(strategy=strategy)
    services.order_cancel(order=order, actor=trader, cause="test")

    again = webhook(client, strategy, **alert)
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert [(row["order_id"], row["status"]) for row in again.json()["results"]] == [(order.pk, "CANCELLED")]
    assert PaperOrder.objects.count() == 1


def test_a_used_id_sent_with_another_signal_is_refused_and_places_nothing(client, strategy):
    """An alert that sends one fixed id for every signal: the first places, a true repeat answers
    with its results, and a different signal under that id is refused, saying so (409 on the id),
    not answered with the first one's results as though it had been placed."""
    assert webhook(client, strategy).status_code == 201
    assert webhook(client, strategy, side="BUY").json()["replayed"] is True  # the same signal
    for other in ({"side": "sell"}, {"quantity": 2}, {"symbol": "NSE:TCS"}, {"quantity": 1.5}):
        refused = webhook(client, strategy, **other)
        assert refused.status_code == 409, other
        assert refused.json()["error"]["code"] == "conflict" and refused.json()["error"]["field"] == "id"
        assert "already used for a different signal" in refused.json()["error"]["message"]
    assert PaperOrder.objects.count() == 1


def test_a_used_id_sent_by_a_later_alert_with_the_same_terms_is_refused_not_answered_as_replayed(client, strategy):
    """TradingView's {{strategy.order.id}} is the entry's name ("Long"): every long entry of a
    strategy sends the same id, and with a fixed quantity the same terms. The alert an hour after
    the first was answered "replayed" with the first one's results and placed nothing, a lost
    entry, though its timestamp says it was made long after the first was received: no delivery
    of that first alert. It is refused as the id's reuse (409); a resend within the alert window
    is still a replay, and a resend of the first body later is refused as stale (403)."""
    first_sent = clock.time()
    assert webhook(client, strategy, id="Long", timestamp=first_sent).status_code == 201
    assert webhook(client, strategy, id="Long", timestamp=first_sent + 5).json()["replayed"] is True

    an_hour_ago = timezone.now() - timedelta(hours=1)
    StrategySignal.objects.filter(strategy=strategy, signal_id="Long").update(received_at=an_hour_ago)
    refused = webhook(client, strategy, id="Long")
    assert refused.status_code == 409, refused.json()
    assert refused.json()["error"]["field"] == "id" and refused.json()["error"]["code"] == "conflict"
    assert webhook(client, strategy, id="Long", timestamp=first_sent - 3600).status_code == 403
    assert PaperOrder.objects.count() == 1
    assert webhook(client, strategy, id="Long-2").status_code == 201


def test_webhook_for_a_paused_strategy_or_unknown_symbol(client, strategy):
    assert webhook(client, strategy, id="x1", symbol="NSE:NOPE").json()["error"]["field"] == "symbol"
    strategy.is_active = False
    strategy.save()
    assert webhook(client, strategy, id="x2").json()["error"]["field"] == "strategy"
    assert not PaperOrder.objects.exists()


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"quantity": 10**30}, "quantity"),  # was a 500 that used up the id
        ({"quantity": 1.9}, "quantity"),  # was cut to 1 and filled
        ({"quantity": True}, "quantity"),
        ({"order_type": "LIMIT", "price": "1e20"}, "price"),
        ({"order_type": "LIMIT", "price": "1400.05"}, "price"),  # not a tick multiple
        ({"side": "HOLD"}, "side"),
        ({"id": ["x"]}, "id"),
        ({"timestamp": 10**400}, "timestamp"),  # a whole number too large for a float
        ({"order_type": "LIMIT", "price": "1e999999999"}, "price"),  # beyond what Decimal arithmetic takes
        ({"order_type": "SL-M", "trigger_price": "-1e999999999"}, "trigger_price"),
        # A field an alert does not take was dropped: an IOC order placed as DAY, a misspelt
        # product's CNC as MIS (squared off the same day). The API refuses them as well.
        ({"order_type": "LIMIT", "price": "1400", "validity": "IOC"}, "validity"),
        ({"prodcut": "CNC"}, "prodcut"),
        ({"side": "BUY", "action": "sell"}, "side"),  # was placed as a BUY, the action unread
    ],
)
def test_a_refused_alert_names_its_field_and_leaves_its_id_free(client, strategy, overrides, field):
    from brokers.paper.models import PaperOrder

    refused = webhook(client, strategy, **overrides)
    assert refused.status_code == 422 and refused.json()["error"]["field"] == field
    assert not strategy.signals.exists() and not PaperOrder.objects.exists()
    assert webhook(client, strategy).status_code == 201  # the same id, corrected


@pytest.mark.parametrize("field, status", [("secret", 403), ("id", 422), ("symbol", 422)])
def test_an_alert_with_text_that_is_not_unicode_is_refused_not_a_500(client, strategy, field, status):
    """JSON may escape half a character ("\\ud800", a lone surrogate), which no text holds: in the
    secret, the id or the symbol it was a 500 (the hash or the database could not encode it), an
    error logged on every such request. A wrong secret (403) or the field named (422); the id stays free."""
    payload = {"secret": strategy.secret, "id": "tv-1", "timestamp": clock.time(), "symbol": "NSE:INFY",
               "side": "buy", "quantity": 1, field: "HALF"}  # fmt: skip
    raw = json.dumps(payload).replace('"HALF"', '"\\ud800"')
    refused = client.post(f"/hooks/strategies/{strategy.pk}/", raw, content_type="application/json")
    assert refused.status_code == status, refused.content
    if status == 422:
        assert refused.json()["error"]["field"] == field
    assert not strategy.signals.exists() and not PaperOrder.objects.exists()
    assert webhook(client, strategy).status_code == 201


def test_an_alerts_numbers_are_read_exactly_as_written(client, strategy):
    """Read through a float, 1400.0000000000001 became 1400.0 and was placed as a LIMIT at 1400.00,
    and a quantity of 1.0000000000000001 became 1: the API refuses both, and so does the webhook."""
    head = f'"secret": "{strategy.secret}", "id": "exact", "timestamp": {clock.time():.3f}, "symbol": "NSE:INFY"'
    for field, rest in (
        ("price", '"side": "BUY", "quantity": 1, "order_type": "LIMIT", "price": 1400.0000000000001'),
        ("quantity", '"side": "BUY", "quantity": 1.0000000000000001'),
    ):
        body = "{" + head + ", " + rest + "}"
        refused = client.post(f"/hooks/strategies/{strategy.pk}/", body, content_type="application/json")
        assert refused.status_code == 422 and refused.json()["error"]["field"] == field, refused.json()
    assert not Order.objects.exists()
    placed = client.post(f"/hooks/strategies/{strategy.pk}/", "{" + head + ', "side": "BUY", "quantity": 1}',
                         content_type="application/json")  # fmt: skip
    assert placed.status_code == 201  # a time with a fraction is still a time


def test_an_alert_that_says_a_field_twice_is_refused(client, strategy):
    """{"side": "buy", ..., "side": "sell"} placed a SELL (the last one read): which was meant is not
    ours to guess, and the API refuses such a body too."""
    body = json.dumps({"secret": strategy.secret, "id": "twice", "timestamp": clock.time(), "symbol": "NSE:INFY",
                       "side": "buy", "quantity": 1})[:-1] + ', "side": "sell"}'  # fmt: skip
    refused = client.post(f"/hooks/strategies/{strategy.pk}/", body, content_type="application/json")
    assert refused.status_code == 400 and "'side' appears more than once" in refused.json()["error"]["message"]
    assert not Order.objects.exists() and not strategy.signals.exists()


class Key(str):
    """A JSON key that counts how often it is compared."""

    compared = 0

    def __eq__(self, other):
        Key.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_an_alert_with_many_keys_said_twice_is_refused_at_once(client, strategy):
    """The repeated-key check named the key by counting each key over the whole body: a body of
    40,000 keys, one said twice, took minutes of a worker to refuse (2.5 MB one hours), and the
    webhook reads it before any secret is checked. Its work grows with the keys, not their square."""
    keys = ", ".join(f'"k{number}": 0' for number in range(40_000))
    body = "{" + keys + ', "k39999": 1}'
    refused = client.post(f"/hooks/strategies/{strategy.pk}/", body, content_type="application/json")
    assert refused.status_code == 400 and "'k39999' appears more than once" in refused.json()["error"]["message"]
    pairs = [(Key(f"k{number}"), 0) for number in range(2_000)] + [(Key("k1999"), 1)]
    Key.compared = 0
    with pytest.raises(RepeatedKey, match="'k1999'"):
        unique_keys(pairs)
    assert Key.compared < 10 * len(pairs)  # counting each key over the list: about 4 million


def test_an_oversized_alert_is_413_in_the_error_shape(client, strategy, settings, caplog):
    """An alert over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` was answered with Django's HTML "Bad Request
    (400)" page, saying nothing of why, and logged as an error with its traceback: the JSON error
    the webhook answers everything else with, 413 as the API's, saying how large a body may be."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    refused = webhook(client, strategy, symbol="NSE:INFY" + " " * 2000)
    assert refused.status_code == 413 and refused["Content-Type"] == "application/json"
    assert refused.json()["error"] == {
        "code": "payload_too_large",
        "message": "The body is too large: at most 1000 bytes.",
        "field": None,
    }
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not strategy.signals.exists() and not PaperOrder.objects.exists()


def test_the_webhook_answers_other_methods_in_the_error_shape(client, strategy):
    response = client.get(f"/hooks/strategies/{strategy.pk}/")
    assert response.status_code == 405 and response["Allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.django_db(transaction=True)
def test_a_signal_replayed_while_its_first_request_places_answers_with_its_results(trader, instruments):
    import threading

    from django.db import connection

    from accounts import services as account_services
    from accounts.tests.factories import make_broker_account
    from brokers.paper.models import PaperClient

    account = make_broker_account(trader, broker="paper", client_id="PAPER-S9")
    account_services.broker_account_update(account=account, actor=trader)
    PaperClient.objects.filter(user_id=account.client_id).update(latency_ms=600)
    strategy, _ = sources.strategy_save(owner=trader, name="Slow", account_ids=[account.pk])
    signal = {"instrument": instrument(), "side": "BUY", "quantity": 1}

    def send():
        try:
            sources.strategy_signal(strategy=strategy, actor=trader, signal_id="s-1", via="api", **signal)
        finally:
            connection.close()

    thread = threading.Thread(target=send)
    thread.start()
    deadline = clock.monotonic() + 10
    while not strategy.signals.exists() and clock.monotonic() < deadline:
        clock.sleep(0.01)
    again, replayed = sources.strategy_signal(strategy=strategy, actor=trader, signal_id="s-1", via="api", **signal)
    thread.join()
    assert replayed and [row["status"] for row in again.results] == ["FILLED"]


def test_an_every_trading_day_order_skips_the_exchanges_holidays(trader, account, settings):
    """An exchange holiday (``EXCHANGE_HOLIDAYS``) is no trading day: an every-trading-day order
    does not fire on it (its order would go to a shut exchange), but on the next trading day."""
    settings.EXCHANGE_HOLIDAYS = frozenset({"2026-11-23", "2026-11-24"})  # a Monday and Tuesday
    row = make_scheduled(trader, account, recurrence="trading_days", run_on=None, time_of_day=time(9, 30))
    saturday = datetime(2026, 11, 21, 12, 0, tzinfo=IST)
    assert sources.next_occurrence(row, saturday) == datetime(2026, 11, 25, 9, 30, tzinfo=IST)
    # A trader in New York: 23:00 on Sunday there is Monday morning in India, a holiday.
    york = ZoneInfo("America/New_York")
    row.timezone, row.time_of_day = "America/New_York", time(23, 0)
    assert sources.next_occurrence(row, saturday) == datetime(2026, 11, 24, 23, 0, tzinfo=york)
    # Chosen weekdays are the trader's own days, holidays or not.
    row.timezone, row.time_of_day, row.recurrence, row.weekdays = "Asia/Kolkata", time(9, 30), "weekdays", [0]
    assert sources.next_occurrence(row, saturday) == datetime(2026, 11, 23, 9, 30, tzinfo=IST)


def test_a_retry_of_a_signal_whose_first_request_died_answers_what_it_placed_whatever_changed_since(
    client, trader, strategy
):
    """The first delivery placed on the first account and died before the second. Before the
    alert's retry, the trader doubled the first account's multiplier and took it off the strategy
    (a third was added). The retry answers the first account's order as it stands (its quantity
    then, not "already used for a different order", not left out: that order is the signal's, and
    an answer without it invites placing it again by hand), and places only what is missing."""
    first, second = died_before_the_second_account(client, trader, strategy, quantity=2)
    placed = Order.objects.get(strategy=strategy)
    assert (placed.account_id, placed.quantity) == (first.pk, 2)

    account_services.broker_account_update(account=first, actor=trader, copy_multiplier=Decimal("2"))
    sources.strategy_change(owner=trader, strategy=strategy, account_ids=[second.pk])
    retried = webhook(client, strategy, quantity=2)
    assert retried.status_code == 200 and retried.json()["replayed"] is True
    answers = {row["account_id"]: row for row in retried.json()["results"]}
    assert set(answers) == {first.pk, second.pk}
    assert (answers[first.pk]["order_id"], answers[first.pk]["status"], answers[first.pk]["quantity"]) == (
        placed.pk,
        "FILLED",
        2,
    )
    assert answers[second.pk]["status"] == "FILLED"
    assert Order.objects.filter(strategy=strategy).count() == PaperOrder.objects.count() == 2


def test_a_retry_of_a_signal_with_a_copy_failed_at_its_broker_is_a_replay_whatever_changed_since(
    client, trader, strategy
):
    """One of the strategy's accounts is disconnected: its copy of every signal FAILED at its broker
    ("reconnect the account"), its order written under the signal's key. The alert's retry (its
    answer lost) came after the exchange revised the lot size: it was checked again as a new signal
    and refused, 422 on quantity, though the signal's orders stand, inviting it to be sent again
    under a new id and placed twice. A copy whose order was written is that order: answered, as a
    retry of a signal whose copies were all placed is."""
    from accounts.tests.factories import make_kite_account
    from brokers import selectors
    from brokers.models import Instrument

    make_kite_account(trader, client_id="KT-OFF", label="Kite")  # never connected
    strategy.accounts.add(*trader.broker_accounts.filter(client_id="KT-OFF"))
    signal = {"id": "nifty-1", "symbol": "NFO:NIFTY26DECFUT", "quantity": 75}
    first = webhook(client, strategy, **signal)
    assert first.status_code == 201, first.json()
    # The paper account's funds are short of a NIFTY lot: its broker's answer, as final as a fill.
    assert [row["status"] for row in first.json()["results"]] == ["REJECTED", "FAILED"]
    Instrument.objects.filter(exchange="NFO", tradingsymbol="NIFTY26DECFUT").update(lot_size=65)
    selectors.instruments_changed()

    retry = webhook(client, strategy, **signal)
    assert retry.status_code == 200, retry.json()
    assert retry.json()["replayed"] is True and retry.json()["results"] == first.json()["results"]
    assert Order.objects.filter(strategy=strategy).count() == 2 and PaperOrder.objects.count() == 1


def test_a_retry_of_a_signal_whose_first_request_died_after_a_lot_revision_answers_what_it_placed(
    client, trader, strategy
):
    """The first delivery placed on the first account and died before the second; the exchange then
    revised the lot size. The retry was checked again as a new signal and refused, 422 on quantity,
    as if nothing had been placed: sent again under a new id, the first account's order would be
    placed twice. The retry answers that order, and the copy it has still to place is refused on
    its own account, saying why."""
    from brokers import selectors
    from brokers.models import Instrument

    signal = {"id": "nifty-1", "symbol": "NFO:NIFTY26DECFUT", "quantity": 75}
    first, second = died_before_the_second_account(client, trader, strategy, **signal)
    placed = Order.objects.get(strategy=strategy)
    Instrument.objects.filter(exchange="NFO", tradingsymbol="NIFTY26DECFUT").update(lot_size=65)
    selectors.instruments_changed()

    retry = webhook(client, strategy, **signal)
    assert retry.status_code == 200, retry.json()
    answers = {row["account_id"]: row for row in retry.json()["results"]}
    assert retry.json()["replayed"] is True and answers[first.pk]["order_id"] == placed.pk
    assert answers[second.pk]["status"] == "INVALID" and "lot size, 65" in answers[second.pk]["error"]
    assert Order.objects.filter(strategy=strategy).count() == PaperOrder.objects.count() == 1


def test_a_holiday_declared_after_the_next_run_was_set_is_not_fired(trader, account, settings):
    """The next run was set for a Monday before that Monday was declared a holiday (the setting
    changed with a deploy): the dispatcher does not fire it, and moves on to the next trading day."""
    row = make_scheduled(trader, account, recurrence="trading_days", run_on=None, time_of_day=time(9, 30))
    monday = datetime(2026, 11, 23, 9, 30, tzinfo=IST)
    ScheduledOrder.objects.filter(pk=row.pk).update(next_run_at=monday)
    settings.EXCHANGE_HOLIDAYS = frozenset({"2026-11-23"})
    assert sources.scheduled_claim_due(now=monday + timedelta(seconds=1)) == []
    assert not ScheduledFire.objects.filter(scheduled=row).exists()
    row.refresh_from_db()
    assert (row.status, row.next_run_at) == ("active", datetime(2026, 11, 24, 9, 30, tzinfo=IST))


@pytest.mark.django_db(transaction=True)
def test_a_repeat_of_a_placement_after_an_item_was_put_in_front_places_nothing_twice(trader, account, instruments):
    """A client's retry of a placement (the CLI's key run again) after an item was put at the top of
    the basket: the placement's items moved down a place, and its retry took the last of them, already
    placed, for an item it had not placed, and placed it again (and never the new one, which it was
    not asked for either). A retry places what its placement asked for and had not placed, nothing
    else, as the accounts it places on are those of its first request."""
    items = [spec(quantity=1), spec("TCS", quantity=1)]
    basket = sources.basket_save(owner=trader, name="Morning", account_ids=[account.pk], items=items)
    first = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    basket = sources.basket_save(
        owner=trader, name="Morning", account_ids=[account.pk], items=[spec("SBIN", quantity=1), *items], basket=basket
    )
    again = sources.basket_place(basket=basket, actor=trader, run_token="t1")
    assert [(r["order_id"], r["symbol"]) for r in again] == [(r["order_id"], r["symbol"]) for r in first]
    assert sorted(PaperOrder.objects.values_list("instrument__tradingsymbol", flat=True)) == ["INFY", "TCS"]


def test_a_scheduled_order_whose_run_comes_after_its_contract_expires_is_refused(trader, account):
    """A one-off for the day after the future expires, or an every-trading-day order saved on its
    last trading day once that day's time has gone by: the schedule was taken ("next run ..."), and
    at its time the order could only fail on the expired contract. It is refused when saved, naming
    the field, and nothing is written."""
    future = instrument("NIFTY26DECFUT", "NFO")
    order = spec(instrument=future, quantity=future.lot_size, product="NRML")
    once = dict(recurrence="once", run_on=future.expiry + timedelta(days=1), time_of_day=time(9, 30))
    with pytest.raises(ValidationError) as error:
        sources.scheduled_save(owner=trader, account=account, spec=order, timezone_name="Asia/Kolkata", **once)
    assert f"expires on {future.expiry:%Y-%m-%d}" in error.value.message_dict["run_on"][0]
    Instrument.objects.filter(pk=future.pk).update(expiry=timezone.now().astimezone(IST).date())
    future.refresh_from_db()
    daily = dict(recurrence="trading_days", time_of_day=time(0, 0))  # today's has gone by
    with pytest.raises(ValidationError) as error:
        sources.scheduled_save(
            owner=trader, account=account, spec={**order, "instrument": future}, timezone_name="Asia/Kolkata", **daily
        )
    assert f"expires on {future.expiry:%Y-%m-%d}" in error.value.message_dict["instrument"][0]
    assert not ScheduledOrder.objects.exists()


def test_a_recurring_order_ends_with_its_contracts_last_run_said_once(trader, account, monkeypatch):
    """Its contract expired while it was active: every trading day after, a run failed on the
    expired contract with a notice, for ever, and the order showed Active with a next run that
    could never place. Its last run before the expiry is claimed and the order ends then, said once."""
    notices = []
    monkeypatch.setattr(sources, "_notify", lambda scheduled, text: notices.append(text))
    future = instrument("NIFTY26DECFUT", "NFO")
    soon = timezone.now().astimezone(IST) + timedelta(minutes=5)
    row = sources.scheduled_save(
        owner=trader,
        account=account,
        spec=spec(instrument=future, quantity=future.lot_size, product="NRML"),
        recurrence="trading_days",
        time_of_day=soon.time().replace(microsecond=0),
        timezone_name="Asia/Kolkata",
    )
    last_day = row.next_run_at.astimezone(IST).date()
    Instrument.objects.filter(pk=future.pk).update(expiry=last_day)  # its run due next is its last
    [fire] = sources.scheduled_claim_due(now=row.next_run_at + timedelta(milliseconds=300))
    row.refresh_from_db()
    assert ScheduledFire.objects.get(pk=fire).status == "pending"  # the last run is placed
    assert (row.status, row.next_run_at) == ("done", None)
    assert notices == [f"Scheduled order #{row.pk} has ended: its contract expired on {last_day:%Y-%m-%d}."]


def test_a_run_late_within_its_grace_across_midnight_is_placed_not_given_to_the_next_days_run(trader, account):
    """A daily order at 23:58 with a 10-minute grace; the dispatcher comes back 3 minutes late,
    after midnight. The run was within its grace, and the next one is a day away: it is placed, not
    reported missed because the next run (tonight's) falls on the day it is placed."""
    day = timezone.now().astimezone(IST).date() + timedelta(days=2)
    due = datetime.combine(day, time(23, 58), tzinfo=IST)
    daily = dict(recurrence="weekdays", weekdays=list(range(7)), run_on=None, grace_s=600)
    row = make_scheduled(trader, account, time_of_day=time(23, 58), **daily)
    ScheduledOrder.objects.filter(pk=row.pk).update(next_run_at=due)
    claimed = sources.scheduled_claim_due(now=due + timedelta(minutes=3))
    fire = ScheduledFire.objects.get(scheduled=row, due_at=due)
    assert (fire.status, fire.detail) == ("pending", "")
    assert claimed == [fire.pk]


@pytest.mark.parametrize("what", ["basket", "signal"])
def test_a_placement_whose_lock_redis_cannot_take_still_places_each_order_once(
    trader, account, strategy, instruments, monkeypatch, caplog, what
):
    """A basket's run and a strategy signal hold a lock while they place (for the sweep of ones whose
    process ended). Redis unreachable for it failed the whole request with nothing said (a 500): the
    placement goes on without it, each order placed once, as a repeat of it (its keys) proves."""
    import redis

    from tradingplatform import locks

    acquire = locks.acquire

    def away(name, *, ttl_s):  # for the placement's own lock; the order path's locks as they are
        if name.startswith("orders:placing-"):
            raise redis.ConnectionError("Error 111 connecting to redis:6379. Connection refused.")
        return acquire(name, ttl_s=ttl_s)

    monkeypatch.setattr(locks, "acquire", away)
    if what == "basket":
        items = [{"instrument": instrument(), "side": "BUY", "quantity": 1}]
        basket = sources.basket_save(owner=trader, name="One", account_ids=[account.pk], items=items)
        results = sources.basket_place(basket=basket, actor=trader, run_token="t-1")
        again = sources.basket_place(basket=basket, actor=trader, run_token="t-1")
    else:
        signal = {"via": "api", "instrument": instrument(), "side": "BUY", "quantity": 1}
        results = sources.strategy_signal(strategy=strategy, actor=trader, signal_id="s-1", **signal)[0].results
        again = sources.strategy_signal(strategy=strategy, actor=trader, signal_id="s-1", **signal)[0].results
    assert [row["status"] for row in results] in (["SUBMITTED"], ["FILLED"]) and results[0]["order_id"], results
    assert [row["order_id"] for row in again] == [row["order_id"] for row in results]
    assert PaperOrder.objects.count() == Order.objects.count() == 1
    assert "Redis cannot be asked" in caplog.text
