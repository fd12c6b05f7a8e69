"""Staff in Django admin cannot go around the services: rows that only the services (and brokers)
change are read-only there, and what admin does change goes through the services."""

import hashlib
from datetime import timedelta
from decimal import Decimal

import pytest
from django import forms
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiKey, AuditLog
from accounts.tests.factories import make_broker_account, make_user
from brokers import services as broker_services
from brokers.models import BrokerSession
from brokers.paper.models import PaperToken
from monitoring import cycle
from monitoring.models import AccountRun, BrokerSnapshot, MonitoringRun
from orders import services, sources
from orders.models import Basket, ScheduledFire, ScheduledOrder, Strategy, StrategySignal
from orders.tests.factories import instrument, place
from portfolio.models import PnlSnapshot, Position, Trade
from tradingplatform.admin import ReadOnlyAdmin
from tradingplatform.testing import page_form_data


@pytest.fixture
def staff_client(staff):
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def filled(trader, account):
    place(trader, account, quantity=3)
    cycle.account_monitor(account=account)  # records the fill and the position
    return Trade.objects.get()


@pytest.mark.parametrize(
    "model", [Trade, Position, PnlSnapshot, StrategySignal, BrokerSnapshot, MonitoringRun, AccountRun]
)
def test_rows_only_services_change_are_read_only(model):
    assert isinstance(admin.site._registry[model], ReadOnlyAdmin)


