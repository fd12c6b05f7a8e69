import logging
import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.models import AuditLog, BrokerAccount
from accounts.tests.factories import make_broker_account, make_kite_account
from tradingplatform.testing import error_report, mariadb_only, page_form_data

SECRET = "KITE-SECRET-do-not-show-42"
KEY = "KITE-APIKEY-do-not-show-17"


def create_form(**overrides):
    data = {
        "broker": "kite",
        "client_id": "AB1234",
        "label": "Main Kite",
        "api_key": KEY,
        "api_secret": SECRET,
        "allowed_products": ["CNC", "MIS"],
        "copy_multiplier": "1.5",
        "max_quantity": "100",
        "max_order_value": "",
        "max_open_orders": "",
    }
    data.update(overrides)
    return data


def test_list_shows_only_own_accounts(trader_client, trader, other_trader):
    make_broker_account(trader, label="Mine")
    make_broker_account(other_trader, label="Theirs")
    content = trader_client.get(reverse("accounts:broker_list")).content
    assert b"Mine" in content and b"Theirs" not in content


def test_create_kite_account_encrypts_credentials_and_audits(trader_client, trader):
    response = trader_client.post(reverse("accounts:broker_create"), create_form())
    assert response.status_code == 302
    account = BrokerAccount.objects.get()
    assert account.owner == trader and account.broker == "kite" and account.client_id == "AB1234"
    assert account.allowed_products == ["CNC", "MIS"]
    assert account.copy_multiplier == Decimal("1.5") and account.max_quantity == 100
    assert account.credentials.reveal() == {"api_key": KEY, "api_secret": SECRET}
    entry = AuditLog.objects.get(action=AuditLog.Action.BROKER_ACCOUNT_CREATED)
    assert entry.actor == trader and SECRET not in str(entry.data)


def test_create_paper_account_needs_no_credentials(trader_client):
    response = trader_client.post(
        reverse("accounts:broker_create"), create_form(broker="paper", api_key="", api_secret="", client_id="P1")
    )
    assert response.status_code == 302
    assert BrokerAccount.objects.get().credentials is None


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"api_secret": ""}, "api_secret"),
        ({"client_id": ""}, "client_id"),
        ({"label": ""}, "label"),
        ({"broker": "nope"}, "broker"),
        ({"copy_multiplier": "0"}, "copy_multiplier"),
        ({"max_quantity": "0"}, "max_quantity"),
        ({"max_order_value": "-5"}, "max_order_value"),
        ({"allowed_products": []}, "allowed_products"),
        ({"allowed_products": ["XYZ"]}, "allowed_products"),
    ],
)
def test_bad_input_names_the_field_and_creates_nothing(trader_client, overrides, field):
    response = trader_client.post(reverse("accounts:broker_create"), create_form(**overrides))
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not BrokerAccount.objects.exists()
    assert not AuditLog.objects.filter(action=AuditLog.Action.BROKER_ACCOUNT_CREATED).exists()
    # The secret typed in is not echoed back in the re-rendered form.
    assert SECRET.encode() not in response.content


def test_duplicate_broker_client_id_is_refused(trader_client, other_trader):
    make_kite_account(other_trader, client_id="AB1234")
    response = trader_client.post(reverse("accounts:broker_create"), create_form())
    assert response.status_code == 200
    assert response.context["form"].errors
    assert BrokerAccount.objects.count() == 1


def test_a_taken_client_id_is_said_with_the_forms_other_errors_as_before(trader_client, other_trader):
    """The form left "already exists" to the service, which runs only once the form is valid: a form
    with a taken client id and another mistake (no label) said only the other, and the client id
    only after that was put right."""
    make_kite_account(other_trader, client_id="AB1234")
    response = trader_client.post(reverse("accounts:broker_create"), create_form(label="", token=str(uuid.uuid4())))
    form = response.context["form"]
    assert form.errors["label"] and form.non_field_errors() == [
        "Broker account with this Broker and Client id already exists."
    ]
    assert BrokerAccount.objects.count() == 1


