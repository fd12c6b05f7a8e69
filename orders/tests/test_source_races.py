"""Baskets, scheduled orders and strategies saved, renamed, fired and edited at the same moment.

Real requests on threads of their own, each with its own database connection (as two workers
serve them), on MariaDB; where a race is too narrow to hit reliably, one side is held at a known
point and the other sent meanwhile.
"""

import hashlib
import threading
import time as clock
import uuid
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.http import Http404
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.tests.factories import make_broker_account
from brokers.base import IST
from orders import services, sources
from orders.models import Basket, BasketItem, Order, ScheduledFire, ScheduledOrder, Strategy
from orders.tests.factories import instrument, place, sent_while_locked
from orders.tests.test_api_patch import api_for, create, item, patch
from tradingplatform.testing import mariadb_only
from tradingplatform.tests.security import db_snapshot

MODELS = {"baskets": Basket, "strategies": Strategy}


@pytest.fixture
def api(trader, settings):
    settings.API_RATE_LIMITS = [(10_000, 1.0)]  # these tests send many requests with one key
    return api_for(trader)


def at_once(*calls) -> list:
    """Run the calls on threads of their own, let go together; their answers, in the order given."""
    barrier, answers = threading.Barrier(len(calls)), [None] * len(calls)

    def run(index, call):
        try:
            barrier.wait(30)
            answers[index] = call()
        except Exception as error:  # the test says what it should have been
            answers[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def body_of(kind, name, account_ids, items=None) -> dict:
    body = {"name": name, "account_ids": account_ids}
    if kind == "baskets":
        body["items"] = items or [item()]
    if kind == "strategies":
        body["is_active"] = True  # a strategy's PUT says whether it is live
    return body


def put(api, url, data):
    return api.put(url, data, content_type="application/json")


def spec_of(symbol="INFY", quantity=1) -> dict:
    return {
        "instrument": instrument(symbol),
        "side": "BUY",
        "quantity": quantity,
        "order_type": "MARKET",
        "product": "MIS",
        "price": None,
        "trigger_price": None,
    }


# --- Two saves of one basket at once: one after the other ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_puts_of_one_basket_at_once_leave_exactly_one_of_them(api, account):
    """Each save replaces all the items (deletes them, inserts its own): two at once are made one
    after the other, and the basket never holds the items of both (a placement would place both)."""
    lists = {
        "first": [item("INFY"), item("TCS")],
        "second": [item("SBIN", quantity=2), item("ITC", quantity=2), item("WIPRO", quantity=2)],
    }
    basket = create(api, "/api/v1/baskets", body_of("baskets", "Morning", [account.pk]))
    url = f"/api/v1/baskets/{basket['id']}"
    for _ in range(20):
        answers = at_once(*(lambda items=items: put(api, url, body_of("baskets", "Morning", [account.pk], items))
                            for items in lists.values()))  # fmt: skip
        assert [answer.status_code for answer in answers] == [200, 200], answers
        symbols = list(Basket.objects.get(pk=basket["id"]).items.values_list("instrument__tradingsymbol", flat=True))
        assert symbols in ([i["tradingsymbol"] for i in items] for items in lists.values()), symbols


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_save_of_one_deleted_meanwhile_is_not_found(kind, trader, account):
    """The edit page (or a PUT) read it, then another tab deleted it: 404, not a 500, nothing made."""
    if kind == "baskets":
        row = sources.basket_save(owner=trader, name="Old", account_ids=[account.pk], items=[spec_of()])
    else:
        row, _secret = sources.strategy_save(owner=trader, name="Old", account_ids=[account.pk])
    read_for_the_edit = MODELS[kind].objects.get(pk=row.pk)
    MODELS[kind].objects.filter(pk=row.pk).delete()
    with pytest.raises(Http404):
        if kind == "baskets":
            sources.basket_save(
                owner=trader, name="New", account_ids=[account.pk], items=[spec_of()], basket=read_for_the_edit
            )
        else:
            sources.strategy_save(owner=trader, name="New", account_ids=[account.pk], strategy=read_for_the_edit)
    assert not MODELS[kind].objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_strategy_deleted_as_it_is_given_an_order_is_refused_not_a_500(api, trader, account):
    """A signal's order was given the strategy between the delete's check for orders and its DELETE:
    the database's foreign key refused the DELETE (a 500, after waiting out the order's lock). The
    delete takes the strategy's row lock first: the order commits, and the delete is refused."""
    mariadb_only()
    row, _secret = sources.strategy_save(owner=trader, name="Gone", account_ids=[account.pk])
    order = place(trader, account)
    with sent_while_locked(Strategy, lambda: api.delete(f"/api/v1/strategies/{row.pk}")) as (answers, send):
        Order.objects.filter(pk=order.pk).update(strategy=row)  # its foreign key check holds the strategy's row
        send()
    assert answers[0].status_code == 409, answers[0].content
    assert answers[0].json()["error"]["field"] == "strategy"
    assert Order.objects.get(pk=order.pk).strategy_id == row.pk


HOLD = {
    "baskets": lambda owner, row, account_ids: sources.basket_change(owner=owner, basket=row, account_ids=account_ids),
    "strategies": lambda owner, row, account_ids: sources.strategy_change(
        owner=owner, strategy=row, account_ids=account_ids
    ),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.django_db(transaction=True)
def test_a_put_is_checked_against_what_an_edit_committed_meanwhile(kind, api, trader, account):
    """A deactivated account stays on a basket or strategy only as long as it is kept. An edit that
    drops it is held uncommitted while a PUT that keeps it comes: the PUT waits for the row and is
    checked against what the edit left, as if sent after it (refused, naming the account), instead
    of against what it read before (which put the deactivated account back)."""
    mariadb_only()
    spare = make_broker_account(trader, broker="paper", client_id="PAPER-SPARE", label="Spare")
    pk = create(api, f"/api/v1/{kind}", body_of(kind, "Both", [account.pk, spare.pk]))["id"]
    spare.is_active = False
    spare.save()
    body = body_of(kind, "Both", [account.pk, spare.pk])
    with sent_while_locked(MODELS[kind], lambda: put(api, f"/api/v1/{kind}/{pk}", body)) as (answers, start):
        HOLD[kind](trader, MODELS[kind].objects.get(pk=pk), [account.pk])
        start()
    assert answers and answers[0].status_code == 422, answers and answers[0].json()
    assert answers[0].json()["error"] == {
        "code": "invalid",
        "message": "Spare is deactivated; reactivate it first.",
        "field": "account_ids",
    }
    assert list(MODELS[kind].objects.get(pk=pk).accounts.values_list("pk", flat=True)) == [account.pk]


# --- One name taken twice at the same moment: the second is told so, not a 500 ----------------

TAKEN = {
    "baskets": "You already have a basket with this name.",
    "strategies": "You already have a strategy with this name.",
}


def name_taken(kind) -> dict:
    return {"error": {"code": "invalid", "message": TAKEN[kind], "field": "name"}}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.django_db(transaction=True)
def test_two_creates_of_one_name_at_once_make_one_and_refuse_the_other(kind, api, account):
    for round_ in range(10):
        name = f"Twin {round_}"
        body = body_of(kind, f"Twin {round_}", [account.pk])
        send = lambda body=body: api.post(f"/api/v1/{kind}", body, content_type="application/json")  # noqa: E731
        answers = sorted(at_once(send, send), key=lambda answer: getattr(answer, "status_code", 0))
        assert [getattr(answer, "status_code", answer) for answer in answers] == [201, 422], answers
        assert answers[1].json() == name_taken(kind)
        assert MODELS[kind].objects.filter(name=name).count() == 1
    if kind == "baskets":  # the refused one left nothing behind
        assert Basket.objects.count() == 10 and BasketItem.objects.count() == 10


@pytest.mark.parametrize("method", ["put", "patch"])
@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.django_db(transaction=True)
def test_two_renames_to_one_name_at_once_rename_one_and_refuse_the_other(kind, method, api, account):
    send = {"put": put, "patch": patch}[method]
    for round_ in range(10):
        ids = [create(api, f"/api/v1/{kind}", body_of(kind, f"{round_} {n}", [account.pk]))["id"] for n in "ab"]
        before = {pk: api.get(f"/api/v1/{kind}/{pk}").json() for pk in ids}
        name = f"Twin {round_}"
        body = body_of(kind, name, [account.pk])
        answers = at_once(*(lambda pk=pk, body=body: send(api, f"/api/v1/{kind}/{pk}", body) for pk in ids))
        codes = [getattr(answer, "status_code", answer) for answer in answers]
        assert sorted(codes) == [200, 422], answers
        refused = ids[codes.index(422)]
        assert answers[codes.index(422)].json() == name_taken(kind)
        assert api.get(f"/api/v1/{kind}/{refused}").json() == before[refused]  # nothing of it changed
        assert MODELS[kind].objects.filter(name=name).count() == 1


PAGES = {
    "baskets": (
        "sources:basket_create",
        lambda account, name: {
            "name": name,
            "accounts": [account.pk],
            "items-TOTAL_FORMS": "1",
            "items-INITIAL_FORMS": "0",
            "items-MIN_NUM_FORMS": "0",
            "items-MAX_NUM_FORMS": "100",
            "items-0-instrument": "INFY",
            "items-0-side": "BUY",
            "items-0-quantity": "1",
            "items-0-order_type": "MARKET",
            "items-0-product": "MIS",
        },
    ),
    "strategies": (
        "sources:strategy_create",
        lambda account, name: {
            "name": name,
            "accounts": [account.pk],
            "stop_loss_unit": "percent",
            "take_profit_unit": "percent",
            "max_reentries": "0",
            "max_retries": "0",
            "is_active": "on",
        },
    ),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.django_db(transaction=True)
def test_two_pages_creating_one_name_at_once_show_the_second_the_name_taken(kind, trader, account):
    page, form = PAGES[kind]
    clients = [Client(), Client()]
    for client in clients:
        client.force_login(trader)
    for round_ in range(5):
        name = f"Twin {round_}"
        data = form(account, name)
        answers = at_once(*(lambda client=client, data=data: client.post(reverse(page), data) for client in clients))
        assert all(hasattr(answer, "status_code") for answer in answers), answers  # not a 500
        # Saved: a redirect (a basket) or the page with its new secret (a strategy); refused: the form again.
        shown = [answer for answer in answers if getattr(answer, "status_code", None) == 200]
        refused = [answer for answer in shown if TAKEN[kind] in answer.content.decode()]
        assert len(refused) == 1, answers
        assert MODELS[kind].objects.filter(name=name).count() == 1


@pytest.mark.django_db(transaction=True)
def test_one_schedule_form_sent_twice_at_once_makes_one_scheduled_order(trader, account):
    from orders.tests.test_source_pages import scheduled_form

    clients = [Client(), Client()]
    for client in clients:
        client.force_login(trader)
    for _round in range(3):
        token = clients[0].get(reverse("sources:scheduled_list")).context["form"]["token"].value()
        data = scheduled_form(account, token=token)
        answers = at_once(*(lambda c=c, data=data: c.post(reverse("sources:scheduled_list"), data) for c in clients))
        assert [getattr(answer, "status_code", answer) for answer in answers] == [302, 302], answers
    assert ScheduledOrder.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_one_basket_form_sent_twice_at_once_makes_one_basket_and_neither_answer_says_name_taken(trader, account):
    page, form = PAGES["baskets"]
    clients = [Client(), Client()]
    for client in clients:
        client.force_login(trader)
    for round_ in range(3):
        data = {**form(account, f"Twin {round_}"), "token": str(uuid.uuid4())}
        answers = at_once(*(lambda c=c, data=data: c.post(reverse(page), data) for c in clients))
        basket = Basket.objects.get(name=f"Twin {round_}")
        landed = reverse("sources:basket_detail", args=[basket.pk])
        said = [(getattr(answer, "status_code", answer), getattr(answer, "url", None)) for answer in answers]
        assert said == [(302, landed)] * 2, answers  # not the form again, "name taken"
    assert Basket.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_one_strategy_form_sent_twice_at_once_makes_one_strategy_and_a_secret_that_works(trader, account):
    """Neither answer says "name taken", one strategy is made, and one answer shows its secret, the
    one stored; the other is the strategy's page, which says the form was sent already."""
    page, form = PAGES["strategies"]
    clients = [Client(), Client()]
    for client in clients:
        client.force_login(trader)
    for round_ in range(3):
        data = {**form(account, f"Twin {round_}"), "token": str(uuid.uuid4())}
        answers = at_once(*(lambda c=c, data=data: c.post(reverse(page), data) for c in clients))
        codes = sorted((getattr(answer, "status_code", answer) for answer in answers), key=str)
        assert codes == [200, 302], answers
        made = next(answer for answer in answers if answer.status_code == 200)
        shown = made.content.decode().split('class="secret-value">')[1].split("<")[0]
        strategy = Strategy.objects.get(name=f"Twin {round_}")
        assert strategy.webhook_secret_hash == hashlib.sha256(shown.encode()).hexdigest()
        repeat = next(answer for answer in answers if answer.status_code == 302)
        assert repeat.url == reverse("sources:strategy_detail", args=[strategy.pk])
    assert Strategy.objects.count() == 3


# --- A scheduled order edited as a worker takes its due time -----------------------------------


def _zone_away_from_midnight() -> str:
    return next(
        z for z in ("UTC", "Asia/Kolkata", "America/New_York") if 1 <= timezone.now().astimezone(ZoneInfo(z)).hour < 23
    )


def daily_came_due(trader, account, seconds_ago=2) -> tuple[ScheduledOrder, int]:
    """A daily order whose time today came a moment ago, claimed, no worker on it yet (it has no
    later time today: an edit that keeps its time leaves that due time to place, as today's run)."""
    zone = _zone_away_from_midnight()
    due = (timezone.now() - timedelta(seconds=seconds_ago)).astimezone(ZoneInfo(zone)).replace(microsecond=0)
    row = sources.scheduled_save(
        owner=trader,
        account=account,
        spec=spec_of(),
        recurrence="weekdays",
        weekdays=list(range(7)),
        time_of_day=due.time(),
        timezone_name=zone,
    )
    ScheduledOrder.objects.filter(pk=row.pk).update(next_run_at=due)  # saved after it: tomorrow's was next
    fire_ids = sources.scheduled_claim_due()
    assert len(fire_ids) == 1
    return ScheduledOrder.objects.get(pk=row.pk), fire_ids[0]


def once_due_in(trader, account, seconds: float) -> tuple[ScheduledOrder, int, ZoneInfo]:
    """A one-off order due in about ``seconds``, its due time claimed ahead (PENDING, for a worker)."""
    zone = ZoneInfo(_zone_away_from_midnight())
    due = (timezone.now() + timedelta(seconds=seconds)).astimezone(zone).replace(microsecond=0)
    row = sources.scheduled_save(
        owner=trader, account=account, spec=spec_of(), recurrence="once",
        run_on=due.date(), time_of_day=due.time(), timezone_name=str(zone),
    )  # fmt: skip
    [fire_id] = sources.scheduled_claim_due(lead_s=seconds + 3)
    return ScheduledOrder.objects.get(pk=row.pk), fire_id, zone


def once_due_in_a_moment(trader, account) -> tuple[ScheduledOrder, int]:
    """A one-off order due in a second or two, claimed ahead of its time."""
    row, fire_id, _zone = once_due_in(trader, account, 2.5)
    return row, fire_id


def fire_on_a_thread(fire_id) -> tuple[threading.Thread, list]:
    fired = []

    def run():
        try:
            fired.extend(sources.scheduled_fires(fire_ids=[fire_id]))
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, fired


@pytest.mark.parametrize("recurrence", ["once", "daily"])
@pytest.mark.django_db(transaction=True)
def test_an_edit_while_a_worker_places_the_due_time_is_refused_and_changes_nothing(
    recurrence, api, trader, account, monkeypatch
):
    """The worker took the due time (PLACING) and is placing its order with the settings it had. An
    edit then is refused (409, naming the run being placed) and changes nothing: a one-off order moved
    to tomorrow would have placed again tomorrow, and a daily one answered with settings today's
    order does not have. Once it is placed, a daily order's change applies from tomorrow."""
    if recurrence == "once":
        row, fire_id = once_due_in_a_moment(trader, account)
        change = {"run_on": str(row.run_on + timedelta(days=1))}
    else:
        row, fire_id = daily_came_due(trader, account)
        change = {"quantity": 2}
    placing, go_on, place = threading.Event(), threading.Event(), services.order_place

    def order_place(**kwargs):
        placing.set()
        assert go_on.wait(60)
        return place(**kwargs)

    monkeypatch.setattr(services, "order_place", order_place)
    thread, fired = fire_on_a_thread(fire_id)
    try:
        assert placing.wait(60), "the worker never took the due time"
        url = f"/api/v1/scheduled/{row.pk}"
        before, rows = api.get(url).json(), db_snapshot()
        refused = patch(api, url, change)
        assert refused.status_code == 409, refused.json()
        error = refused.json()["error"]
        assert (error["code"], error["field"]) == ("conflict", "scheduled")
        assert "is being placed now" in error["message"]
        assert ("too late to change it" in error["message"]) == (recurrence == "once")
        assert api.get(url).json() == before and db_snapshot() == rows
    finally:
        go_on.set()
        thread.join(60)
    assert [fire.status for fire in fired] == ["placed"]
    assert list(Order.objects.filter(scheduled=row).values_list("quantity", flat=True)) == [1]
    if recurrence == "daily":
        changed = patch(api, url, change)
        assert changed.status_code == 200, changed.json()
        local_today = timezone.now().astimezone(ZoneInfo(row.timezone)).date()
        assert changed.json()["quantity"] == 2
        assert (
            timezone.localtime(ScheduledOrder.objects.get(pk=row.pk).next_run_at, ZoneInfo(row.timezone)).date()
            > local_today
        )


@pytest.mark.django_db(transaction=True)
def test_an_edit_made_as_a_worker_takes_the_due_time_is_what_it_places(trader, account):
    """An edit is held uncommitted (it keeps the time: the due time that came is today's run, with
    the new settings) while a worker takes that due time. The worker waits for the edit and places
    what it left; one that read the scheduled order without waiting placed the old quantity while
    the edit answered with the new one."""
    mariadb_only()
    row, fire_id = daily_came_due(trader, account)
    table = f"`{ScheduledOrder._meta.db_table}`"
    reached = threading.Event()

    def at_the_order(execute, sql, params, many, context):
        if table not in sql:
            return execute(sql, params, many, context)
        if "FOR UPDATE" in sql:  # waits there for the held edit
            reached.set()
            return execute(sql, params, many, context)
        result = execute(sql, params, many, context)  # read without waiting: what is committed now
        reached.set()
        return result

    fired = []

    def take():
        try:
            with connection.execute_wrapper(at_the_order):
                fired.extend(sources.scheduled_fires(fire_ids=[fire_id]))
        finally:
            reached.set()
            connection.close()

    thread = threading.Thread(target=take)
    with transaction.atomic():
        edited = sources.scheduled_change(owner=trader, scheduled=row, quantity=2)
        assert ScheduledFire.objects.get(pk=fire_id).status == "pending"  # still to place, as today's run
        assert edited.next_run_at > timezone.now() + timedelta(hours=1)  # the next is tomorrow's
        thread.start()
        assert reached.wait(60), "the worker never came to the scheduled order"
    thread.join(60)
    assert [fire.status for fire in fired] == ["placed"]
    assert list(Order.objects.filter(scheduled=row).values_list("quantity", flat=True)) == [2]


@pytest.mark.django_db(transaction=True)
def test_two_moves_of_a_daily_time_later_today_at_once_keep_todays_run(api, trader, account):
    """A daily order whose time came a moment ago (claimed, no worker on it yet) is moved to a later
    time today by an edit held uncommitted, while a PUT moves it to another later time. The PUT waits
    for the row and decides with what the edit left (today's run is at a later time), not with what
    it read before: the due time still pending, which the edit dropped meanwhile, and the PUT then
    took for today's run being placed and moved its run to tomorrow (today had none)."""
    mariadb_only()
    row, _fire_id = daily_came_due(trader, account)
    zone = ZoneInfo(row.timezone)
    local = timezone.now().astimezone(zone)
    held_to, put_to = ((local + timedelta(minutes=m)).time().replace(microsecond=0) for m in (5, 6))
    body = {
        **item(),
        "account_id": account.pk,
        "recurrence": "weekdays",
        "weekdays": list(range(7)),
        "time_of_day": put_to.isoformat(),
        "timezone": row.timezone,
    }
    with sent_while_locked(ScheduledOrder, lambda: put(api, f"/api/v1/scheduled/{row.pk}", body)) as (answers, start):
        held = sources.scheduled_change(owner=trader, scheduled=row, time_of_day=held_to)
        assert held.next_run_at.astimezone(zone).date() == local.date()
        start()
    assert answers and answers[0].status_code == 200, answers and answers[0].json()
    next_run = ScheduledOrder.objects.get(pk=row.pk).next_run_at.astimezone(zone)
    assert (next_run.date(), next_run.time()) == (local.date(), put_to)


def told_the_truth(answer, row) -> str:
    """How a change of the quantity (1 to 2) sent as the order's due time was placed went, and
    whether what it answered is true of the order placed (if any): made first (200, and the order
    has it), refused (409, the order has the old), or made after the order was placed (200, and
    the answer's last run is that order)."""
    placed = list(Order.objects.filter(scheduled=row).values_list("reference", "quantity"))
    stored = ScheduledOrder.objects.get(pk=row.pk).quantity
    if answer.status_code == 409:
        assert stored == 1 and [quantity for _, quantity in placed] in ([], [1]), (answer.json(), placed)
        return "refused"
    assert answer.status_code == 200 and stored == 2, answer
    if [quantity for _, quantity in placed] in ([], [2]):
        return "made first"
    [(reference, quantity)] = placed
    assert quantity == 1 and answer.json()["last_result"].startswith(reference), (answer.json(), placed)
    return "made after"


@pytest.mark.django_db(transaction=True)
def test_edits_and_fires_at_once_never_answer_one_thing_and_place_another(api, trader, account):
    """Many times over: a worker takes a due time while the trader changes the quantity. Whichever
    comes first, the answer is true of the order placed."""
    mariadb_only()
    api.get("/api/v1/scheduled")  # the first request of a process is slow
    for round_ in range(16):
        row, fire_id = daily_came_due(trader, account)

        def fire(fire_ids=[fire_id], after_s=round_ % 8 * 0.004):  # noqa: B006
            clock.sleep(after_s)  # the worker a little later each round: at each point of the change
            return sources.scheduled_fires(fire_ids=fire_ids)

        answer, fired = at_once(lambda url=f"/api/v1/scheduled/{row.pk}": patch(api, url, {"quantity": 2}), fire)
        assert getattr(answer, "status_code", None) in (200, 409), answer
        assert [getattr(fire, "status", fire) for fire in fired] == ["placed"], fired
        told_the_truth(answer, row)


@pytest.mark.django_db(transaction=True)
def test_a_cancel_an_edit_and_a_fire_of_one_order_at_once_never_deadlock(api, trader, account):
    """Each locks the scheduled order's row before its fires (a cancel used to lock them the other
    way round): no deadlock, no 500, and whatever was placed is what the edit's answer said."""
    mariadb_only()
    api.get("/api/v1/scheduled")
    for _ in range(15):
        row, fire_id = daily_came_due(trader, account)
        url = f"/api/v1/scheduled/{row.pk}"
        changed, cancelled, fired = at_once(
            lambda url=url: patch(api, url, {"quantity": 2}),
            lambda url=url: api.delete(url),
            lambda fire_id=fire_id: sources.scheduled_fires(fire_ids=[fire_id]),
        )
        assert getattr(changed, "status_code", None) in (200, 409), changed
        assert getattr(cancelled, "status_code", None) == 200, cancelled
        assert isinstance(fired, list) and len(fired) == 1, fired
        told_the_truth(changed, row)


def once_came_due(trader, account) -> tuple[ScheduledOrder, int, ZoneInfo]:
    """A one-off order claimed ahead of its time; its time has just come, no worker has taken it yet
    (a worker busy with the batch before, or its task a moment behind)."""
    row, fire_id, zone = once_due_in(trader, account, 2)
    clock.sleep(max(0.0, (ScheduledFire.objects.get(pk=fire_id).due_at - timezone.now()).total_seconds()) + 0.3)
    assert ScheduledFire.objects.get(pk=fire_id).status == "pending"
    return row, fire_id, zone


@pytest.mark.django_db(transaction=True)
def test_a_one_off_order_moved_later_today_after_its_time_came_places_once(api, trader, account):
    """The trader moves a one-off order a few seconds later just after its time came, before a
    worker took that due time: the new time replaces it (one order, at the new time), as a daily
    order's later time today does."""
    row, fire_id, zone = once_came_due(trader, account)
    later = (timezone.now() + timedelta(seconds=3)).astimezone(zone).replace(microsecond=0)
    moved = patch(api, f"/api/v1/scheduled/{row.pk}", {"time_of_day": later.time().isoformat()})
    assert moved.status_code == 200, moved.json()

    sources.scheduled_fires(fire_ids=[fire_id])  # the worker gets to the due time that came
    clock.sleep(max(0.0, (later - timezone.now()).total_seconds()) + 0.2)
    sources.scheduled_fires(fire_ids=sources.scheduled_claim_due(lead_s=2))  # the new time, as asked
    placed = list(Order.objects.filter(scheduled=row).values_list("reference", flat=True))
    assert len(placed) == 1, f"a one-off order placed {len(placed)} orders: {placed}"


@pytest.mark.django_db(transaction=True)
def test_a_one_off_order_moved_to_tomorrow_after_its_time_came_does_not_place_today_too(api, trader, account):
    """Moved to tomorrow just after its time came (no worker on it yet): answered with tomorrow's run,
    and nothing places today."""
    row, fire_id, _zone = once_came_due(trader, account)
    moved = patch(api, f"/api/v1/scheduled/{row.pk}", {"run_on": str(row.run_on + timedelta(days=1))})
    assert moved.status_code == 200, moved.json()
    tomorrow = ScheduledOrder.objects.get(pk=row.pk).next_run_at

    sources.scheduled_fires(fire_ids=[fire_id])  # the worker gets to today's due time
    claimed_tomorrow = sources.scheduled_claim_due(now=tomorrow)
    placed_today = Order.objects.filter(scheduled=row).count()
    assert (placed_today, len(claimed_tomorrow)) == (0, 1)


@pytest.mark.django_db(transaction=True)
def test_a_one_off_order_edited_after_its_time_came_keeping_that_time_is_refused_and_places(api, trader, account):
    """An edit that leaves the time that came ("already passed") changes nothing: it places as it was."""
    row, fire_id, _zone = once_came_due(trader, account)
    refused = patch(api, f"/api/v1/scheduled/{row.pk}", {"quantity": 2})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "run_on", refused.json()
    sources.scheduled_fires(fire_ids=[fire_id])
    assert list(Order.objects.filter(scheduled=row).values_list("quantity", flat=True)) == [1]


@pytest.mark.django_db(transaction=True)
def test_a_one_off_order_already_placed_is_not_placed_again_by_a_stale_edit(api, trader, account):
    """The trader opened the edit of a one-off order due now to move it a little later; the worker
    placed it meanwhile (DONE). The edit, sent a moment after, must not arm the one-off order again
    (a second order at the new time): it is too late to change, as it is while it is being placed
    (409), and as a daily order's edit after today's run does not place again today."""
    row, fire_id, zone = once_due_in(trader, account, 2)
    due_at = ScheduledFire.objects.get(pk=fire_id).due_at
    clock.sleep(max(0.0, (due_at - timezone.now()).total_seconds()) + 0.1)
    sources.scheduled_fires(fire_ids=[fire_id])  # the worker places it
    assert ScheduledFire.objects.get(pk=fire_id).status == "placed"
    assert ScheduledOrder.objects.get(pk=row.pk).status == "done"

    later = (timezone.now() + timedelta(seconds=3)).astimezone(zone).replace(microsecond=0)
    moved = patch(api, f"/api/v1/scheduled/{row.pk}", {"time_of_day": later.time().isoformat()})
    clock.sleep(max(0.0, (later - timezone.now()).total_seconds()) + 0.2)
    sources.scheduled_fires(fire_ids=sources.scheduled_claim_due(lead_s=2))
    placed = list(Order.objects.filter(scheduled=row).values_list("reference", flat=True))
    assert len(placed) == 1, f"a one-off order placed {len(placed)} orders (the edit answered {moved.status_code})"
    assert moved.status_code == 409, moved.json()


@pytest.mark.django_db(transaction=True)
def test_a_one_off_due_time_that_comes_while_the_edit_is_written_is_dropped_too(api, trader, account, monkeypatch):
    """The edit reads the clock once to find the due times that came (``_not_again_today``) and again,
    after the row is checked and saved, to drop those still to come (``_drop_pending_fires``). A due
    time that comes between the two readings is neither: it stays for the worker, which places it
    with the new settings, and the new time places again. Held here between the two readings."""
    row, fire_id, zone = once_due_in(trader, account, 1.5)
    real = sources._not_again_today

    def slow(row_, now):
        answer = real(row_, now)
        fire = ScheduledFire.objects.get(pk=fire_id)
        clock.sleep(max(0.0, (fire.due_at - timezone.now()).total_seconds()) + 0.1)  # full_clean, save...
        return answer

    monkeypatch.setattr(sources, "_not_again_today", slow)
    later = (timezone.now() + timedelta(seconds=4)).astimezone(zone).replace(microsecond=0)
    moved = patch(api, f"/api/v1/scheduled/{row.pk}", {"time_of_day": later.time().isoformat()})
    assert moved.status_code == 200, moved.json()
    monkeypatch.setattr(sources, "_not_again_today", real)

    sources.scheduled_fires(fire_ids=[fire_id])  # the worker gets to the due time that came
    clock.sleep(max(0.0, (later - timezone.now()).total_seconds()) + 0.2)
    sources.scheduled_fires(fire_ids=sources.scheduled_claim_due(lead_s=2))  # the new time
    placed = list(Order.objects.filter(scheduled=row).values_list("reference", flat=True))
    assert len(placed) == 1, f"a one-off order placed {len(placed)} orders: {placed}"


@pytest.mark.django_db(transaction=True)
def test_a_daily_order_made_one_off_can_still_be_edited_before_its_one_run(api, trader, account):
    """A daily order placed today's run; the trader then makes it a one-off order for tomorrow.
    Until that one run, the one-off order can still be changed: the daily runs' placed fires are
    not its run."""
    row, fire_id = daily_came_due(trader, account)
    sources.scheduled_fires(fire_ids=[fire_id])
    assert ScheduledFire.objects.get(pk=fire_id).status == "placed"

    zone = ZoneInfo(row.timezone)
    tomorrow = (timezone.now() + timedelta(days=1)).astimezone(zone).date()
    made_once = patch(api, f"/api/v1/scheduled/{row.pk}", {"recurrence": "once", "run_on": tomorrow.isoformat()})
    assert made_once.status_code == 200, made_once.json()
    assert ScheduledOrder.objects.get(pk=row.pk).recurrence == "once"

    edited = patch(api, f"/api/v1/scheduled/{row.pk}", {"quantity": 2})
    assert edited.status_code == 200, edited.json()
    assert ScheduledOrder.objects.get(pk=row.pk).quantity == 2


@pytest.mark.django_db(transaction=True)
def test_a_stale_edit_making_a_daily_order_one_off_later_today_does_not_place_today_twice(api, trader, account):
    """The trader opened the edit page of a daily order before today's time to make it a one-off
    order a little later today instead; today's daily run placed meanwhile. The edit, sent a moment
    after, must not add a second order today (a daily edit after today's run moves the next run to
    tomorrow; a one-off edit after its run is refused): at most one order today."""
    row, fire_id = daily_came_due(trader, account)
    sources.scheduled_fires(fire_ids=[fire_id])  # today's daily run places
    assert ScheduledFire.objects.get(pk=fire_id).status == "placed"

    zone = ZoneInfo(row.timezone)
    later = (timezone.now() + timedelta(seconds=3)).astimezone(zone).replace(microsecond=0)
    moved = patch(
        api,
        f"/api/v1/scheduled/{row.pk}",
        {"recurrence": "once", "run_on": later.date().isoformat(), "time_of_day": later.time().isoformat()},
    )
    clock.sleep(max(0.0, (later - timezone.now()).total_seconds()) + 0.2)
    sources.scheduled_fires(fire_ids=sources.scheduled_claim_due(lead_s=2))
    placed = list(Order.objects.filter(scheduled=row).values_list("reference", flat=True))
    assert len(placed) == 1, f"{len(placed)} orders today (the edit answered {moved.status_code}: {moved.json()})"


@pytest.mark.django_db(transaction=True)
def test_a_recurring_order_whose_days_no_longer_include_today_does_not_place_today(api, trader, account):
    """Today's time came a moment ago (claimed, no worker on it yet) and the trader takes today out of
    the order's days. The answer says the next run is on another day; nothing may place today (as a
    one-off order moved to tomorrow after its time came places nothing today, and as a daily order
    made a one-off order for tomorrow drops today's due time)."""
    row, fire_id = daily_came_due(trader, account)
    today = timezone.now().astimezone(ZoneInfo(row.timezone)).weekday()
    others = [day for day in range(7) if day != today]
    changed = patch(api, f"/api/v1/scheduled/{row.pk}", {"weekdays": others})
    assert changed.status_code == 200, changed.json()
    assert ScheduledOrder.objects.get(pk=row.pk).next_run_at.astimezone(ZoneInfo(row.timezone)).weekday() != today

    sources.scheduled_fires(fire_ids=[fire_id])  # the worker gets to the due time that came
    placed = list(Order.objects.filter(scheduled=row).values_list("quantity", flat=True))
    assert placed == [], f"placed today {placed} after today was taken out of its days"


@pytest.mark.django_db
def test_an_edit_after_todays_run_does_not_place_again_on_the_same_exchange_day(trader, account, monkeypatch):
    """A trading-days order at 23:30 New York (10:00 IST the next morning) placed its run of IST
    Tuesday (Monday 23:30 in New York). Ten minutes later the trader moves its time to 09:00 New
    York (19:30 IST). Trading days are the exchange's, whatever the trader's zone, and an edit after
    today's run must not place again today: the next run must not be on IST Tuesday again."""
    ny = ZoneInfo("America/New_York")
    created = datetime(2026, 12, 7, 12, 0, tzinfo=ny)  # Monday noon in New York
    monkeypatch.setattr(timezone, "now", lambda: created.astimezone(ZoneInfo("UTC")))
    row = sources.scheduled_save(
        owner=trader, account=account, spec=spec_of(), recurrence="trading_days",
        time_of_day=time(23, 30), timezone_name="America/New_York",
    )  # fmt: skip
    ran = datetime(2026, 12, 7, 23, 30, tzinfo=ny)
    assert row.next_run_at == ran
    ScheduledFire.objects.create(scheduled=row, due_at=ran, status=ScheduledFire.Status.PLACED)
    ScheduledOrder.objects.filter(pk=row.pk).update(next_run_at=ran + timedelta(days=1))

    edit_at = ran + timedelta(minutes=10)
    monkeypatch.setattr(timezone, "now", lambda: edit_at.astimezone(ZoneInfo("UTC")))
    row = sources.scheduled_change(owner=trader, scheduled=row, time_of_day=time(9, 0))
    ran_day, next_day = ran.astimezone(IST).date(), row.next_run_at.astimezone(IST).date()
    assert next_day != ran_day, (
        f"placed on IST {ran_day} at {ran.astimezone(IST):%H:%M} and due again on IST {next_day} "
        f"at {row.next_run_at.astimezone(IST):%H:%M}: two orders on one trading day"
    )


@pytest.mark.django_db
def test_a_one_off_on_the_exchange_day_a_run_placed_is_refused(trader, account, monkeypatch):
    """The same trading-days order (23:30 New York, 10:00 IST the next morning) placed its run of
    IST Tuesday; ten minutes later an edit page opened before it makes it a one-off for 09:00 New
    York Tuesday, which is IST Tuesday too: a second order on that trading day, so refused."""
    ny = ZoneInfo("America/New_York")
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 12, 7, 12, 0, tzinfo=ny))
    row = sources.scheduled_save(
        owner=trader, account=account, spec=spec_of(), recurrence="trading_days",
        time_of_day=time(23, 30), timezone_name="America/New_York",
    )  # fmt: skip
    ran = datetime(2026, 12, 7, 23, 30, tzinfo=ny)
    ScheduledFire.objects.create(scheduled=row, due_at=ran, status=ScheduledFire.Status.PLACED)
    ScheduledOrder.objects.filter(pk=row.pk).update(next_run_at=ran + timedelta(days=1))
    monkeypatch.setattr(timezone, "now", lambda: ran + timedelta(minutes=10))
    with pytest.raises(ValidationError) as refused:
        sources.scheduled_change(
            owner=trader,
            scheduled=row,
            recurrence="once",
            run_on=ran.date() + timedelta(days=1),
            time_of_day=time(9, 0),
        )
    assert refused.value.message_dict == {
        "run_on": ["A run of this order placed its order on that day already; choose another day."]
    }
    assert ScheduledOrder.objects.get(pk=row.pk).recurrence == "trading_days"
