"""Pages for baskets, scheduled orders and strategies."""

import hashlib
import uuid
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import services as account_services
from accounts.tests.factories import make_broker_account
from brokers.paper.models import PaperOrder
from orders import services, sources
from orders.models import Basket, Order, ScheduledFire, ScheduledOrder, Strategy
from orders.tests.factories import instrument


def basket_form(account, **overrides):
    data = {
        "name": "Open",
        "accounts": [account.pk],
        "items-TOTAL_FORMS": "2",
        "items-INITIAL_FORMS": "0",
        "items-MIN_NUM_FORMS": "0",
        "items-MAX_NUM_FORMS": "100",
        "items-0-instrument": "INFY",
        "items-0-side": "BUY",
        "items-0-quantity": "2",
        "items-0-order_type": "MARKET",
        "items-0-product": "MIS",
        "items-1-instrument": "NFO:NIFTY26DECFUT",
        "items-1-side": "SELL",
        "items-1-quantity": "75",
        "items-1-order_type": "LIMIT",
        "items-1-product": "NRML",
        "items-1-price": "26000",
    }
    data.update(overrides)
    return data


def test_build_place_and_see_results_of_a_basket(trader_client, trader, account):
    response = trader_client.post(reverse("sources:basket_create"), basket_form(account))
    assert response.status_code == 302
    basket = Basket.objects.get()
    assert [item.instrument.tradingsymbol for item in basket.items.all()] == ["INFY", "NIFTY26DECFUT"]
    page = trader_client.get(reverse("sources:basket_detail", args=[basket.pk])).content.decode()
    token = page.split('name="token" value="')[1].split('"')[0]
    placed = trader_client.post(reverse("sources:basket_detail", args=[basket.pk]), {"token": token})
    assert placed.status_code == 200 and "FILLED" in placed.content.decode()
    trader_client.post(reverse("sources:basket_detail", args=[basket.pk]), {"token": token})  # double click
    assert PaperOrder.objects.count() == 2
    assert basket.name in trader_client.get(reverse("sources:basket_list")).content.decode()


def test_basket_form_names_the_bad_item_field(trader_client, account):
    response = trader_client.post(
        reverse("sources:basket_create"), basket_form(account, **{"items-0-instrument": "NOPE"})
    )
    assert response.status_code == 200 and "No such instrument" in response.content.decode()
    assert not Basket.objects.exists()


def test_a_new_basket_saved_twice_is_one_basket_and_the_second_answer_is_the_firsts(trader_client, account):
    """A double-clicked Save basket: the second request's answer, the one the trader sees, said
    "You already have a basket with this name." of the basket the first click had just made. The
    same form sent again lands on that basket, as the first answer would have."""
    url, token = reverse("sources:basket_create"), str(uuid.uuid4())
    data = basket_form(account, token=token)
    first = trader_client.post(url, data)
    second = trader_client.post(url, data, follow=True)
    basket = Basket.objects.get()
    assert first.url == reverse("sources:basket_detail", args=[basket.pk])
    assert second.redirect_chain == [(first.url, 302)]
    assert sources.BASKET_NAME_TAKEN not in second.content.decode()
    # The same form with other items (Back, changed, sent): refused, with a fresh form to send.
    changed = trader_client.post(url, {**data, "items-0-quantity": "3"})
    assert "already used for a different basket" in changed.content.decode()
    assert changed.context["form"]["token"].value() != token
    assert [item.quantity for item in basket.items.all()] == [2, 75]
    # A new form (a new token) with the name taken is still "name taken".
    again = trader_client.post(url, {**data, "token": str(uuid.uuid4())})
    assert sources.BASKET_NAME_TAKEN in again.content.decode() and Basket.objects.count() == 1
    page = trader_client.get(url)  # each new form carries a token of its own
    assert f'name="token" value="{page.context["form"]["token"].value()}"' in page.content.decode()


def test_edit_and_delete_a_basket(trader_client, trader, account):
    basket = sources.basket_save(
        owner=trader,
        name="Old",
        account_ids=[account.pk],
        items=[{"instrument": instrument(), "side": "BUY", "quantity": 1}],
    )
    page = trader_client.get(reverse("sources:basket_edit", args=[basket.pk])).content.decode()
    assert 'value="INFY"' in page
    trader_client.post(reverse("sources:basket_edit", args=[basket.pk]), basket_form(account, name="New"))
    basket.refresh_from_db()
    assert basket.name == "New" and basket.items.count() == 2
    assert trader_client.get(reverse("sources:basket_delete", args=[basket.pk])).status_code == 405
    trader_client.post(reverse("sources:basket_delete", args=[basket.pk]))
    assert not Basket.objects.exists()