def test_an_account_added_twice_with_one_form_is_one_account_and_the_second_answer_is_the_firsts(trader_client, trader):
    """A double-clicked Add account: the second request's answer, the one the trader sees, said
    "Broker account with this Broker and Client id already exists." of the account the first click
    had just added. The same form sent again lands where the first answer would have."""
    url, token = reverse("accounts:broker_create"), str(uuid.uuid4())
    data = create_form(token=token)
    first = trader_client.post(url, data)
    second = trader_client.post(url, data, follow=True)
    assert first.url == reverse("accounts:broker_list")
    assert second.redirect_chain == [(first.url, 302)]
    assert {str(message) for message in second.context["messages"]} == {"Added Main Kite."}  # the first's too
    account = BrokerAccount.objects.get()
    assert AuditLog.objects.filter(action=AuditLog.Action.BROKER_ACCOUNT_CREATED).count() == 1
    # The same form with another secret (Back, a typo fixed, sent): refused, with a fresh form to send.
    changed = trader_client.post(url, {**data, "api_secret": "another"})
    assert "already used for a different account" in changed.content.decode()
    assert changed.context["form"]["token"].value() != token
    account.refresh_from_db()
    assert account.credentials.reveal() == {"api_key": KEY, "api_secret": SECRET}
    # A new form (a new token) for the same client id is still "already exists".
    again = trader_client.post(url, {**data, "token": str(uuid.uuid4())})
    assert again.context["form"].non_field_errors() and BrokerAccount.objects.count() == 1
    page = trader_client.get(url)  # each new form carries a token of its own
    assert f'name="token" value="{page.context["form"]["token"].value()}"' in page.content.decode()


@pytest.mark.django_db(transaction=True)
def test_one_add_account_form_sent_twice_at_once_adds_one_account_and_answers_both_with_it(trader, monkeypatch):
    """Both requests miss each other's account on their first read: the database's unique client id
    refuses the second insert, which then answers with the first request's account."""
    from accounts import services

    mariadb_only()
    token, start, both_read, results = uuid.uuid4(), threading.Barrier(2), threading.Barrier(2), []
    first_read, waited = services.BrokerAccount.objects.filter, threading.local()

    def both_read_first(*args, **kwargs):  # each request's check for the token runs before either writes
        rows = first_read(*args, **kwargs)
        if kwargs.get("form_token") == token and not getattr(waited, "done", False):
            waited.done = True
            list(rows)
            both_read.wait(timeout=10)
        return rows

    def send():
        try:
            start.wait(timeout=10)
            results.append(
                services.broker_account_create(
                    owner=trader, broker="paper", client_id="P1", label="Paper", credentials={}, form_token=token
                )
            )
        except Exception as error:  # the assertion below says what it should have been
            results.append(error)
        finally:
            connection.close()

    monkeypatch.setattr(services.BrokerAccount.objects, "filter", both_read_first)
    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [type(result).__name__ for result in results] == ["BrokerAccount", "BrokerAccount"], results
    account = BrokerAccount.objects.get()
    assert results == [account, account]
    assert AuditLog.objects.filter(action=AuditLog.Action.BROKER_ACCOUNT_CREATED).count() == 1


def test_an_account_added_twice_at_once_is_refused_naming_the_client_id_not_a_500(
    trader_client, other_trader, monkeypatch
):
    """A double-clicked Add (or another trader adding the same client id at that moment): the other
    request's row is committed after this one checked the client id was free and before it inserts.
    The insert met the unique constraint: a 500, not the form's answer."""
    from accounts import services

    check = services.products_check

    def added_meanwhile(products):
        check(products)
        BrokerAccount.objects.create(owner=other_trader, broker="kite", client_id="AB1234", label="Theirs")

    monkeypatch.setattr(services, "products_check", added_meanwhile)
    response = trader_client.post(reverse("accounts:broker_create"), create_form())
    assert response.status_code == 200
    assert "client_id" in response.context["form"].errors
    assert not AuditLog.objects.filter(action=AuditLog.Action.BROKER_ACCOUNT_CREATED).exists()


def test_edit_keeps_credentials_when_left_blank(trader_client, trader):
    account = make_kite_account(trader, api_key=KEY, api_secret=SECRET)
    data = create_form(label="Renamed", api_key="", api_secret="")
    response = trader_client.post(reverse("accounts:broker_edit", args=[account.pk]), data)
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.label == "Renamed"
    assert account.credentials.reveal() == {"api_key": KEY, "api_secret": SECRET}
    entry = AuditLog.objects.get(action=AuditLog.Action.BROKER_ACCOUNT_CHANGED)
    assert "label" in entry.data["fields"] and entry.data["credentials_changed"] is False


