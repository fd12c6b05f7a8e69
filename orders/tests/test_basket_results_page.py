"""A basket's results page: every row shown with why, whatever happened to the placement or the basket."""

from decimal import Decimal

import pytest
from django.urls import reverse

from accounts.tests.factories import make_broker_account
from brokers.base import Status
from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperOrder
from orders import services, sources
from orders.models import Basket, Order
from orders.tests.factories import broker_state, instrument, placed_then_database_lost


def one_share_basket(trader, name, accounts):
    """A basket buying one INFY on each of ``accounts``."""
    items = [{"instrument": instrument(), "side": "BUY", "quantity": 1}]
    return sources.basket_save(owner=trader, name=name, account_ids=[a.pk for a in accounts], items=items)


def test_a_row_below_one_lot_after_the_multiplier_is_shown_with_why(trader_client, trader, account):
    half = make_broker_account(trader, broker="paper", client_id="HALF", label="Half", copy_multiplier=Decimal("0.5"))
    basket = one_share_basket(trader, "Mixed", [account, half])
    placed = trader_client.post(reverse("sources:basket_detail", args=[basket.pk]), {"token": "t-1"})
    assert PaperOrder.objects.count() == 1  # placed on the first account, refused (0 shares) on "Half"
    assert placed.status_code == 200  # the results page, not a 500 after an order went to the broker
    assert "Below one lot on Half" in placed.content.decode()
    again = trader_client.get(reverse("sources:basket_detail", args=[basket.pk]))
    assert again.status_code == 200  # and on every later visit
    assert "Below one lot on Half" in again.content.decode()


def test_an_item_whose_broker_answer_was_lost_says_so_not_submitted(trader_client, trader, account):
    """One account's broker is down (the paper exchange's error knob: every call a 503, the look-up by
    tag too): whether its items reached it is not known. The row said SUBMITTED, in green, with no
    word, as though the broker had taken it (the ticket says the answer was lost); it says so now,
    and the order is left for its reconciliation to settle."""
    down = make_broker_account(trader, broker="paper", client_id="DOWN", label="Down")
    engine.client_get_or_create(user_id=down.client_id)
    PaperClient.objects.filter(user_id=down.client_id).update(error_rate=1)
    basket = one_share_basket(trader, "Two", [account, down])
    placed = trader_client.post(reverse("sources:basket_detail", args=[basket.pk]), {"token": "t-1"})
    results = {row["account"]: row for row in placed.context["results"]}
    assert results["Paper"]["status"] == "FILLED"
    lost = results["Down"]
    assert lost["status"] == "SUBMITTED" and "answer was lost" in (lost["reason"] or ""), lost
    page = placed.content.decode()
    assert '<span class="badge ok">SUBMITTED</span>' not in page and "answer was lost" in page


@pytest.mark.django_db(transaction=True)
def test_a_basket_deleted_while_it_is_placed_still_shows_what_was_placed(trader_client, trader, account, monkeypatch):
    """The trader deletes the basket in another tab while its item is being placed, after it went to
    the exchange. The page answered 500, hiding the order the broker has; it shows the item's result
    and says the basket is gone."""
    items = [{"instrument": instrument(), "side": "BUY", "quantity": 1}]
    basket = sources.basket_save(owner=trader, name="One", account_ids=[account.pk], items=items)
    place = services.order_place

    def placed_then_deleted(**order):
        placed = place(**order)
        Basket.objects.filter(pk=basket.pk).delete()
        return placed

    monkeypatch.setattr(services, "order_place", placed_then_deleted)
    placed = trader_client.post(reverse("sources:basket_detail", args=[basket.pk]), {"token": "t-1"})
    assert placed.status_code == 200, placed.status_code
    assert PaperOrder.objects.count() == 1
    page = placed.content.decode()
    assert Order.objects.get().reference in page and "was deleted" in page


@pytest.mark.parametrize(
    "status, badge",
    [("PARTIALLY_FILLED", "ok"), ("NEW", "warn"), ("UNKNOWN", "warn"), ("CANCELLED", "muted")],
)
def test_an_item_placed_or_maybe_placed_is_not_shown_as_an_error(trader_client, trader, account, status, badge):
    """A market item that filled in part on arrival is at its exchange, filling; one still NEW, or
    UNKNOWN, may be there (its sender stopped after sending it). Their badges were the red of a
    refused item, which tells the trader to place it again: a second order of the same item."""
    basket = one_share_basket(trader, "Open", [account])
    row = {"account_id": account.pk, "account": "Paper", "symbol": "INFY", "side": "BUY", "quantity": 1}
    Basket.objects.filter(pk=basket.pk).update(last_results=[{**row, "status": status}])
    page = trader_client.get(reverse("sources:basket_detail", args=[basket.pk])).content.decode()
    assert f'<span class="badge {badge}">{status}</span>' in page