def test_a_fill_cannot_be_deleted_or_edited_by_staff(staff_client, filled):
    """A deleted fill would be recorded again from the broker at the next cycle and counted twice."""
    delete = reverse("admin:portfolio_trade_delete", args=[filled.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    change = reverse("admin:portfolio_trade_change", args=[filled.pk])
    assert staff_client.post(change, {"price": "1.00"}).status_code == 403
    assert staff_client.get(change).status_code == 200  # read
    filled.refresh_from_db()
    assert Trade.objects.count() == 1 and filled.price != 1
    assert Position.objects.get().net_quantity == 3


def test_the_brokers_snapshot_and_a_runs_errors_cannot_be_edited_by_staff(staff_client, filled):
    """The snapshot is the broker's book exactly as it returned it (what explains a number to a
    trader or staff), and a run's errors are what the trader is shown: records, not settings."""
    snapshot = BrokerSnapshot.objects.get(kind="trades")
    change = reverse("admin:monitoring_brokersnapshot_change", args=[snapshot.pk])
    forged = {"account": snapshot.account_id, "kind": "trades", "data": '[{"trade_id": "forged"}]'}
    answer = staff_client.post(change, {**forged, "fetched_at_0": "2026-01-01", "fetched_at_1": "09:15:00"})
    assert answer.status_code == 403
    snapshot.refresh_from_db()
    assert snapshot.data != [{"trade_id": "forged"}]
    run = AccountRun.objects.first()
    change = reverse("admin:monitoring_accountrun_change", args=[run.pk])
    assert staff_client.post(change, {"account": run.account_id, "status": "ok", "errors": "[]"}).status_code == 403
    cycle_run = MonitoringRun.objects.create(accounts=1)
    AccountRun.objects.filter(pk=run.pk).update(run=cycle_run)
    delete = reverse("admin:monitoring_monitoringrun_delete", args=[cycle_run.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    assert AccountRun.objects.filter(pk=run.pk).exists()
    assert staff_client.get(reverse("admin:monitoring_monitoringrun_change", args=[cycle_run.pk])).status_code == 200


def test_a_strategy_with_orders_cannot_be_deleted_in_admin(staff_client, trader, account):
    strategy, _ = sources.strategy_save(owner=trader, name="Guarded", account_ids=[account.pk])
    page = reverse("admin:orders_strategy_delete", args=[strategy.pk])
    place(trader, account, order_type="LIMIT", price="1400", strategy=strategy, source="strategy")
    assert staff_client.post(page, {"post": "yes"}).status_code == 403
    assert Strategy.objects.filter(pk=strategy.pk).exists()
    unused, _ = sources.strategy_save(owner=trader, name="Unused", account_ids=[account.pk])
    staff_client.post(reverse("admin:orders_strategy_delete", args=[unused.pk]), {"post": "yes"})
    assert not Strategy.objects.filter(pk=unused.pk).exists()


def test_a_scheduled_order_is_cancelled_not_edited_in_admin(staff_client, trader, account):
    due = timezone.now() + timedelta(days=1)
    row = sources.scheduled_save(
        owner=trader,
        account=account,
        spec={"instrument": instrument(), "side": "BUY", "quantity": 1, "order_type": "MARKET", "product": "MIS"},
        recurrence="once",
        time_of_day=due.astimezone(timezone.get_current_timezone()).time().replace(microsecond=0),
        timezone_name=timezone.get_current_timezone_name(),
        run_on=due.astimezone(timezone.get_current_timezone()).date(),
    )
    change = reverse("admin:orders_scheduledorder_change", args=[row.pk])
    assert staff_client.post(change, {"time_of_day": "09:20:00"}).status_code == 403
    changelist = reverse("admin:orders_scheduledorder_changelist")
    staff_client.post(changelist, {"action": "cancel", "_selected_action": [row.pk]})
    row.refresh_from_db()
    assert row.status == ScheduledOrder.Status.CANCELLED and row.next_run_at is None


def test_a_staff_cancel_while_a_run_is_being_placed_warns_that_run_goes_out(staff_client, trader, account):
    from orders.tests.test_sources import make_scheduled

    row = make_scheduled(trader, account)
    fire = ScheduledFire.objects.create(scheduled=row, due_at=timezone.now(), status=ScheduledFire.Status.PLACING)
    changelist = reverse("admin:orders_scheduledorder_changelist")
    answer = staff_client.post(changelist, {"action": "cancel", "_selected_action": [row.pk]}, follow=True)
    said = [(message.level_tag, str(message)) for message in answer.context["messages"]]
    assert said == [
        ("warning", f"#{row.pk}: " + sources.Cancelled(True, fire.due_at).text(row)),
        ("success", f"Cancelled #{row.pk}."),
    ]


def _change_form_data(form) -> dict:
    """What the admin's change page posts for ``form`` as it is shown (unbound)."""
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if value is None or value is False or field.disabled:
            continue
        if isinstance(field, forms.ModelMultipleChoiceField):
            data[name] = [str(getattr(v, "pk", v)) for v in value]
        elif isinstance(field, forms.JSONField):
            data[name] = value  # the JSON text the page shows (``value()`` prepares it already)
        else:
            data[name] = "on" if value is True else str(value)
    return data


def _admin_form(model, obj, staff):
    request = RequestFactory().get("/")
    request.user = staff
    return admin.site._registry[model].get_form(request, obj, change=obj is not None)


def test_staff_cannot_give_a_strategy_another_traders_account_or_owner(
    staff_client, staff, trader, account, other_trader
):
    """A strategy's accounts are its owner's (as ``sources.strategy_save`` keeps them): its settings
    drive the exits of the orders placed on them, and its owner changes its settings. An edit in
    the admin that hands another trader's account to it, or it to another trader, is refused."""
    theirs = make_broker_account(other_trader, broker="paper", client_id="PAPER-X1", label="Theirs")
    strategy, _ = sources.strategy_save(owner=trader, name="Breakout", account_ids=[account.pk])
    change = reverse("admin:orders_strategy_change", args=[strategy.pk])
    data = _change_form_data(_admin_form(Strategy, strategy, staff)(instance=strategy))

    response = staff_client.post(change, {**data, "accounts": [str(account.pk), str(theirs.pk)]})
    assert response.status_code == 200  # the form again, with the error
    assert list(strategy.accounts.values_list("pk", flat=True)) == [account.pk]

    staff_client.post(change, {**data, "owner": str(other_trader.pk)})
    strategy.refresh_from_db()
    assert strategy.owner_id == trader.pk

    form = _admin_form(Strategy, None, staff)(
        {**data, "name": "New", "owner": str(other_trader.pk), "accounts": [str(account.pk)]}
    )
    assert not form.is_valid() and "accounts" in form.errors


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"stop_loss": "150", "stop_loss_unit": "percent"}, "stop_loss"),  # a long's stop at a price below 0
        ({"stop_loss": "", "trailing_step": "2"}, "trailing_step"),  # a trail with no stop to move
        ({"max_retries": "1000000"}, "max_retries"),
        ({"retryable_kinds": '["nonsense"]'}, "retryable_kinds"),
        # Review: a kind that is not text was a 500 (TypeError: unhashable type). (An empty box, or
        # null, is "retry none" here: test_staff_emptying_a_strategys_retried_kinds_in_admin_retry_none.)
        ({"retryable_kinds": '[["funds"]]'}, "retryable_kinds"),
        ({"retryable_kinds": '[{"kind": "funds"}]'}, "retryable_kinds"),
    ],
)
def test_staff_are_held_to_a_strategys_rules_as_its_trader_is(staff, trader, account, change, field):
    """A strategy's settings drive its orders' exits: one the trader's page and the API refuse (an
    exit that could never be placed) is refused in the admin too, naming the field."""
    strategy, _ = sources.strategy_save(owner=trader, name="Ruled", account_ids=[account.pk], stop_loss=Decimal("2"))
    Form = _admin_form(Strategy, strategy, staff)
    data = _change_form_data(Form(instance=strategy))
    unchanged = Form(data, instance=strategy)
    assert unchanged.is_valid(), unchanged.errors
    form = Form({**data, **change}, instance=strategy)
    assert not form.is_valid() and field in form.errors
    new = _admin_form(Strategy, None, staff)({**data, **change, "name": "Fresh", "owner": str(trader.pk)})
    assert not new.is_valid() and field in new.errors