def test_edit_replaces_only_the_credential_given(trader_client, trader):
    account = make_kite_account(trader, api_key=KEY, api_secret=SECRET)
    data = create_form(api_key="", api_secret="NEW-SECRET")
    trader_client.post(reverse("accounts:broker_edit", args=[account.pk]), data)
    account.refresh_from_db()
    assert account.credentials.reveal() == {"api_key": KEY, "api_secret": "NEW-SECRET"}
    entry = AuditLog.objects.get(action=AuditLog.Action.BROKER_ACCOUNT_CHANGED)
    assert entry.data["credentials_changed"] is True and "NEW-SECRET" not in str(entry.data)


def test_edit_cannot_change_broker_or_client_id(trader_client, trader):
    account = make_kite_account(trader, client_id="ORIG")
    trader_client.post(
        reverse("accounts:broker_edit", args=[account.pk]), create_form(client_id="HIJACK", broker="paper")
    )
    account.refresh_from_db()
    assert account.client_id == "ORIG" and account.broker == "kite"


def test_deactivate_and_reactivate(trader_client, trader):
    account = make_broker_account(trader)
    assert trader_client.post(reverse("accounts:broker_deactivate", args=[account.pk])).status_code == 302
    account.refresh_from_db()
    assert account.is_active is False
    trader_client.post(reverse("accounts:broker_deactivate", args=[account.pk]))  # a repeat is a no-op
    assert AuditLog.objects.filter(action=AuditLog.Action.BROKER_ACCOUNT_DEACTIVATED).count() == 1
    trader_client.post(reverse("accounts:broker_reactivate", args=[account.pk]))
    account.refresh_from_db()
    assert account.is_active is True


def test_deactivating_an_account_with_live_orders_says_they_are_no_longer_followed(trader_client, trader, account):
    """Its orders live at the broker keep working there, but the platform stops following the
    account: the trader is told, so a stop-loss and its take-profit are not left to both fill."""
    from orders.tests.factories import place

    place(trader, account, order_type="LIMIT", price="1400", quantity=1)
    response = trader_client.post(reverse("accounts:broker_deactivate", args=[account.pk]), follow=True)
    page = response.content.decode()
    assert "Deactivated Paper." in page
    assert "1 order of it still live at the broker: the platform no longer follows them" in page
    reactivated = trader_client.post(reverse("accounts:broker_reactivate", args=[account.pk]), follow=True)
    assert "still live" not in reactivated.content.decode()


@pytest.mark.parametrize(
    "name, method",
    [("broker_edit", "get"), ("broker_edit", "post"), ("broker_deactivate", "post"), ("broker_reactivate", "post")],
)
def test_another_traders_account_is_404_and_unchanged(trader_client, other_trader, name, method):
    account = make_broker_account(other_trader, label="Theirs")
    response = getattr(trader_client, method)(
        reverse(f"accounts:{name}", args=[account.pk]), create_form(label="Mine now")
    )
    assert response.status_code == 404
    account.refresh_from_db()
    assert account.label == "Theirs" and account.is_active is True


@pytest.mark.parametrize("name", ["broker_deactivate", "broker_reactivate"])
def test_state_changes_are_post_only(trader_client, trader, name):
    account = make_broker_account(trader)
    assert trader_client.get(reverse(f"accounts:{name}", args=[account.pk])).status_code == 405


def test_csrf_is_enforced_on_form_posts(trader, db):
    client = Client(enforce_csrf_checks=True)
    client.force_login(trader)
    response = client.post(reverse("accounts:broker_create"), create_form())
    assert response.status_code == 403
    assert not BrokerAccount.objects.exists()
    account = make_broker_account(trader)
    assert client.post(reverse("accounts:broker_deactivate", args=[account.pk])).status_code == 403
    assert client.post(reverse("accounts:api_keys"), {"name": "k"}).status_code == 403
    assert client.post(reverse("logout")).status_code == 403


def test_credentials_never_appear_in_pages_admin_or_logs(client, trader, staff, caplog):
    caplog.set_level(logging.DEBUG)
    client.force_login(trader)
    client.post(reverse("accounts:broker_create"), create_form())
    account = BrokerAccount.objects.get()
    pages = [
        client.get(reverse("accounts:broker_list")),
        client.get(reverse("accounts:broker_edit", args=[account.pk])),
        client.post(reverse("accounts:broker_edit", args=[account.pk]), create_form(label="", api_secret="")),
        client.get(reverse("accounts:profile")),
    ]
    client.force_login(staff)
    pages += [
        client.get(reverse("admin:accounts_brokeraccount_changelist")),
        client.get(reverse("admin:accounts_brokeraccount_change", args=[account.pk])),
        client.get(reverse("admin:accounts_auditlog_changelist")),
    ]
    for page in pages:
        assert page.status_code == 200, page
        body = page.content.decode()
        assert SECRET not in body and KEY not in body
        assert account.credentials.token not in body
    assert SECRET not in caplog.text and KEY not in caplog.text