def test_an_account_deactivated_after_it_was_chosen_is_kept_and_one_not_chosen_is_refused_by_name(
    trader_client, trader, account
):
    spare = make_broker_account(trader, broker="paper", client_id="PAPER-SPARE", label="Spare")
    basket = sources.basket_save(
        owner=trader,
        name="Two",
        account_ids=[account.pk, spare.pk],
        items=[{"instrument": instrument(), "side": "BUY", "quantity": 1}],
    )
    strategy, _ = sources.strategy_save(owner=trader, name="Both", account_ids=[account.pk, spare.pk])
    spare.is_active = False
    spare.save()
    page = trader_client.get(reverse("sources:basket_edit", args=[basket.pk])).content.decode()
    assert "Spare (deactivated)" in page
    renamed = trader_client.post(
        reverse("sources:basket_edit", args=[basket.pk]),
        basket_form(account, name="Renamed", accounts=[account.pk, spare.pk]),
    )
    assert renamed.status_code == 302
    assert set(Basket.objects.get().accounts.values_list("label", flat=True)) == {account.label, "Spare"}
    page = trader_client.get(reverse("sources:strategy_edit", args=[strategy.pk])).content.decode()
    assert "Spare (deactivated)" in page and "checked" in page.split("Spare (deactivated)")[0].rsplit("<input", 1)[1]
    # A new basket on it: refused, naming it, not "12 is not one of the available choices".
    refused = trader_client.post(
        reverse("sources:basket_create"), basket_form(account, accounts=[account.pk, spare.pk])
    )
    assert refused.status_code == 200 and "Spare is deactivated; reactivate it first." in refused.content.decode()
    assert Basket.objects.count() == 1


@pytest.mark.parametrize("name", ["sources:basket_detail", "sources:basket_edit", "sources:basket_delete"])
def test_another_traders_basket_is_404(trader_client, other_trader, instruments, name):
    theirs = make_broker_account(other_trader, broker="paper", client_id="THEIRS")
    basket = sources.basket_save(
        owner=other_trader,
        name="Theirs",
        account_ids=[theirs.pk],
        items=[{"instrument": instrument(), "side": "BUY", "quantity": 1}],
    )
    assert trader_client.post(reverse(name, args=[basket.pk]), {"token": "x"}).status_code == 404
    assert Basket.objects.filter(pk=basket.pk).exists() and not PaperOrder.objects.exists()


def scheduled_form(account, **overrides):
    soon = timezone.now().astimezone(ZoneInfo("Asia/Kolkata")) + timedelta(hours=1)
    data = {
        "account": account.pk,
        "instrument": "INFY",
        "side": "BUY",
        "quantity": "1",
        "order_type": "MARKET",
        "product": "MIS",
        "recurrence": "once",
        "run_on": soon.date().isoformat(),
        "time_of_day": soon.strftime("%H:%M:%S"),
        "grace_s": "0",
        "timezone": "Asia/Kolkata",
        "token": str(uuid.uuid4()),
    }
    data.update(overrides)
    return data


def test_schedule_list_and_cancel(trader_client, account):
    response = trader_client.post(reverse("sources:scheduled_list"), scheduled_form(account))
    assert response.status_code == 302
    row = ScheduledOrder.objects.get()
    page = trader_client.get(reverse("sources:scheduled_list")).content.decode()
    assert f'id="scheduled-{row.pk}"' in page and "Active" in page
    trader_client.post(reverse("sources:scheduled_cancel", args=[row.pk]))
    row.refresh_from_db()
    assert row.status == "cancelled"


def test_the_schedule_list_shows_the_chosen_weekdays(trader_client, account):
    """ "Chosen weekdays" alone did not say which: the page has no other view of them."""
    data = scheduled_form(account, recurrence="weekdays", run_on="", weekdays=["2", "0"])
    assert trader_client.post(reverse("sources:scheduled_list"), data).status_code == 302
    page = trader_client.get(reverse("sources:scheduled_list")).content.decode()
    assert "Chosen weekdays (Mon, Wed)" in page


def test_a_double_submitted_schedule_is_made_once(trader_client, account):
    page = trader_client.get(reverse("sources:scheduled_list"))
    token = page.context["form"]["token"].value()
    assert f'name="token" value="{token}"' in page.content.decode()
    data = scheduled_form(account, token=token)
    first = trader_client.post(reverse("sources:scheduled_list"), data)
    second = trader_client.post(reverse("sources:scheduled_list"), data)  # a double click
    assert first.status_code == second.status_code == 302
    assert ScheduledOrder.objects.count() == 1
    # The same form sent again with other values (back, changed, sent): refused, with a fresh token.
    changed = trader_client.post(reverse("sources:scheduled_list"), {**data, "quantity": "2"})
    assert changed.status_code == 200 and "already used" in changed.content.decode()
    assert changed.context["form"]["token"].value() != token
    # A form without its token (a page from before it had one) says so, and makes nothing.
    stale = trader_client.post(reverse("sources:scheduled_list"), {**data, "token": ""})
    assert stale.status_code == 200 and "This form is out of date" in stale.content.decode()
    assert ScheduledOrder.objects.count() == 1