def test_a_strategy_made_in_admin_gets_a_webhook_secret_shown_once(staff_client, staff, trader, account):
    data = _change_form_data(_admin_form(Strategy, None, staff)())
    data.update(name="By staff", owner=str(trader.pk), accounts=[str(account.pk)])
    response = staff_client.post(reverse("admin:orders_strategy_add"), data, follow=True)
    strategy = Strategy.objects.get(name="By staff")
    [shown] = [str(m) for m in response.context["messages"] if "whsec_" in str(m)]
    secret = shown[shown.index("whsec_") :].split()[0].rstrip(".")
    assert strategy.webhook_secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert strategy.webhook_secret_prefix == secret[:12]


def morning_basket(trader, account):
    return sources.basket_save(
        owner=trader,
        name="Morning",
        items=[{"instrument": instrument("INFY"), "side": "BUY", "quantity": 1}],
        account_ids=[account.pk],
    )


def test_staff_cannot_give_a_basket_another_traders_account_or_owner(staff, trader, account, other_trader):
    theirs = make_broker_account(other_trader, broker="paper", client_id="PAPER-X1", label="Theirs")
    basket = morning_basket(trader, account)
    Form = _admin_form(Basket, basket, staff)
    data = _change_form_data(Form(instance=basket))
    assert Form(data, instance=basket).is_valid()
    form = Form({**data, "accounts": [str(account.pk), str(theirs.pk)]}, instance=basket)
    assert not form.is_valid() and "accounts" in form.errors
    form = Form({**data, "owner": str(other_trader.pk)}, instance=basket)
    assert form.is_valid() and form.cleaned_data["owner"] == trader  # the owner field is fixed


def test_staff_end_a_broker_session_they_cannot_delete_it(staff_client, account):
    """A deleted session row left the platform trading on its token (the live session is cached)
    with nothing in the audit trail: staff end a session through the action, which does both."""
    live = broker_services.session_live(account)
    delete = reverse("admin:brokers_brokersession_delete", args=[live.session_id])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    changelist = reverse("admin:brokers_brokersession_changelist")
    staff_client.post(changelist, {"action": "delete_selected", "_selected_action": [live.session_id], "post": "yes"})
    assert BrokerSession.objects.filter(pk=live.session_id, status="active").exists()

    staff_client.post(changelist, {"action": "end_sessions", "_selected_action": [live.session_id]})
    assert BrokerSession.objects.get(pk=live.session_id).status == BrokerSession.Status.EXPIRED
    assert AuditLog.objects.filter(action=AuditLog.Action.BROKER_SESSION_EXPIRED).exists()