def test_staff_edit_in_admin_keeps_credentials_and_is_audited(client, staff, trader):
    account = make_kite_account(trader, api_key=KEY, api_secret=SECRET, label="Old")
    client.force_login(staff)
    data = {
        "label": "From admin",
        "is_active": "on",
        "allowed_products": '["CNC"]',
        "copy_multiplier": "2",
        "api_key": "",
        "api_secret": "",
    }
    response = client.post(reverse("admin:accounts_brokeraccount_change", args=[account.pk]), data)
    assert response.status_code == 302, response.content[:2000]
    account.refresh_from_db()
    assert account.label == "From admin" and account.copy_multiplier == Decimal("2")
    assert account.credentials.reveal()["api_secret"] == SECRET
    assert AuditLog.objects.filter(action=AuditLog.Action.BROKER_ACCOUNT_CHANGED, actor=staff).exists()


def test_staff_deactivating_an_account_with_live_orders_are_told_they_are_no_longer_followed(
    client, staff, trader, account
):
    from orders.tests.factories import place

    place(trader, account, order_type="LIMIT", price="1400", quantity=1)
    place(trader, account, order_type="LIMIT", price="1401", quantity=1)
    client.force_login(staff)
    data = {"label": "Paper", "allowed_products": '["CNC", "MIS", "NRML"]', "copy_multiplier": "1"}
    response = client.post(reverse("admin:accounts_brokeraccount_change", args=[account.pk]), data, follow=True)
    account.refresh_from_db()
    assert account.is_active is False
    assert "2 orders of it still live at the broker" in response.content.decode()


def test_a_secret_typed_into_the_admin_never_reaches_an_error_report(client, staff, trader):
    """Django's report of a 500 (mailed to ADMINS, shown by an error tracker) lists the POST: a
    credential typed into the admin's form must be hidden there as on the trader's own form."""
    account = make_kite_account(trader, api_key=KEY, api_secret=SECRET)
    client.force_login(staff)
    new_secret, new_key = "KITE-SECRET-typed-in-admin-77", "KITE-APIKEY-typed-in-admin-78"
    data = {"label": "L", "is_active": "on", "allowed_products": '["CNC"]', "copy_multiplier": "1"}
    for page, extra in [
        (reverse("admin:accounts_brokeraccount_change", args=[account.pk]), {}),
        (reverse("admin:accounts_brokeraccount_add"), {"owner": trader.pk, "broker": "kite", "client_id": "ZZ9"}),
    ]:
        response = client.post(page, {**data, **extra, "api_key": new_key, "api_secret": new_secret})
        assert response.status_code == 302, response.content[:2000]
        report = error_report(response.wsgi_request)
        assert "api_secret" in report  # the POST is in the report, its values hidden
        assert new_secret not in report and new_key not in report


def test_audit_log_is_append_only(trader):
    entry = AuditLog.objects.create(action=AuditLog.Action.LOGIN, actor=trader)
    entry.data = {"x": 1}
    with pytest.raises(PermissionError):
        entry.save()
    with pytest.raises(PermissionError):
        entry.delete()
    with pytest.raises(PermissionError):
        AuditLog.objects.all().delete()
    with pytest.raises(PermissionError):
        AuditLog.objects.update(action="x")


def test_audit_log_is_read_only_in_admin(client, staff, trader):
    entry = AuditLog.objects.create(action=AuditLog.Action.LOGIN, actor=trader)
    client.force_login(staff)
    assert client.get(reverse("admin:accounts_auditlog_add")).status_code == 403
    assert client.get(reverse("admin:accounts_auditlog_delete", args=[entry.pk])).status_code == 403
    response = client.post(reverse("admin:accounts_auditlog_change", args=[entry.pk]), {"action": "logout"})
    assert response.status_code == 403
    entry.refresh_from_db()
    assert entry.action == AuditLog.Action.LOGIN