def test_a_repeat_or_a_cancel_of_a_schedule_that_ran_since_says_so(trader_client, account):
    """A one-off that ran (or was cancelled) between a double submit's two requests, or before its
    Cancel arrived: the repeat said "next run" with the time now, as if it would fire then; the
    Cancel said nothing at all."""
    data = scheduled_form(account)
    trader_client.post(reverse("sources:scheduled_list"), data, follow=True)  # its message shown
    row = ScheduledOrder.objects.get()
    ScheduledOrder.objects.filter(pk=row.pk).update(status="done", next_run_at=None)  # it ran

    repeat = trader_client.post(reverse("sources:scheduled_list"), data, follow=True)
    said = [str(message) for message in repeat.context["messages"]]
    assert said == [f"Scheduled #{row.pk}; done, no next run."]
    cancel = trader_client.post(reverse("sources:scheduled_cancel", args=[row.pk]), follow=True)
    said = [str(message) for message in cancel.context["messages"]]
    assert said == [f"Scheduled order #{row.pk} was not cancelled: it is done."]
    assert ScheduledOrder.objects.get().status == "done"


def test_a_cancel_while_a_run_is_being_placed_warns_that_run_goes_out(trader_client, account):
    trader_client.post(reverse("sources:scheduled_list"), scheduled_form(account), follow=True)
    row = ScheduledOrder.objects.get()
    fire = ScheduledFire.objects.create(scheduled=row, due_at=timezone.now(), status=ScheduledFire.Status.PLACING)
    cancel = trader_client.post(reverse("sources:scheduled_cancel", args=[row.pk]), follow=True)
    [said] = cancel.context["messages"]
    assert said.level_tag == "warning"
    assert str(said) == f"Cancelled scheduled order #{row.pk}. " + sources.Cancelled(True, fire.due_at).text(row)
    assert ScheduledOrder.objects.get().status == "cancelled"


def test_schedule_form_errors_name_the_field(trader_client, account):
    response = trader_client.post(reverse("sources:scheduled_list"), scheduled_form(account, order_type="LIMIT"))
    assert "price" in response.context["form"].errors
    response = trader_client.post(reverse("sources:scheduled_list"), scheduled_form(account, run_on="2020-01-01"))
    assert "run_on" in response.context["form"].errors
    assert not ScheduledOrder.objects.exists()


def test_another_traders_scheduled_order_is_404(trader_client, other_trader, instruments):
    theirs = make_broker_account(other_trader, broker="paper", client_id="THEIRS")
    row = sources.scheduled_save(
        owner=other_trader,
        account=theirs,
        spec={"instrument": instrument(), "side": "BUY", "quantity": 1, "order_type": "MARKET", "product": "MIS"},
        recurrence="trading_days",
        time_of_day=timezone.now().time(),
        timezone_name="Asia/Kolkata",
    )
    assert trader_client.post(reverse("sources:scheduled_cancel", args=[row.pk])).status_code == 404
    row.refresh_from_db()
    assert row.status == "active"


def test_strategy_secret_is_shown_once(trader_client, account):
    response = trader_client.post(
        reverse("sources:strategy_create"),
        {"name": "Trend", "accounts": [account.pk], "stop_loss_unit": "percent", "take_profit_unit": "points",
         "max_reentries": "0", "max_retries": "1", "retryable_kinds": ["funds"], "is_active": "on"},
    )  # fmt: skip
    strategy = Strategy.objects.get()
    page = response.content.decode()
    secret = page.split('class="secret-value">')[1].split("<")[0]
    assert secret.startswith("whsec_") and strategy.retryable_kinds == ["funds"]
    detail = trader_client.get(reverse("sources:strategy_detail", args=[strategy.pk])).content.decode()
    assert secret not in detail and f"/hooks/strategies/{strategy.pk}/" in detail
    rotated = trader_client.post(reverse("sources:strategy_secret", args=[strategy.pk])).content.decode()
    assert "whsec_" in rotated and secret not in rotated


def test_the_new_secret_form_sent_again_does_not_end_the_secret_it_showed(trader_client, account):
    """The page showing a new webhook secret answers the POST that made it: a reload (or Back to it)
    sent that form again and replaced the secret just shown, which the trader may have pasted into
    TradingView already, with one they never saw."""
    strategy, _ = sources.strategy_save(owner=account.owner, name="Trend", account_ids=[account.pk])
    url = reverse("sources:strategy_secret", args=[strategy.pk])
    shown = {"replaces": strategy.webhook_secret_prefix}  # what the strategy's page posts
    first = trader_client.post(url, shown).content.decode()
    secret = first.split('class="secret-value">')[1].split("<")[0]
    strategy.refresh_from_db()
    assert secret.startswith(strategy.webhook_secret_prefix)
    assert f'name="replaces" value="{strategy.webhook_secret_prefix}"' in first  # the next New secret replaces it
    again = trader_client.post(url, shown, follow=True)
    assert again.redirect_chain == [(reverse("sources:strategy_detail", args=[strategy.pk]), 302)]
    assert "replaced already" in again.content.decode() and "secret-value" not in again.content.decode()
    assert Strategy.objects.get(pk=strategy.pk).webhook_secret_hash == strategy.webhook_secret_hash
    assert hashlib.sha256(secret.encode()).hexdigest() == strategy.webhook_secret_hash  # still the live one