def test_staff_revoke_an_api_key_they_cannot_delete_it(staff_client, trader):
    """A deleted key vanished with no record of who removed it: staff revoke it, and it is audited."""
    key, _ = account_services.api_key_create(owner=trader, name="Algo")
    delete = reverse("admin:accounts_apikey_delete", args=[key.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    changelist = reverse("admin:accounts_apikey_changelist")
    staff_client.post(changelist, {"action": "delete_selected", "_selected_action": [key.pk], "post": "yes"})
    assert ApiKey.objects.filter(pk=key.pk).exists()

    staff_client.post(changelist, {"action": "revoke", "_selected_action": [key.pk]})
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert AuditLog.objects.filter(action=AuditLog.Action.API_KEY_REVOKED, target_id=str(key.pk)).exists()


@pytest.mark.parametrize("kind", ["session", "api key"])
def test_a_session_or_key_page_has_no_save_and_a_save_sent_anyway_writes_nothing(staff_client, trader, account, kind):
    """Every field of a session or an API key is read-only; Save wrote the whole row back as the
    request read it, so a session ended (or a key revoked, or its last use recorded) meanwhile
    could be written back as it was. Its page offers no Save, and one sent anyway writes nothing."""
    if kind == "session":
        row = BrokerSession.objects.get(pk=broker_services.session_live(account).session_id)
        url = reverse("admin:brokers_brokersession_change", args=[row.pk])
    else:
        row, _ = account_services.api_key_create(owner=trader, name="Algo")
        url = reverse("admin:accounts_apikey_change", args=[row.pk])
    page = staff_client.get(url).content.decode()
    assert page.count('name="_save"') == 0 and 'name="_continue"' not in page
    table = row._meta.db_table
    with CaptureQueriesContext(connection) as queries:
        assert staff_client.post(url, {"_save": "Save"}).status_code == 302
    assert not [q["sql"] for q in queries if q["sql"].startswith("UPDATE") and table in q["sql"]]


@pytest.fixture
def viewer_client(db):
    """Staff who may only look (the desk's read-only support): every view permission, no other."""
    viewer = make_user("viewer", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client = Client()
    client.force_login(viewer)
    return client


def test_staff_who_may_only_view_cannot_revoke_end_or_cancel(viewer_client, trader, account):
    """The admin's actions change a trader's keys, sessions and scheduled orders: staff with only
    the view permission see those rows, and the actions are not theirs to run."""
    key, _ = account_services.api_key_create(owner=trader, name="Algo")
    live = broker_services.session_live(account)
    due = timezone.now() + timedelta(days=1)
    local = due.astimezone(timezone.get_current_timezone())
    scheduled = sources.scheduled_save(
        owner=trader,
        account=account,
        spec={"instrument": instrument(), "side": "BUY", "quantity": 1, "order_type": "MARKET", "product": "MIS"},
        recurrence="once",
        time_of_day=local.time().replace(microsecond=0),
        timezone_name=timezone.get_current_timezone_name(),
        run_on=local.date(),
    )
    for model, action, pk in (
        ("accounts_apikey", "revoke", key.pk),
        ("brokers_brokersession", "end_sessions", live.session_id),
        ("orders_scheduledorder", "cancel", scheduled.pk),
    ):
        changelist = reverse(f"admin:{model}_changelist")
        assert viewer_client.get(changelist).status_code == 200
        viewer_client.post(changelist, {"action": action, "_selected_action": [pk]})

    assert ApiKey.objects.get(pk=key.pk).revoked_at is None
    assert BrokerSession.objects.get(pk=live.session_id).status == BrokerSession.Status.ACTIVE
    assert ScheduledOrder.objects.get(pk=scheduled.pk).status == ScheduledOrder.Status.ACTIVE


def test_a_basket_edited_in_admin_keeps_the_results_of_a_placement_made_meanwhile(staff, trader, account):
    """A basket's last results are what its last placement did (its page shows them to the trader):
    only the placement writes them, not an admin edit sending back what its page showed before."""
    basket = morning_basket(trader, account)
    Form = _admin_form(Basket, basket, staff)
    data = _change_form_data(Form(instance=basket))  # the page staff opened
    results = sources.basket_place(basket=basket, actor=trader, run_token="run-1")
    stored = Basket.objects.get(pk=basket.pk)
    assert stored.last_results == results and stored.last_placed_at is not None

    form = Form({**data, "name": "Morning (desk)"}, instance=stored)
    assert form.is_valid(), form.errors
    form.save()
    basket.refresh_from_db()
    assert basket.name == "Morning (desk)"
    assert basket.last_results == results and basket.last_placed_at == stored.last_placed_at


def _items_formset(basket, staff, rows):
    """The admin's basket item inline, bound to ``rows`` as its page posts them."""
    request = RequestFactory().get("/")
    request.user = staff
    inline = next(i for i in admin.site._registry[Basket].get_inline_instances(request, basket))
    FormSet = inline.get_formset(request, basket)
    data = {"items-TOTAL_FORMS": str(len(rows)), "items-INITIAL_FORMS": "0", "items-MIN_NUM_FORMS": "0"}
    data["items-MAX_NUM_FORMS"] = "1000"
    blank = {
        "side": "BUY",
        "order_type": "MARKET",
        "product": "MIS",
        "validity": "DAY",
        "price": "",
        "trigger_price": "",
    }
    for index, row in enumerate(rows):
        for name, value in {**blank, **row, "position": str(index)}.items():
            data[f"items-{index}-{name}"] = value
    return FormSet(data, instance=basket, prefix="items")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"symbol": "INFY", "quantity": "1", "order_type": "LIMIT", "price": "1400.03"}, "price"),  # tick 0.1
        ({"symbol": "NIFTY26DECFUT", "quantity": "1"}, "quantity"),  # a lot of 75
        ({"symbol": "NIFTY26DECFUT", "quantity": "75", "product": "CNC"}, "product"),  # delivery of a future
        ({"symbol": "INFY", "quantity": "1", "order_type": "SL-M", "trigger_price": "1400.05"}, "trigger_price"),
    ],
)
def test_staff_are_held_to_a_basket_items_order_rules_as_its_trader_is(staff, trader, account, row, field):
    """A basket item the trader's page and the API refuse (its placement would refuse it on every
    account) is refused in the admin too, naming the field, and nothing is written."""
    basket = morning_basket(trader, account)
    symbol = row.pop("symbol")
    exchange = "NFO" if symbol.endswith("FUT") else "NSE"
    formset = _items_formset(basket, staff, [{**row, "instrument": str(instrument(symbol, exchange).pk)}])
    assert not formset.is_valid()
    assert field in formset.errors[0], formset.errors
    good = {"instrument": str(instrument("INFY").pk), "quantity": "2", "order_type": "LIMIT", "price": "1400.10"}
    formset = _items_formset(basket, staff, [good])
    assert formset.is_valid(), formset.errors
    formset.save()
    assert basket.items.filter(quantity=2, price=Decimal("1400.10")).exists()