def test_broker_account_of_reads_every_column_as_the_orm_does(trader, other_trader):
    from django.http import Http404

    from accounts import selectors

    mine = make_broker_account(
        trader, broker="kite", credentials={"api_key": "K", "api_secret": "S"}, max_order_value=Decimal("1234.50")
    )
    theirs = make_broker_account(other_trader)
    read = selectors.broker_account_of(trader, mine.pk)
    orm = BrokerAccount.objects.get(pk=mine.pk)
    for field in BrokerAccount._meta.concrete_fields:
        assert getattr(read, field.attname) == getattr(orm, field.attname), field.name
    assert read.credentials.reveal() == {"api_key": "K", "api_secret": "S"}
    assert read._state.adding is False
    for pk in (theirs.pk, 10**9, "x", None, 2**64):  # another trader's id is the same 404 as an unknown one
        with pytest.raises(Http404):
            selectors.broker_account_of(trader, pk)


@pytest.mark.parametrize("products", ['["XYZ"]', "[]", '"CNC"'])
def test_staff_giving_an_account_unknown_products_in_admin_get_the_form_again(client, staff, trader, products):
    """The products an account allows are held to the services' rule in the admin too: a list the
    service refuses is the form's error naming the field, not a 500 from the save."""
    account = make_broker_account(trader, label="Paper")
    client.force_login(staff)
    data = {"label": "Paper", "is_active": "on", "allowed_products": products, "copy_multiplier": "1"}
    response = client.post(reverse("admin:accounts_brokeraccount_change", args=[account.pk]), data)
    assert response.status_code == 200
    assert "allowed_products" in response.context["adminform"].form.errors
    account.refresh_from_db()
    assert account.allowed_products == ["CNC", "MIS", "NRML"]

    add = {**data, "owner": trader.pk, "broker": "paper", "client_id": "ZZ-NEW-1"}
    response = client.post(reverse("admin:accounts_brokeraccount_add"), add)
    assert response.status_code == 200
    assert "allowed_products" in response.context["adminform"].form.errors
    assert not BrokerAccount.objects.filter(client_id="ZZ-NEW-1").exists()


def test_an_account_staff_add_in_admin_is_audited_as_theirs_and_kept_as_they_set_it(client, staff, trader):
    """Staff adding a trader's account in the admin: the audit trail names staff as who added it
    (not the trader, who did nothing), and an account added unticked "active" is not live for orders."""
    client.force_login(staff)
    data = {
        "owner": trader.pk,
        "broker": "paper",
        "client_id": "ZZ-STAFF-1",
        "label": "Added by staff",
        "allowed_products": '["CNC"]',
        "copy_multiplier": "1",
    }  # "is_active" left unticked
    response = client.post(reverse("admin:accounts_brokeraccount_add"), data)
    assert response.status_code == 302, response.content[:2000]
    account = BrokerAccount.objects.get(client_id="ZZ-STAFF-1")
    assert account.owner == trader
    assert AuditLog.objects.get(action=AuditLog.Action.BROKER_ACCOUNT_CREATED, target_id=str(account.pk)).actor == staff
    assert account.is_active is False


def test_staff_cannot_delete_a_traders_account_in_admin_only_deactivate_it(client, staff, trader):
    """A delete in the admin left no audit entry, and took with it the trader's live broker session
    (never logged out at the broker) and their scheduled orders on it, unsaid: staff deactivate an
    account (audited, the trader told of its live orders), as they revoke a key or end a session."""
    account = make_kite_account(trader, api_key=KEY, api_secret=SECRET)
    client.force_login(staff)
    assert client.get(reverse("admin:accounts_brokeraccount_delete", args=[account.pk])).status_code == 403
    assert (
        client.post(reverse("admin:accounts_brokeraccount_delete", args=[account.pk]), {"post": "yes"}).status_code
        == 403
    )
    bulk = {"action": "delete_selected", "_selected_action": [account.pk], "post": "yes"}
    client.post(reverse("admin:accounts_brokeraccount_changelist"), bulk)
    assert BrokerAccount.objects.filter(pk=account.pk).exists()
    changelist = client.get(reverse("admin:accounts_brokeraccount_changelist"))
    assert "delete_selected" not in changelist.content.decode()