def test_an_item_its_broker_refused_after_it_was_placed_is_shown_refused_not_open(trader_client, trader, account):
    """A limit item rests at its exchange (OPEN, in green); then its broker refuses it (an RMS check,
    a postback or a sync says REJECTED). The basket's page kept showing the answer of the moment it
    was placed, OPEN in green, on every later visit: the trader read it as working at the exchange.
    Each placed row shows its order as it is now, with why."""
    items = [{"instrument": instrument(), "side": "BUY", "quantity": 1, "order_type": "LIMIT", "price": "1400"}]
    basket = sources.basket_save(owner=trader, name="Resting", account_ids=[account.pk], items=items)
    placed = trader_client.post(reverse("sources:basket_detail", args=[basket.pk]), {"token": "t-1"})
    assert [row["status"] for row in placed.context["results"]] == ["OPEN"]
    order = Order.objects.get()
    refused = broker_state(order, status=Status.REJECTED, status_message="RMS: margin exceeds", pending_quantity=0)
    services.order_apply_broker_state(order, refused, cause="postback")
    assert Order.objects.get().status == Order.Status.REJECTED
    page = trader_client.get(reverse("sources:basket_detail", args=[basket.pk])).content.decode()
    assert '<span class="badge ok">OPEN</span>' not in page
    assert '<span class="badge error">REJECTED</span>' in page and "RMS: margin exceeds" in page


@pytest.mark.django_db(transaction=True)
def test_an_item_not_known_to_be_placed_shows_its_order_once_it_is_known(trader, account, monkeypatch):
    """The item reached the exchange; recording its answer lost the database connection, and so did
    the look for its order: its row says UNKNOWN, "see the order book". The order is there (its key
    wrote it; a sync settles it), FILLED, but the row had no order to read again, so the basket's page
    and the API's last_results said UNKNOWN on every later visit, a question the trader answers by
    placing it again. The row shows its order as it is now, as every placed row does."""
    from django.test import Client

    from accounts import services as account_services

    basket = one_share_basket(trader, "Lost", [account])
    placed_then_database_lost(monkeypatch)
    results = sources.basket_place(basket=basket, actor=trader, run_token="t-1")
    assert [row["status"] for row in results] == ["UNKNOWN"]
    order = Order.objects.get()
    assert order.status == Order.Status.FILLED and PaperOrder.objects.count() == 1

    client = Client()
    client.force_login(trader)
    page = client.get(reverse("sources:basket_detail", args=[basket.pk]))
    [row] = page.context["results"]
    assert (row["status"], row.get("order_id")) == ("FILLED", order.pk), row
    assert order.reference in page.content.decode() and "Not known whether" not in page.content.decode()
    _, secret = account_services.api_key_create(owner=trader, name="bot")
    answer = Client(HTTP_AUTHORIZATION=f"Bearer {secret}").get(f"/api/v1/baskets/{basket.pk}").json()
    [row] = answer["last_results"]
    assert (row["status"], row["order_id"], row["reference"], row["error"]) == (
        "FILLED",
        order.pk,
        order.reference,
        None,
    )


def test_an_item_off_its_lot_is_shown_with_its_own_quantity_not_one_cut_to_a_lot(trader_client, trader, account):
    """An item of 100 of a 75-lot future (a row from before the rules, a lot size revised since) is
    refused on each account for its lot. Its row showed the quantity cut down to whole lots after the
    account's multiplier, "BUY 75" (and "BUY 150" at 1.5) beside "Quantity must be a multiple of the
    lot size, 75.": a quantity that is one, which the trader never asked for. It shows the item's own
    quantity, the one at fault."""
    more = make_broker_account(trader, broker="paper", client_id="B15", label="More", copy_multiplier=Decimal("1.5"))
    future = instrument("NIFTY26DECFUT", "NFO")
    item = {"instrument": future, "side": "BUY", "quantity": 75, "product": "NRML"}
    basket = sources.basket_save(owner=trader, name="Futures", account_ids=[account.pk, more.pk], items=[item])
    basket.items.update(quantity=100)
    placed = trader_client.post(reverse("sources:basket_detail", args=[basket.pk]), {"token": "t-1"})
    rows = placed.context["results"]
    assert [(row["account"], row["quantity"], row["status"]) for row in rows] == [
        ("More", 100, "INVALID"),
        ("Paper", 100, "INVALID"),
    ], rows
    page = placed.content.decode()
    assert "BUY 100 NIFTY26DECFUT" in page and "BUY 75 NIFTY26DECFUT" not in page
    # The page's accounts say so before a Place, not that each gets whole lots of it.
    accounts = page.split('id="basket-accounts"')[1].split("</section>")[0]
    assert accounts.count("NIFTY26DECFUT: Quantity must be a multiple of the lot size, 75.") == 2
    assert not PaperOrder.objects.exists() and not Order.objects.exists()