def test_a_basket_item_of_less_than_a_lot_is_refused_for_its_lot_not_a_multiplier(trader, account):
    """An item below the lot size (a row written before the admin held items to the rules) is
    refused on each account for what is wrong with it, not as "below one lot after its multiplier"
    on an account whose multiplier is 1."""
    basket = morning_basket(trader, account)
    basket.items.update(instrument=instrument("NIFTY26DECFUT", "NFO"), quantity=1)
    [result] = sources.basket_place(basket=basket, actor=trader, run_token="run-1")
    assert result["status"] == "INVALID" and result["field"] == "quantity"
    assert result["error"] == "Quantity must be a multiple of the lot size, 75.", result


def test_a_session_staff_end_is_audited_as_theirs(staff_client, staff, account):
    """Staff ending a trader's broker session is a staff action: the audit trail names who ended it
    and from where, not an expiry nobody caused."""
    live = broker_services.session_live(account)
    changelist = reverse("admin:brokers_brokersession_changelist")
    staff_client.post(changelist, {"action": "end_sessions", "_selected_action": [live.session_id]})
    entry = AuditLog.objects.get(action=AuditLog.Action.BROKER_SESSION_EXPIRED, target_id=str(account.pk))
    assert entry.actor == staff and entry.ip == "127.0.0.1"
    # Logged out at the broker too, as the trader's Disconnect is: a token that may have leaked dies.
    assert PaperToken.objects.filter(kind="access", revoked_at__isnull=False).count() == 1


@pytest.fixture
def desk(db):
    """Staff who manage traders' users (the support desk): may view and change users, nothing more."""
    from accounts.models import User

    desk = make_user("desk", is_staff=True)
    desk.user_permissions.set(Permission.objects.filter(codename__in=["view_user", "change_user"]))
    return User.objects.get(pk=desk.pk)  # no cached permissions


def test_staff_who_may_change_users_cannot_make_anyone_superuser_or_give_permissions(desk, staff):
    """A desk member changing users (a trader's email, timezone, whether they may sign in) must not
    grant what they lack: ticking "superuser" or adding permissions, on themselves or anyone, would
    give them every permission the desk was refused (ending sessions, revoking keys, editing orders'
    strategies), and ticking "staff" would let a trader into the admin, /metrics and the detailed
    readiness answer (and out of the desk's reach). Nor may they change a superuser (whose password
    they could then set)."""
    from accounts.models import User

    client = Client()
    client.force_login(desk)
    everything = Permission.objects.values_list("pk", flat=True)
    for target in (desk, make_user("trader9")):
        page = reverse("admin:accounts_user_change", args=[target.pk])
        data = _change_form_data(_admin_form(User, target, desk)(instance=target))
        data.pop("last_login", None)
        joined = data.pop("date_joined").split(" ")
        data.update({"date_joined_0": joined[0], "date_joined_1": joined[1][:8]})
        data.update({"is_superuser": "on", "is_staff": "on", "user_permissions": [str(pk) for pk in everything]})
        answer = client.post(page, data)
        assert answer.status_code == 302, answer.context["adminform"].form.errors
        was_staff, target = target.is_staff, User.objects.get(pk=target.pk)
        assert (
            target.is_staff == was_staff
            and not target.is_superuser
            and not target.user_permissions.exclude(codename__in=["view_user", "change_user"]).exists()
        )
    password = reverse("admin:auth_user_password_change", args=[staff.pk])
    answer = client.post(password, {"password1": "Taken-0ver!x9", "password2": "Taken-0ver!x9"})
    assert answer.status_code == 403
    staff.refresh_from_db()
    assert not staff.check_password("Taken-0ver!x9")


def test_staff_cannot_give_a_strategy_or_basket_a_deactivated_account(staff, trader, account):
    """A deactivated account is refused to a strategy or basket that does not have it already (as
    ``sources`` refuses it to the trader's page and the API): it could place nothing, and its
    signals and placements would fail on it. One it already has stays (an edit can keep it)."""
    parked = make_broker_account(trader, broker="paper", client_id="PAPER-PARKED", label="Parked")
    account_services.broker_account_set_active(account=parked, actor=trader, active=False)
    strategy, _ = sources.strategy_save(owner=trader, name="Breakout", account_ids=[account.pk])
    basket = morning_basket(trader, account)
    for model, row in ((Strategy, strategy), (Basket, basket)):
        Form = _admin_form(model, row, staff)
        data = _change_form_data(Form(instance=row))
        form = Form({**data, "accounts": [str(account.pk), str(parked.pk)]}, instance=row)
        assert not form.is_valid() and "accounts" in form.errors, model
        account_services.broker_account_set_active(account=account, actor=trader, active=False)
        assert Form({**data, "accounts": [str(account.pk)]}, instance=row).is_valid(), model  # kept
        account_services.broker_account_set_active(account=account, actor=trader, active=True)