def test_a_new_strategy_saved_twice_is_one_strategy_whose_shown_secret_stays_live(trader_client, account):
    """The page showing a new strategy's secret answers the POST that made it: a reload (or Back to
    it, a double click) sent that form again, which replaced the secret just shown, one the trader
    may have pasted into TradingView already, and every alert signed with it was refused. The same
    form sent again is the first's strategy, its secret kept; the page says so and where to make a
    new one (a double click's first answer, the one with the secret, is never seen)."""
    form = {"name": "Trend", "accounts": [account.pk], "stop_loss_unit": "percent", "take_profit_unit": "points",
            "max_reentries": "0", "max_retries": "0", "is_active": "on", "token": str(uuid.uuid4())}  # fmt: skip
    first = trader_client.post(reverse("sources:strategy_create"), form).content.decode()
    secret = first.split('class="secret-value">')[1].split("<")[0]
    second = trader_client.post(reverse("sources:strategy_create"), form, follow=True)
    strategy = Strategy.objects.get()
    assert strategy.webhook_secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert second.redirect_chain == [(reverse("sources:strategy_detail", args=[strategy.pk]), 302)]
    page = second.content.decode()
    assert "sent already" in page and "taken" not in page and "secret-value" not in page
    assert f'name="replaces" value="{strategy.webhook_secret_prefix}"' in page  # its New secret works
    # The same form with another name is not a repeat: refused on the page, a fresh form to send.
    changed = trader_client.post(reverse("sources:strategy_create"), {**form, "name": "Other"})
    assert "already used for a different strategy" in changed.content.decode()
    assert changed.context["form"]["token"].value() != form["token"]
    assert list(Strategy.objects.values_list("name", flat=True)) == ["Trend"]
    # A new form (a new token) with the name taken is still "name taken".
    again = trader_client.post(reverse("sources:strategy_create"), {**form, "token": str(uuid.uuid4())})
    assert sources.STRATEGY_NAME_TAKEN in again.content.decode() and Strategy.objects.count() == 1


def test_a_strategys_page_says_which_rejections_its_entries_are_retried_for(trader_client, trader, account):
    """With no kind ticked the page said "retries: 2 (none)", while the cycle retried the kinds that
    may pass by themselves (funds, rms, ...)."""
    from brokers.errors import RejectKind

    strategy, _ = sources.strategy_save(owner=trader, name="Default", account_ids=[account.pk], max_retries=2)
    page = trader_client.get(reverse("sources:strategy_detail", args=[strategy.pk])).content.decode()
    assert f"retries: 2 ({', '.join(RejectKind.RETRYABLE_BY_NATURE)}: by default, none chosen)" in page
    sources.strategy_change(owner=trader, strategy=strategy, retryable_kinds=["funds"])
    page = trader_client.get(reverse("sources:strategy_detail", args=[strategy.pk])).content.decode()
    assert "retries: 2 (funds)" in page
    form = trader_client.get(reverse("sources:strategy_edit", args=[strategy.pk])).content.decode()
    assert f"None ticked: {', '.join(RejectKind.RETRYABLE_BY_NATURE)}." in form


@pytest.mark.parametrize("field, value", [("max_retries", "21"), ("max_reentries", "101"), ("max_retries", "1000000")])
def test_the_strategy_page_keeps_the_retry_and_reentry_caps_the_api_has(trader_client, account, field, value):
    """The API takes at most 20 retries and 100 re-entries; the page saved any number (a million
    retries of a rejected entry, a re-entry after every stop-loss without end)."""
    form = {"name": "Trend", "accounts": [account.pk], "stop_loss_unit": "percent", "take_profit_unit": "points",
            "max_reentries": "0", "max_retries": "0", "is_active": "on", field: value}  # fmt: skip
    page = trader_client.post(reverse("sources:strategy_create"), form).content.decode()
    assert not Strategy.objects.exists()
    assert "At most" in page


@pytest.mark.parametrize(
    "name, method",
    [("sources:strategy_detail", "get"), ("sources:strategy_edit", "post"), ("sources:strategy_secret", "post")],
)
def test_another_traders_strategy_is_404(trader_client, other_trader, name, method):
    strategy, _ = sources.strategy_save(owner=other_trader, name="Theirs", account_ids=[])
    assert getattr(trader_client, method)(reverse(name, args=[strategy.pk]), {"name": "Mine"}).status_code == 404
    strategy.refresh_from_db()
    assert strategy.name == "Theirs"