def test_staff_editing_an_account_in_admin_keep_what_its_trader_changed_meanwhile(client, staff, trader, account):
    """Review: the admin's save wrote back every limit, and whether the account is active, as its page
    showed them when staff opened it. A trader who lowered their largest order value and then
    deactivated the account (to stop a strategy trading on it) while staff fixed its label had both
    undone: the account was live again at the old limit, audited as staff's doing. Only what staff
    changed on the page is changed."""
    from accounts import services

    client.force_login(staff)
    url = reverse("admin:accounts_brokeraccount_change", args=[account.pk])
    data = page_form_data(client.get(url))  # the page staff opened
    services.broker_account_update(account=account, actor=trader, max_order_value=Decimal("10000"))
    services.broker_account_update(account=account, actor=trader, allowed_products=["MIS"])
    services.broker_account_set_active(account=account, actor=trader, active=False)

    answer = client.post(url, {**data, "label": "Paper (desk)"})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    account.refresh_from_db()
    assert account.label == "Paper (desk)"
    assert account.max_order_value == Decimal("10000") and account.allowed_products == ["MIS"]
    assert account.is_active is False
    changed = AuditLog.objects.filter(action=AuditLog.Action.BROKER_ACCOUNT_CHANGED, actor=staff).get()
    assert changed.data["fields"] == ["label"]
    assert not AuditLog.objects.filter(action=AuditLog.Action.BROKER_ACCOUNT_REACTIVATED).exists()

    # What staff do change is still changed, the account's activity among it.
    data = page_form_data(client.get(url))
    assert client.post(url, {**data, "is_active": "on", "max_quantity": "50"}).status_code == 302
    account.refresh_from_db()
    assert account.is_active is True and account.max_quantity == 50
    assert account.max_order_value == Decimal("10000") and account.allowed_products == ["MIS"]


def test_a_trader_saving_their_account_keeps_the_limits_staff_changed_meanwhile(trader_client, staff, trader, account):
    """The trader's edit page wrote back every limit as it showed them when opened (the admin's page no
    longer does, since 9d082bb). Staff lowering the account's largest order value, or taking a product
    off it, while its trader had the page open to rename it had both undone, the change audited as the
    trader's. Only what the trader changed on the page is changed."""
    from accounts import services

    limits = {"max_order_value": Decimal("250000.50"), "max_quantity": 900, "copy_multiplier": Decimal("1.5")}
    services.broker_account_update(account=account, actor=trader, **limits)
    url = reverse("accounts:broker_edit", args=[account.pk])
    data = page_form_data(trader_client.get(url))  # the page the trader opened
    services.broker_account_update(account=account, actor=staff, max_order_value=Decimal("10000"))
    services.broker_account_update(account=account, actor=staff, allowed_products=["MIS"])

    answer = trader_client.post(url, {**data, "label": ["Paper (renamed)"]})
    assert answer.status_code == 302, answer.context["form"].errors
    account.refresh_from_db()
    assert account.label == "Paper (renamed)"
    assert account.max_order_value == Decimal("10000") and account.allowed_products == ["MIS"]
    assert account.max_quantity == 900 and account.copy_multiplier == Decimal("1.5")
    changed = AuditLog.objects.filter(action=AuditLog.Action.BROKER_ACCOUNT_CHANGED, actor=trader).order_by("pk").last()
    assert changed.data["fields"] == ["label"]

    # What the trader does change is still changed.
    data = page_form_data(trader_client.get(url))
    assert trader_client.post(url, {**data, "max_quantity": ["50"]}).status_code == 302
    account.refresh_from_db()
    assert account.max_quantity == 50 and account.max_order_value == Decimal("10000")


def test_new_credentials_that_end_the_session_say_so_on_the_accounts_page(trader_client, trader):
    # The session made with the old credentials is ended with the reason "connect again", but the
    # page said only "Disconnected" (a session's reason was shown for a failed login only): a trader
    # who had not disconnected was not told why, nor to connect again.
    from datetime import timedelta

    from django.utils import timezone

    from accounts.crypto import Sealed
    from brokers.models import BrokerSession

    account = make_kite_account(trader, api_key=KEY, api_secret=SECRET)
    BrokerSession.objects.create(
        account=account,
        tokens=Sealed.seal({"access_token": "old-token"}),
        active_for=account.pk,
        expires_at=timezone.now() + timedelta(hours=12),
    )
    url = reverse("accounts:broker_edit", args=[account.pk])
    response = trader_client.post(url, create_form(api_key="", api_secret="NEW-SECRET"), follow=True)
    assert BrokerSession.objects.get(account=account).status == BrokerSession.Status.REVOKED
    row = response.content.decode().split(f'id="session-{account.pk}"')[1].split("</td>")[0]
    assert "Disconnected" in row and "credentials changed; connect again" in row