def test_staff_who_may_change_users_cannot_take_over_a_colleague_with_other_permissions(desk, trader):
    """Review: the desk may not tick "superuser" nor add permissions, but could set the password of
    any staff member who is not a superuser, and sign in as them: a colleague who may end brokers'
    sessions or revoke keys gave the desk all of that. Staff are changed by superusers (and each by
    themselves); the desk still changes traders."""
    from accounts.models import User

    ops = make_user("ops", is_staff=True)
    ops.user_permissions.set(Permission.objects.filter(codename__in=["view_brokersession", "change_brokersession"]))
    client = Client()
    client.force_login(desk)
    new = {"password1": "Taken-0ver!x9", "password2": "Taken-0ver!x9"}

    answer = client.post(reverse("admin:auth_user_password_change", args=[ops.pk]), new)
    assert answer.status_code == 403
    assert not User.objects.get(pk=ops.pk).check_password("Taken-0ver!x9"), "the desk set a colleague's password"
    assert client.get(reverse("admin:accounts_user_change", args=[ops.pk])).context["has_change_permission"] is False

    assert client.post(reverse("admin:auth_user_password_change", args=[trader.pk]), new).status_code == 302
    assert User.objects.get(pk=trader.pk).check_password("Taken-0ver!x9")
    own = client.post(reverse("admin:auth_user_password_change", args=[desk.pk]), {**new, "usable_password": "true"})
    assert own.status_code == 302