def test_names_are_escaped(trader_client, trader, account):
    sources.strategy_save(owner=trader, name="<script>alert(1)</script>", account_ids=[account.pk])
    page = trader_client.get(reverse("sources:strategy_list")).content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_a_basket_saves_with_its_blank_row_left_as_it_is(trader_client, trader, account):
    """The edit page's extra row posts its selects' first choices; untouched, it is not an item."""
    basket = sources.basket_save(
        owner=trader,
        name="Old",
        account_ids=[account.pk],
        items=[{"instrument": instrument(), "side": "BUY", "quantity": 1}],
    )
    blank = {
        "items-TOTAL_FORMS": "2",
        "items-INITIAL_FORMS": "1",
        "items-0-quantity": "1",
        "items-1-instrument": "",
        "items-1-side": "BUY",
        "items-1-quantity": "",
        "items-1-order_type": "MARKET",
        "items-1-product": "MIS",
        "items-1-price": "",
        "items-1-trigger_price": "",
    }
    data = {k: v for k, v in basket_form(account, name="Renamed", **blank).items() if not k.startswith("items-1-price")}
    data["items-1-price"] = ""
    response = trader_client.post(reverse("sources:basket_edit", args=[basket.pk]), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    basket.refresh_from_db()
    assert basket.name == "Renamed" and basket.items.count() == 1


def test_a_basket_items_bad_price_is_shown_on_its_row(trader_client, account):
    response = trader_client.post(
        reverse("sources:basket_create"), basket_form(account, **{"items-1-price": "26000.03"})
    )
    page = response.content.decode()
    assert response.status_code == 200 and "multiple of the tick size" in page
    row = page.split('name="items-1-price"')[1].split("</td>")[0]  # the message is in the price's cell
    assert "multiple of the tick size" in row and "Constraint" not in page
    assert not Basket.objects.exists()


def test_placing_a_basket_with_no_account_says_so(trader_client, trader, account):
    basket = sources.basket_save(
        owner=trader, name="Lonely", account_ids=[], items=[{"instrument": instrument(), "side": "BUY", "quantity": 1}]
    )
    response = trader_client.post(reverse("sources:basket_detail", args=[basket.pk]), {"token": "t-1"})
    assert response.status_code == 200 and "Choose at least one account." in response.content.decode()
    assert not PaperOrder.objects.exists()


def form_as_sent(page: str, marker: str) -> dict:
    """What a browser sends of the page's form holding ``marker``, as it was shown: its inputs'
    values, each select's chosen option (else its first), checked boxes only."""
    from html.parser import HTMLParser

    form = next(part for part in page.split("<form")[1:] if marker in part.split("</form>")[0])
    form = form.split("</form>")[0]
    form = form.split("<template", 1)[0] + form.split("</template>", 1)[-1]  # a row the script adds

    class Fields(HTMLParser):
        def __init__(self):
            super().__init__()
            self.data, self.select, self.first = {}, None, None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "input" and "name" in attrs:
                if attrs.get("type") not in ("checkbox", "radio") or "checked" in attrs:
                    self.data.setdefault(attrs["name"], []).append(attrs.get("value") or "")
            elif tag == "select":
                self.select, self.first = attrs["name"], None
            elif tag == "option" and self.select:
                self.first = attrs.get("value", "") if self.first is None else self.first
                if "selected" in attrs:
                    self.data[self.select] = [attrs.get("value", "")]

        def handle_endtag(self, tag):
            if tag == "select" and self.select:
                self.data.setdefault(self.select, [self.first or ""])
                self.select = None

    fields = Fields()
    fields.feed(form)
    return fields.data


def test_renaming_a_basket_on_its_page_keeps_its_items_validity(trader_client, trader, account):
    """An IOC item (the API takes a validity) saved again from the edit page, as it was shown but
    renamed, was written back DAY: the page had no validity. Placed, it rested at the exchange all
    day instead of being cancelled when not filled at once."""
    basket = sources.basket_save(
        owner=trader,
        name="Quick",
        account_ids=[account.pk],
        items=[
            {
                "instrument": instrument(),
                "side": "BUY",
                "quantity": 1,
                "order_type": "LIMIT",
                "price": "1400",
                "validity": "IOC",
            },
        ],
    )
    url = reverse("sources:basket_edit", args=[basket.pk])
    data = form_as_sent(trader_client.get(url).content.decode(), "items-TOTAL_FORMS")
    data["name"] = ["Quick exit"]
    response = trader_client.post(url, data)
    assert response.status_code == 302, (data, response.context["form"].errors, response.context["items"].errors)
    assert [(item.quantity, item.validity) for item in Basket.objects.get().items.all()] == [(1, "IOC")]
    assert "IOC" in trader_client.get(reverse("sources:basket_detail", args=[basket.pk])).content.decode()


@pytest.mark.parametrize("page", ["basket_create", "basket_place", "strategy_create"])
def test_an_account_id_of_more_digits_than_any_id_is_refused_on_the_field_not_a_500(
    trader_client, trader, account, page
):
    """Twenty digits in the accounts list (a mangled or hand-made form) was a 500 on SQLite: the
    choices were looked up with an integer the database cannot hold."""
    huge = "9" * 20
    if page == "basket_create":
        url, data = reverse("sources:basket_create"), basket_form(account, accounts=[account.pk, huge])
    elif page == "basket_place":
        basket = sources.basket_save(
            owner=trader, name="B", account_ids=[], items=[{"instrument": instrument(), "side": "BUY", "quantity": 1}]
        )
        url, data = reverse("sources:basket_detail", args=[basket.pk]), {"token": "t-1", "accounts": [huge]}
    else:
        data = {"name": "Trend", "accounts": [account.pk, huge], "stop_loss_unit": "percent",
                "take_profit_unit": "points", "max_reentries": "0", "max_retries": "0", "is_active": "on"}  # fmt: skip
        url = reverse("sources:strategy_create")
    response = trader_client.post(url, data)
    assert response.status_code == 200
    assert "accounts" in response.context["form"].errors
    assert not Strategy.objects.exists() and Basket.objects.count() == (1 if page == "basket_place" else 0)
    assert not PaperOrder.objects.exists()


def test_a_strategys_recent_signals_show_each_order_as_it_is_now_with_why(trader_client, trader, account):
    """A signal's LIMIT entry rested at its exchange (OPEN); then its broker refused it (a postback
    says REJECTED). The strategy's page kept listing the signal as "Paper OPEN", the answer of the
    moment it was placed, on every later visit, and a copy refused on an account (below one lot
    after its multiplier) as a bare "INVALID" without why. Each row shows its order as it is now,
    with its reason, and a refused copy with its error, as the basket's results do."""
    from decimal import Decimal

    from brokers.base import Status
    from orders import services
    from orders.models import Order
    from orders.tests.factories import broker_state

    half = make_broker_account(trader, broker="paper", client_id="HALF", label="Half", copy_multiplier=Decimal("0.5"))
    strategy, _ = sources.strategy_save(owner=trader, name="Trend", account_ids=[account.pk, half.pk])
    signal, _ = sources.strategy_signal(
        strategy=strategy, actor=trader, signal_id="tv-1", via="webhook", instrument=instrument(),
        side="BUY", quantity=1, order_type="LIMIT", price="1400",
    )  # fmt: skip
    assert sorted(row["status"] for row in signal.results) == ["INVALID", "OPEN"]
    order = Order.objects.get()
    refused = broker_state(order, status=Status.REJECTED, status_message="RMS: margin exceeds", pending_quantity=0)
    services.order_apply_broker_state(order, refused, cause="postback")
    page = trader_client.get(reverse("sources:strategy_detail", args=[strategy.pk])).content.decode()
    assert "OPEN" not in page
    assert "REJECTED" in page and "RMS: margin exceeds" in page and order.reference in page
    assert "Below one lot on Half" in page


def test_saving_a_strategys_page_keeps_what_was_changed_elsewhere_while_it_was_open(trader_client, trader, account):
    """The edit page wrote back every setting as it showed them when opened: a trader who paused the
    strategy through the API (or in another tab) and tightened its stop-loss, then saved a rename on
    a page opened before, had it live again with the old stop (its next alert placed an order).
    Only what was changed on the page is written."""
    from decimal import Decimal

    from tradingplatform.testing import page_form_data

    strategy, _ = sources.strategy_save(
        owner=trader, name="Swing", account_ids=[account.pk], stop_loss=Decimal("2"), stop_loss_unit="percent"
    )
    url = reverse("sources:strategy_edit", args=[strategy.pk])
    data = page_form_data(trader_client.get(url))  # the page opened
    sources.strategy_change(owner=trader, strategy=strategy, is_active=False, stop_loss=Decimal("1"))

    answer = trader_client.post(url, {**data, "name": "Swing (renamed)"})
    assert answer.status_code == 302, answer.context["form"].errors
    strategy.refresh_from_db()
    assert strategy.name == "Swing (renamed)"
    assert strategy.is_active is False and strategy.stop_loss == Decimal("1")
    assert list(strategy.accounts.all()) == [account]

    # What is changed on the page is written, the rest kept.
    data = page_form_data(trader_client.get(url))
    assert trader_client.post(url, {**data, "take_profit": "3", "take_profit_unit": "percent"}).status_code == 302
    strategy.refresh_from_db()
    assert strategy.take_profit == Decimal("3") and strategy.stop_loss == Decimal("1") and not strategy.is_active


def test_saving_a_baskets_page_keeps_what_was_changed_elsewhere_while_it_was_open(trader_client, trader, account):
    """The edit page wrote back the name, the accounts and the items as it showed them when opened:
    a trader whose bot took an account off the basket (API PATCH), or changed its items, and then
    saved a rename on a page opened before had the account back (its next Place sent orders to it)
    and the old items. Only what was changed on the page is written; items changed on it replace them."""
    from tradingplatform.testing import page_form_data

    spare = make_broker_account(trader, broker="paper", client_id="SPARE", label="Spare")
    basket = sources.basket_save(
        owner=trader,
        name="Morning",
        account_ids=[account.pk, spare.pk],
        items=[{"instrument": instrument(), "side": "BUY", "quantity": 1}],
    )
    url = reverse("sources:basket_edit", args=[basket.pk])
    data = page_form_data(trader_client.get(url))  # the page opened
    tcs = {"instrument": instrument("TCS"), "side": "SELL", "quantity": 3}
    sources.basket_change(owner=trader, basket=basket, account_ids=[account.pk], items=[tcs])

    answer = trader_client.post(url, {**data, "name": "Morning (renamed)"})
    assert answer.status_code == 302, (answer.context["form"].errors, answer.context["items"].errors)
    basket.refresh_from_db()
    assert basket.name == "Morning (renamed)"
    assert list(basket.accounts.all()) == [account]
    assert [(i.instrument.tradingsymbol, i.side, i.quantity) for i in basket.items.all()] == [("TCS", "SELL", 3)]

    # What is changed on the page is written, the rest kept: an item's quantity, then an account.
    data = page_form_data(trader_client.get(url))
    assert trader_client.post(url, {**data, "items-0-quantity": "5"}).status_code == 302
    assert [(i.instrument.tradingsymbol, i.quantity) for i in basket.items.all()] == [("TCS", 5)]
    assert list(basket.accounts.all()) == [account] and Basket.objects.get().name == "Morning (renamed)"
    data = page_form_data(trader_client.get(url))
    assert trader_client.post(url, {**data, "accounts": [account.pk, spare.pk]}).status_code == 302
    assert set(basket.accounts.all()) == {account, spare}
    assert [(i.instrument.tradingsymbol, i.quantity) for i in basket.items.all()] == [("TCS", 5)]
    # An item taken off on the page, and one added in its blank row.
    data = page_form_data(trader_client.get(url))
    added = {"items-1-instrument": "INFY", "items-1-quantity": "2"}
    assert trader_client.post(url, {**data, "items-0-DELETE": "on", **added}).status_code == 302
    assert [(i.instrument.tradingsymbol, i.side, i.quantity) for i in basket.items.all()] == [("INFY", "BUY", 2)]


def test_a_basket_page_refusing_its_token_for_other_accounts_gives_a_fresh_one(trader_client, trader, account):
    """The page placed on one account; sent again with another ticked (the page gone Back to, the
    ticks changed) its token was refused as already used, "reload it", and the page answered kept that
    token: a reload (the answer of a POST sends it again) or another Place was refused the same way,
    for ever. The refusal now comes with a fresh token, which places the new choice, once."""
    spare = make_broker_account(trader, broker="paper", client_id="SPARE", label="Spare")
    basket = sources.basket_save(
        owner=trader,
        name="Both",
        account_ids=[account.pk, spare.pk],
        items=[{"instrument": instrument(), "side": "BUY", "quantity": 1}],
    )
    url = reverse("sources:basket_detail", args=[basket.pk])
    token = trader_client.get(url).context["form"]["token"].value()
    assert trader_client.post(url, {"token": token, "accounts": [account.pk]}).status_code == 200
    assert PaperOrder.objects.count() == 1

    refused = trader_client.post(url, {"token": token, "accounts": [spare.pk]})
    assert "already made for other accounts" in refused.content.decode()
    assert PaperOrder.objects.count() == 1
    fresh = refused.context["form"]["token"].value()
    assert fresh and fresh != token
    again = trader_client.post(url, {"token": fresh, "accounts": [spare.pk]})
    assert [row["account"] for row in again.context["results"]] == ["Spare"]
    trader_client.post(url, {"token": fresh, "accounts": [spare.pk]})  # a double click of it
    assert PaperOrder.objects.count() == 2

    # A token the form itself refuses (a page with none, or mangled) is replaced too.
    bad = trader_client.post(url, {"token": "", "accounts": [spare.pk]})
    assert bad.context["form"].errors and bad.context["form"]["token"].value()


def test_a_runs_order_is_shown_on_the_scheduled_page_and_api_as_it_is_now(trader_client, trader, account):
    """A scheduled LIMIT order rested OPEN when its run placed it, then was cancelled (or filled, or
    refused by its broker later): the page's last result and recent runs, and the API's
    `last_result`, kept saying OPEN, as the run had recorded it, for good."""
    soon = timezone.now().astimezone(ZoneInfo("Asia/Kolkata")) + timedelta(minutes=5)
    row = sources.scheduled_save(
        owner=trader,
        account=account,
        spec={
            "instrument": instrument(),
            "side": "BUY",
            "quantity": 1,
            "order_type": "LIMIT",
            "product": "MIS",
            "price": "1300",  # below the market: it rests
        },
        recurrence="weekdays",
        weekdays=list(range(7)),
        time_of_day=soon.time().replace(microsecond=0),
        timezone_name="Asia/Kolkata",
    )
    [fire_id] = sources.scheduled_claim_due(now=row.next_run_at + timedelta(milliseconds=300))
    ScheduledFire.objects.filter(pk=fire_id).update(due_at=timezone.now())  # its time has come
    assert sources.scheduled_fire(fire_id=fire_id).status == "placed"
    order = Order.objects.get(scheduled=row)
    assert order.status == Order.Status.OPEN
    services.order_cancel(order=order, actor=trader, cause="ticket by trader")
    assert Order.objects.get(pk=order.pk).status == Order.Status.CANCELLED

    page = trader_client.get(reverse("sources:scheduled_list")).content.decode()
    shown = f"{order.reference} CANCELLED"
    assert page.count(shown) == 2 and f"{order.reference} OPEN" not in page  # last result and recent runs
    _, secret = account_services.api_key_create(owner=trader, name="bot")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert [one["last_result"] for one in api.get("/api/v1/scheduled").json()["items"]] == [shown]
    assert api.get(f"/api/v1/scheduled/{row.pk}").json()["last_result"] == shown


def test_the_schedule_list_shows_what_is_still_to_run_first_soonest_first(trader_client, trader, account):
    """A done or cancelled scheduled order has no next run (NULL), which MariaDB and SQLite sort
    first: the page listed every finished one above the orders still to run."""
    soon = timezone.now().astimezone(ZoneInfo("Asia/Kolkata"))
    spec = {"instrument": instrument(), "side": "BUY", "quantity": 1, "order_type": "MARKET", "product": "MIS"}

    def schedule(minutes: int) -> ScheduledOrder:
        at = soon + timedelta(minutes=minutes)
        return sources.scheduled_save(
            owner=trader,
            account=account,
            spec=spec,
            recurrence="once",
            run_on=at.date(),
            time_of_day=at.time().replace(microsecond=0),
            timezone_name="Asia/Kolkata",
        )

    later, cancelled, sooner, done = schedule(50), schedule(20), schedule(10), schedule(30)
    sources.scheduled_cancel(scheduled=cancelled, actor=trader)
    ScheduledOrder.objects.filter(pk=done.pk).update(status="done", next_run_at=None)
    wanted = [sooner.pk, later.pk, done.pk, cancelled.pk]  # to run, soonest first; then the newest first

    page = trader_client.get(reverse("sources:scheduled_list")).content.decode()
    assert sorted(wanted, key=lambda pk: page.index(f'id="scheduled-{pk}"')) == wanted
    _, secret = account_services.api_key_create(owner=trader, name="bot")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    # The API pages by id, newest first (a next run changes as a row runs, so pages by it would skip and
    # repeat rows); the page above is the trader's view of what runs next.
    listed = [row["id"] for row in api.get("/api/v1/scheduled").json()["items"]]
    assert listed == sorted(wanted, reverse=True)


def test_a_baskets_page_says_what_each_of_its_accounts_will_be_sent(trader_client, trader, account):
    """Place with no account chosen goes to "the basket's accounts": the page names them, with each
    one's copy multiplier and the quantity each item becomes there (down to whole lots), and says
    which will not take it (deactivated, or a copy under one lot)."""
    account.copy_multiplier = Decimal("2.5")
    account.save()
    half = make_broker_account(trader, broker="paper", client_id="PAPER-HALF", label="Half")
    half.copy_multiplier = Decimal("0.5")
    half.save()
    spare = make_broker_account(trader, broker="paper", client_id="PAPER-SPARE", label="Spare")
    basket = sources.basket_save(
        owner=trader,
        name="Three",
        account_ids=[account.pk, half.pk, spare.pk],
        items=[
            {"instrument": instrument(), "side": "BUY", "quantity": 2},
            {"instrument": instrument("NIFTY26DECFUT", "NFO"), "side": "SELL", "quantity": 75, "product": "NRML"},
        ],
    )
    spare.is_active = False
    spare.save()
    page = trader_client.get(reverse("sources:basket_detail", args=[basket.pk])).content.decode()
    accounts = page.split('id="basket-accounts"')[1].split("</section>")[0]
    rows = {
        row.split('data-label="Account">')[1].split(" ")[0]: row.split("</tr>")[0] for row in accounts.split("<tr")[2:]
    }
    assert list(rows) == ["Half", "Paper", "Spare"]
    assert "× 2.5" in rows["Paper"]
    assert "BUY 5 INFY" in rows["Paper"] and "SELL 150 NIFTY26DECFUT" in rows["Paper"]  # 187.5: 2 lots of 75
    assert "× 0.5" in rows["Half"]
    assert "BUY 1 INFY" in rows["Half"] and "NIFTY26DECFUT: under one lot, not placed" in rows["Half"]
    assert "deactivated: not placed" in rows["Spare"] and "INFY" not in rows["Spare"]
    # As it says: a Place sends Paper both, Half its INFY only, Spare nothing.
    results = sources.basket_place(basket=basket, actor=trader, run_token="t-copies")
    sent = {(row["account"], row["symbol"]): row for row in results}
    assert sent["Paper", "INFY"]["quantity"] == 5 and sent["Paper", "NIFTY26DECFUT"]["quantity"] == 150
    assert sent["Half", "INFY"]["quantity"] == 1 and "order_id" in sent["Half", "INFY"]
    assert "order_id" not in sent["Half", "NIFTY26DECFUT"] and "order_id" not in sent["Spare", "INFY"]