def died_after_its_first_item(trader, account, monkeypatch) -> Basket:
    """A basket of two items (INFY, TCS) whose placement (run "t-1") stopped as its worker's end would
    stop it, after its first item went to the exchange and before the second was sent."""

    class Died(BaseException):  # as the worker's end: nothing after it runs
        pass

    items = [{"instrument": instrument(), "side": "BUY", "quantity": 1}, {"instrument": instrument("TCS")}]
    items[1].update(side="BUY", quantity=2)
    basket = sources.basket_save(owner=trader, name="Two", account_ids=[account.pk], items=items)
    place = services.order_place

    def second_dies(**order):
        if Order.objects.exists():
            raise Died
        return place(**order)

    with monkeypatch.context() as patched:
        patched.setattr(services, "order_place", second_dies)
        with pytest.raises(Died):
            sources.basket_place(basket=basket, actor=trader, run_token="t-1")
    return basket


def test_a_placement_that_stopped_half_way_shows_what_it_placed(trader_client, trader, account, monkeypatch):
    """The request placing a basket stops after its first item went to the exchange (its worker killed,
    a deploy), before it answered. The basket's page showed no results (or the placement before it),
    as though nothing had been placed, and the trader placed the basket again: the first item twice.
    Its rows are there from the start, each showing its order once its key wrote one; the item never
    reached says it may not have been placed, not that it failed."""

    basket = died_after_its_first_item(trader, account, monkeypatch)
    order = Order.objects.get()
    assert PaperOrder.objects.count() == 1 and order.status == Order.Status.FILLED
    page = trader_client.get(reverse("sources:basket_detail", args=[basket.pk]))
    rows = page.context["results"]
    assert [(row["symbol"], row["status"], row.get("order_id")) for row in rows] == [
        ("INFY", "FILLED", order.pk),
        ("TCS", "UNKNOWN", None),
    ], rows
    text = page.content.decode()
    assert order.reference in text and '<span class="badge warn">UNKNOWN</span>' in text
    assert "see the order book" in rows[1]["error"]


def test_an_item_its_dead_placement_never_sent_is_shown_not_placed_once_it_cannot_be_running(
    trader_client, trader, account, monkeypatch
):
    """The process placing a basket ends after its first item was placed, the second never sent.
    The second's row stayed UNKNOWN ("being placed") for good: no sweep ever finished it, and the
    trader could not tell it was never sent. Once its placement can no longer be running (its run's
    lock free, and long enough after it began) and no order was written under its key, the
    dispatcher's sweep shows it not placed with why; the placed item is left as its order is.
    Neither a run still placing nor a second sweep changes anything."""
    from datetime import timedelta

    from django.utils import timezone

    from orders import tasks
    from orders.models import BasketRun
    from tradingplatform import locks

    basket = died_after_its_first_item(trader, account, monkeypatch)
    order = Order.objects.get()
    later = timezone.now() + timedelta(seconds=sources.PLACEMENT_STALE_S + 1)

    # Too soon after it began: left as it is, however free its lock.
    assert sources.basket_runs_finish() == 0
    # Its lock held (a request of the run still placing): left as it is.
    lock = f"orders:placing-basket:{trader.pk}:t-1"
    token = locks.acquire(lock, ttl_s=60)
    assert sources.basket_runs_finish(now=later) == 0
    locks.release(lock, token)
    basket.refresh_from_db()
    assert [row["status"] for row in basket.last_results] == ["UNKNOWN", "UNKNOWN"]

    BasketRun.objects.update(created_at=timezone.now() - timedelta(seconds=sources.PLACEMENT_STALE_S + 1))
    assert tasks.runs_finish() == 1
    assert sources.basket_runs_finish(now=later) == 0  # a second sweep: nothing left to finish
    page = trader_client.get(reverse("sources:basket_detail", args=[basket.pk]))
    rows = page.context["results"]
    assert [(row["symbol"], row["status"], row.get("order_id")) for row in rows] == [
        ("INFY", "FILLED", order.pk),
        ("TCS", "FAILED", None),
    ], rows
    assert rows[1]["error"] == sources.NOT_SENT
    assert "Not placed: its placement stopped" in page.content.decode()
    assert PaperOrder.objects.count() == 1 and Order.objects.count() == 1  # nothing sent by the sweep

    # The API says the same; a repeat of the run places the item never sent, once.
    again = sources.basket_place(basket=basket, actor=trader, run_token="t-1")
    assert [(row["symbol"], row["status"]) for row in again] == [("INFY", "FILLED"), ("TCS", "FILLED")]
    assert Order.objects.count() == 2 and PaperOrder.objects.count() == 2