def test_staff_cannot_edit_an_instrument_a_trader_holds(staff_client, filled):
    """Instruments are the broker's list (``load_instruments``): an edit in the admin went around it.
    A symbol "corrected" there made the trader's INFY an instrument the broker does not know: the
    exit of the 3 INFY they held was rejected by the broker. Staff read instruments; none is deleted."""
    from brokers.models import Instrument

    infy = filled.instrument
    change = reverse("admin:brokers_instrument_change", args=[infy.pk])
    assert staff_client.get(change).status_code == 200  # read
    data = {
        field.name: getattr(infy, field.attname)
        for field in Instrument._meta.concrete_fields
        if field.name not in ("id", "updated_at") and getattr(infy, field.attname) is not None
    }
    data.update(updated_at_0="2026-12-03", updated_at_1="09:15:00")
    staff_client.post(change, {**data, "tradingsymbol": "INFY-EQ"})
    exit_ = services.order_place(
        actor=filled.account.owner,
        account=filled.account,
        instrument=Instrument.objects.get(pk=infy.pk),
        side="SELL",
        quantity=3,
        order_type="MARKET",
        product="MIS",
        source="manual",
        cause="test",
    )
    assert exit_.status not in ("REJECTED", "FAILED"), exit_.reject_reason
    infy.refresh_from_db()
    assert infy.tradingsymbol == "INFY"

    delete = reverse("admin:brokers_instrument_delete", args=[instrument("SBIN").pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    assert Instrument.objects.filter(tradingsymbol="SBIN").exists()


def test_a_scheduled_order_staff_cancel_is_recorded_as_theirs(staff_client, staff, trader, account):
    """Staff cancelling a trader's scheduled order is a staff action: the audit trail names who did
    it and from where, the order its due time had written (never sent) says so in its event, and
    the page says which rows were cancelled and which were not live any more. It was recorded as
    nobody's (as if its trader had cancelled it, since the action ran as its owner)."""
    from orders.models import Order, ScheduledFire
    from orders.tests.test_scheduled_prepared import _prepared
    from orders.tests.test_sources import make_scheduled

    row = make_scheduled(trader, account)
    fire, _due_at, order = _prepared(row)
    done = make_scheduled(trader, account)
    ScheduledOrder.objects.filter(pk=done.pk).update(status=ScheduledOrder.Status.DONE, next_run_at=None)

    changelist = reverse("admin:orders_scheduledorder_changelist")
    answer = staff_client.post(changelist, {"action": "cancel", "_selected_action": [row.pk, done.pk]}, follow=True)

    row.refresh_from_db()
    assert row.status == ScheduledOrder.Status.CANCELLED
    entry = AuditLog.objects.get(target_type="orders.scheduledorder", target_id=str(row.pk))
    assert entry.actor == staff and entry.ip == "127.0.0.1"
    assert not AuditLog.objects.filter(target_type="orders.scheduledorder", target_id=str(done.pk)).exists()
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert "staff" in order.events.get(kind="cancelled").cause
    assert "staff" in ScheduledFire.objects.get(pk=fire.pk).detail
    shown = " ".join(str(m) for m in answer.context["messages"])
    assert f"#{row.pk}" in shown and f"#{done.pk}" in shown, shown


def test_staff_who_may_only_view_can_open_the_pages_with_fixed_or_watched_fields(viewer_client, trader, account):
    """Review: staff with the view permission alone (the desk's read-only support) got a 500 opening
    a broker account, a strategy, a basket or a paper client: those forms fix or watch a field
    (the owner, the cash) that a read-only page does not have. They see the page, read-only, and
    still no credential of the account's."""
    from accounts.tests.factories import make_kite_account
    from brokers.paper.models import PaperClient

    kite = make_kite_account(trader, client_id="KT-VIEW", api_secret="kite-secret-SHOWN-NOT")
    strategy, _ = sources.strategy_save(owner=trader, name="Viewed", account_ids=[account.pk])
    basket = morning_basket(trader, account)
    client = PaperClient.objects.create(user_id="PAPER-VIEW")
    for name, pk in (
        ("accounts_brokeraccount", kite.pk),
        ("orders_strategy", strategy.pk),
        ("orders_basket", basket.pk),
        ("paper_paperclient", client.pk),
    ):
        answer = viewer_client.get(reverse(f"admin:{name}_change", args=[pk]))
        assert answer.status_code == 200, name
        assert answer.context["has_change_permission"] is False, name
        assert b"kite-secret-SHOWN-NOT" not in answer.content and b"kite-key-123" not in answer.content


def test_staff_editing_a_strategy_in_admin_keep_its_pause_and_settings_changed_meanwhile(staff_client, trader, account):
    """Review: the admin's save wrote back every setting of a strategy as its page showed them when
    staff opened it. A trader who paused the strategy and tightened its stop-loss while staff renamed
    it had it live again (its next signal placed an order) with the old stop. Only what staff changed
    on the page is changed, through the service (under the strategy's row lock)."""
    second = make_broker_account(trader, broker="paper", client_id="PAPER-O2", label="Second")
    strategy, _ = sources.strategy_save(owner=trader, name="Breakout", account_ids=[account.pk], stop_loss=Decimal("5"))
    change = reverse("admin:orders_strategy_change", args=[strategy.pk])
    data = page_form_data(staff_client.get(change))  # the page staff opened
    sources.strategy_change(
        owner=trader, strategy=strategy, is_active=False, stop_loss=Decimal("2"), account_ids=[account.pk, second.pk]
    )

    answer = staff_client.post(change, {**data, "name": "Breakout (desk)"})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    strategy.refresh_from_db()
    assert strategy.name == "Breakout (desk)"
    assert strategy.is_active is False and strategy.stop_loss == Decimal("2")
    assert set(strategy.accounts.values_list("pk", flat=True)) == {account.pk, second.pk}

    # What staff do change is still changed.
    data = page_form_data(staff_client.get(change))
    answer = staff_client.post(change, {**data, "take_profit": "4", "accounts": [str(account.pk)]})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    strategy.refresh_from_db()
    assert strategy.take_profit == Decimal("4") and strategy.stop_loss == Decimal("2")
    assert strategy.is_active is False and list(strategy.accounts.values_list("pk", flat=True)) == [account.pk]


def test_staff_renaming_a_basket_in_admin_keep_the_accounts_its_trader_took_off_meanwhile(
    staff_client, trader, account
):
    """Review: the admin's save wrote back a basket's accounts as its page showed them when staff
    opened it: an account its trader took off the basket meanwhile was put back, and the basket's
    next placement placed its orders there too. Only what staff changed is changed (through the
    service), and the items' inline still saves."""
    second = make_broker_account(trader, broker="paper", client_id="PAPER-O2", label="Second")
    basket = sources.basket_save(
        owner=trader,
        name="Morning",
        items=[{"instrument": instrument("INFY"), "side": "BUY", "quantity": 1}],
        account_ids=[account.pk, second.pk],
    )
    change = reverse("admin:orders_basket_change", args=[basket.pk])
    data = page_form_data(staff_client.get(change))  # the page staff opened
    sources.basket_change(owner=trader, basket=basket, account_ids=[account.pk])

    answer = staff_client.post(change, {**data, "name": "Morning (desk)"})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    basket.refresh_from_db()
    assert basket.name == "Morning (desk)"
    assert list(basket.accounts.values_list("pk", flat=True)) == [account.pk]

    # What staff do change is still changed, the items among it.
    data = page_form_data(staff_client.get(change))
    data.update({"items-0-quantity": "3", "accounts": [str(account.pk), str(second.pk)]})
    answer = staff_client.post(change, data)
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    assert set(basket.accounts.values_list("pk", flat=True)) == {account.pk, second.pk}
    assert basket.items.get().quantity == 3


def test_a_runs_name_in_admin_gives_its_time_in_the_staff_members_timezone(staff_client, staff, account):
    """Review: an account run's list named its cycle "run 7 2026-12-03 03:45:00", the time in UTC with
    no zone, beside a "started at" column in the staff member's own timezone (09:15 in Kolkata):
    the desk read the cycle as hours from when it ran. Times are shown in the user's timezone."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    started = datetime(2026, 12, 3, 3, 45, tzinfo=ZoneInfo("UTC"))
    run = MonitoringRun.objects.create(accounts=1)
    MonitoringRun.objects.filter(pk=run.pk).update(started_at=started)
    AccountRun.objects.create(run=run, account=account, status="ok", started_at=started)
    assert staff.timezone == "Asia/Kolkata"
    page = staff_client.get(reverse("admin:monitoring_accountrun_changelist")).content.decode()
    assert f"run {run.pk} 2026-12-03 09:15:00" in page
    assert f"run {run.pk} 2026-12-03 03:45:00" not in page


@pytest.mark.parametrize("blank", ["", "null"])
def test_staff_emptying_a_strategys_retried_kinds_in_admin_retry_none(staff_client, trader, account, blank):
    """Review: emptying the "retryable kinds" box of a strategy's admin page (meaning none) was a 500:
    the form read it as no value (None), and the row's column holds a list, never NULL. Emptied, it
    retries no kind, as a new strategy does."""
    from brokers.errors import RejectKind

    strategy, _ = sources.strategy_save(
        owner=trader, name="Breakout", account_ids=[account.pk], retryable_kinds=[RejectKind.ALL[0]]
    )
    change = reverse("admin:orders_strategy_change", args=[strategy.pk])
    answer = staff_client.post(change, {**page_form_data(staff_client.get(change)), "retryable_kinds": blank})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    strategy.refresh_from_db()
    assert strategy.retryable_kinds == []


def test_staff_setting_a_trailing_step_after_its_trader_removed_the_stop_loss_are_told_not_a_500(
    staff_client, trader, account
):
    """Review: the admin form checked a strategy's settings as its page showed them, the save then
    (rightly) as stored with what staff changed. A trader who removed the stop-loss while staff had
    the page open, staff then setting a trailing step, got staff a 500 (the service's refusal raised
    in the save). The form checks what the save writes: the field's error on the page."""
    strategy, _ = sources.strategy_save(owner=trader, name="Breakout", account_ids=[account.pk], stop_loss=Decimal("5"))
    change = reverse("admin:orders_strategy_change", args=[strategy.pk])
    data = page_form_data(staff_client.get(change))  # the page staff opened
    sources.strategy_change(owner=trader, strategy=strategy, stop_loss=None)

    answer = staff_client.post(change, {**data, "trailing_step": "2"})
    assert answer.status_code == 200
    assert "trailing_step" in answer.context["adminform"].form.errors
    strategy.refresh_from_db()
    assert strategy.stop_loss is None and strategy.trailing_step is None


def test_staff_cannot_rename_a_paper_instrument_a_trader_holds(staff_client, filled):
    """Review: the paper exchange's instrument page let staff edit its symbol (and exchange and
    tokens). INFY "corrected" to INFY-EQ there, the exchange knew no INFY: the exit of the 3 INFY
    the trader held was rejected, and INFY's price stood still on the platform (the ticks name the
    new symbol), so its unrealized PnL went stale. What names it at the exchange is fixed once it
    exists, as the platform's instruments are; its prices, tick and lot are still set there."""
    from brokers.paper.models import PaperInstrument

    paper = PaperInstrument.objects.get(exchange="NSE", tradingsymbol="INFY")
    change = reverse("admin:paper_paperinstrument_change", args=[paper.pk])
    data = page_form_data(staff_client.get(change))
    renamed = {"tradingsymbol": ["INFY-EQ"], "exchange": ["BSE"], "instrument_token": ["99"], "last_price": ["1450"]}
    answer = staff_client.post(change, {**data, **renamed})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    paper.refresh_from_db()
    assert (paper.exchange, paper.tradingsymbol, paper.last_price) == ("NSE", "INFY", Decimal("1450"))
    exit_ = place(filled.account.owner, filled.account, side="SELL", quantity=3)
    assert exit_.status not in ("REJECTED", "FAILED"), exit_.reject_reason


def test_staff_cannot_change_the_client_id_of_a_paper_client_traders_connect_with(staff_client, filled):
    """Review: the paper exchange's client page let staff edit its client id, the one the trader's
    account connects with. Changed, the account's next login made a new, empty client under the old
    id: the trader's fills and orders (and the cash they had used) were another client's, their
    book at the broker empty, and the exchange's fills told the platform under an id no account has.
    It is fixed once it exists, as a broker account's is; the rest of the client is still set there."""
    from brokers.paper.models import PaperClient

    account = filled.account
    paper = PaperClient.objects.get(user_id=account.client_id)
    change = reverse("admin:paper_paperclient_change", args=[paper.pk])
    data = page_form_data(staff_client.get(change))
    answer = staff_client.post(change, {**data, "user_id": ["PAPER-O9"], "name": ["Renamed"]})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    paper.refresh_from_db()
    assert (paper.user_id, paper.name) == (account.client_id, "Renamed")

    broker_services.session_expire(session=BrokerSession.objects.get(account=account, status="active"))
    live = broker_services.session_live(account)  # logged in again
    trades = broker_services.adapter_for(account, live.access_token).trades()
    assert [trade.trade_id for trade in trades] == [filled.broker_trade_id]
    assert PaperClient.objects.count() == 1
