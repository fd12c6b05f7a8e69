"""The session manager and the accounts-page connect flows."""

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditLog
from accounts.tests.factories import make_broker_account, make_kite_account
from brokers import services
from brokers.errors import AuthError
from brokers.models import BrokerSession
from brokers.paper.models import PaperToken


def test_session_live_logs_in_once_and_reuses(paper_account):
    first = services.session_live(paper_account)
    second = services.session_live(paper_account)
    assert first.session_id == second.session_id
    session = BrokerSession.objects.get()
    assert session.status == "active" and session.active_for == paper_account.pk
    assert session.tokens.reveal()["access_token"] == first.access_token
    assert first.access_token not in repr(first) and first.access_token not in str(session.tokens)


def test_a_sealed_token_is_opened_once_and_an_ended_session_is_not_reused(paper_account, monkeypatch):
    from accounts.crypto import Sealed

    first = services.session_live(paper_account)
    opened, reveal = [], Sealed.reveal
    monkeypatch.setattr(Sealed, "reveal", lambda self: opened.append(self.token) or reveal(self))
    assert services.session_live(paper_account) == services.session_live(paper_account) == first
    assert len(opened) == 1  # from the cache, opened once
    services.session_disconnect(account=paper_account, actor=None)
    second = services.session_live(paper_account)  # logs in again: a new session, a new token
    assert second.session_id != first.session_id and second.access_token != first.access_token
    assert services.session_live(paper_account) == second


def test_tokens_are_stored_encrypted(paper_account):
    live = services.session_live(paper_account)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT tokens FROM brokers_brokersession")
        assert live.access_token not in cursor.fetchone()[0]


def test_an_expired_session_is_replaced_and_the_expiry_recorded(paper_account):
    first = services.session_live(paper_account)
    BrokerSession.objects.filter(pk=first.session_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    services.cache.delete(services._cache_key(paper_account.pk))
    second = services.session_live(paper_account)
    assert second.session_id != first.session_id
    assert BrokerSession.objects.get(pk=first.session_id).status == "expired"
    actions = list(AuditLog.objects.filter(target_id=str(paper_account.pk)).values_list("action", flat=True))
    assert "broker_session_expired" in actions and "broker_session_refreshed" in actions


def test_periodic_expiry_marks_due_sessions(paper_account):
    live = services.session_live(paper_account)
    BrokerSession.objects.filter(pk=live.session_id).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert services.sessions_expire_due() == 1
    assert services.sessions_expire_due() == 0
    assert BrokerSession.objects.get(pk=live.session_id).status == "expired"


def test_kite_needs_the_trader_to_connect(trader):
    account = make_kite_account(trader)
    with pytest.raises(AuthError, match="reconnect"):
        services.session_live(account)
    assert not BrokerSession.objects.exists()


def test_session_states_for_the_accounts_page(trader, paper_account, settings):
    kite = make_kite_account(trader, client_id="K2")
    idle = make_broker_account(trader, client_id="P-IDLE")
    live = services.session_live(paper_account)
    # Hours from its end, whatever the time of day (a session made 05:00-06:00 IST ends at 06:00).
    BrokerSession.objects.filter(pk=live.session_id).update(expires_at=timezone.now() + timedelta(hours=6))
    BrokerSession.objects.create(account=kite, status="failed", last_error="Invalid checksum")
    states = services.session_states([paper_account, kite, idle])
    assert states[paper_account.pk].state == "active"
    assert states[kite.pk].state == "failed" and states[kite.pk].reason == "Invalid checksum"
    assert states[idle.pk].state == "none"
    BrokerSession.objects.filter(pk=live.session_id).update(expires_at=timezone.now() + timedelta(minutes=5))
    assert services.session_states([paper_account])[paper_account.pk].state == "expiring"
    BrokerSession.objects.filter(pk=live.session_id).update(expires_at=timezone.now() - timedelta(minutes=5))
    assert services.session_states([paper_account])[paper_account.pk].state == "expired"


def test_a_failed_login_shows_over_an_expired_session_not_over_a_live_one(trader, paper_account):
    live = services.session_live(paper_account)
    BrokerSession.objects.create(account=paper_account, status="failed", last_error="Invalid checksum")
    assert services.session_states([paper_account])[paper_account.pk].state in ("active", "expiring")
    BrokerSession.objects.filter(pk=live.session_id).update(expires_at=timezone.now() - timedelta(minutes=5))
    state = services.session_states([paper_account])[paper_account.pk]
    assert state.state == "failed" and state.reason == "Invalid checksum"


# --- Pages ---------------------------------------------------------------------------------


def test_accounts_page_shows_session_state_and_connect(trader_client, paper_account):
    page = trader_client.get(reverse("accounts:broker_list")).content.decode()
    assert "Not connected" in page and reverse("brokers:connect", args=[paper_account.pk]) in page
    response = trader_client.post(reverse("brokers:connect", args=[paper_account.pk]))
    assert response.status_code == 302
    page = trader_client.get(reverse("accounts:broker_list")).content.decode()
    assert ("Connected" in page or "Expiring soon" in page) and "Disconnect" in page  # 05:00-06:00 IST: expiring
    assert AuditLog.objects.filter(action="broker_session_login", actor__username="trader").exists()


def _connect_form(client, account) -> dict:
    """The accounts page's Connect / Reconnect form for ``account``, as the page posts it."""
    page = client.get(reverse("accounts:broker_list")).content.decode()
    action = reverse("brokers:connect", args=[account.pk])
    form = page[page.index(f'action="{action}"') :].split("</form>")[0]
    match = re.search(r'name="replaces" value="([^"]*)"', form)
    return {"replaces": match.group(1)} if match else {}


def test_the_connect_form_sent_twice_logs_in_once(trader_client, paper_account):
    """A double click on Connect (or the same page's Reconnect in two tabs) logged in twice: the
    second send ended the session the first had just made ("replaced by a reconnect") and logged in
    again, a second login at the broker and a second audit entry."""
    url = reverse("brokers:connect", args=[paper_account.pk])
    form = _connect_form(trader_client, paper_account)
    assert trader_client.post(url, form).status_code == 302
    response = trader_client.post(url, form, follow=True)
    assert sorted(BrokerSession.objects.values_list("status", flat=True)) == ["active"]
    assert AuditLog.objects.filter(action="broker_session_login").count() == 1
    assert "was connected already" in response.content.decode()
    # The page as it is now: its Reconnect replaces the live session.
    first = BrokerSession.objects.get()
    trader_client.post(url, _connect_form(trader_client, paper_account))
    assert BrokerSession.objects.get(pk=first.pk).status == "revoked"
    assert BrokerSession.objects.filter(status="active").exclude(pk=first.pk).count() == 1
    assert AuditLog.objects.filter(action="broker_session_login").count() == 2


def test_a_reconnect_of_a_page_that_showed_a_session_since_ended_logs_in(trader_client, paper_account):
    """The page's session ended meanwhile (a disconnect in another tab): nothing is live, so its
    Reconnect connects, as the trader asked."""
    shown = services.session_live(paper_account)
    form = _connect_form(trader_client, paper_account)
    assert form == {"replaces": str(shown.session_id)}
    services.session_disconnect(account=paper_account, actor=None)
    trader_client.post(reverse("brokers:connect", args=[paper_account.pk]), form)
    assert BrokerSession.objects.filter(status="active").exclude(pk=shown.session_id).count() == 1


def test_disconnect_ends_the_session_at_the_broker_too(trader_client, paper_account):
    services.session_live(paper_account)
    trader_client.post(reverse("brokers:disconnect", args=[paper_account.pk]))
    assert BrokerSession.objects.get().status == "revoked"
    assert PaperToken.objects.filter(kind="access", revoked_at__isnull=False).count() == 1


def test_a_deactivated_accounts_session_can_still_be_disconnected_from_its_page(trader_client, trader, paper_account):
    """Deactivating keeps the session (reactivated, the account trades again on it); its page hid
    Disconnect, so the trader could not log the token out before it expired."""
    from accounts import services as account_services

    services.session_live(paper_account)
    account_services.broker_account_set_active(account=paper_account, actor=trader, active=False)
    page = trader_client.get(reverse("accounts:broker_list")).content.decode()
    assert reverse("brokers:disconnect", args=[paper_account.pk]) in page
    assert reverse("brokers:connect", args=[paper_account.pk]) not in page
    trader_client.post(reverse("brokers:disconnect", args=[paper_account.pk]))
    assert BrokerSession.objects.get().status == "revoked"


def test_new_credentials_end_the_session_made_with_the_old_ones(kite_on_face, trader):
    """A Kite token is its API key's: after the key changed, the page went on saying "Connected"
    until a call failed, which may be a stop-loss's. The session ends with the change; the page
    says to connect again."""
    from accounts import services as account_services

    live = ("active", "expiring")  # a session made 05:00-06:00 IST ends at 06:00: "expiring" then
    assert services.session_states([kite_on_face])[kite_on_face.pk].state in live
    account_services.broker_account_update(account=kite_on_face, actor=trader, label="Renamed")
    assert services.session_states([kite_on_face])[kite_on_face.pk].state in live  # no credentials: kept

    account_services.broker_account_update(account=kite_on_face, actor=trader, credentials={"api_key": "new-key"})
    assert BrokerSession.objects.get(account=kite_on_face).status == "revoked"
    assert services.session_states([kite_on_face])[kite_on_face.pk].state != "active"
    with pytest.raises(AuthError):
        services.session_live(kite_on_face)
    audit = AuditLog.objects.filter(action="broker_account_changed").latest("pk")
    assert audit.data == {"fields": [], "credentials_changed": True, "session_ended": True}


@pytest.mark.parametrize("name", ["brokers:connect", "brokers:disconnect"])
def test_another_traders_account_is_404(trader_client, other_trader, name):
    theirs = make_broker_account(other_trader, client_id="THEIRS")
    assert trader_client.post(reverse(name, args=[theirs.pk])).status_code == 404
    assert not BrokerSession.objects.exists()


@pytest.mark.parametrize("name", ["brokers:connect", "brokers:disconnect"])
def test_connect_is_post_only(trader_client, paper_account, name):
    assert trader_client.get(reverse(name, args=[paper_account.pk])).status_code == 405


def test_kite_connect_redirects_to_the_login_page_with_a_state(trader_client, trader, settings):
    settings.KITE_LOGIN_URL = "https://kite.example/connect/login"
    account = make_kite_account(trader, api_key="my-api-key")
    response = trader_client.post(reverse("brokers:connect", args=[account.pk]))
    assert response.status_code == 302
    url = urlsplit(response.url)
    assert url.netloc == "kite.example"
    query = parse_qs(url.query)
    assert query["api_key"] == ["my-api-key"] and query["v"] == ["3"]
    assert "state" in parse_qs(query["redirect_params"][0])


@pytest.mark.parametrize("state", ["", "forged.state", "x"])
def test_callback_refuses_a_state_it_did_not_issue(trader_client, trader, state):
    make_kite_account(trader)
    response = trader_client.get(
        reverse("brokers:login_callback"), {"state": state, "request_token": "t", "status": "success"}
    )
    assert response.status_code == 302
    assert not BrokerSession.objects.exists()


def test_callback_state_is_one_time_and_bound_to_the_browser(client, trader, other_trader, settings):
    account = make_kite_account(trader)
    client.force_login(trader)
    response = client.post(reverse("brokers:connect", args=[account.pk]))
    state = parse_qs(parse_qs(urlsplit(response.url).query)["redirect_params"][0])["state"][0]
    # Another user's browser cannot use it.
    other = type(client)()
    other.force_login(other_trader)
    other.get(reverse("brokers:login_callback"), {"state": state, "request_token": "t", "status": "success"})
    assert not BrokerSession.objects.exists()


def test_callback_refuses_a_state_whose_signature_is_not_ascii(client, trader):
    """Its nonce is this browser's, its signature tampered with (characters outside ASCII): refused
    as any forged state, not a 500."""
    account = make_kite_account(trader)
    client.force_login(trader)
    response = client.post(reverse("brokers:connect", args=[account.pk]))
    state = parse_qs(parse_qs(urlsplit(response.url).query)["redirect_params"][0])["state"][0]
    nonce = state.partition(".")[0]
    response = client.get(
        reverse("brokers:login_callback"), {"state": f"{nonce}.é", "request_token": "t", "status": "success"}
    )
    assert response.status_code == 302
    assert not BrokerSession.objects.exists()


def test_a_reconnect_waits_for_a_worker_logging_in_to_the_account(paper_account, monkeypatch):
    """The trader's Connect logs in as a worker renewing the session does: under the account's
    login lock. While a worker holds it (mid-login), a reconnect neither logs in beside it (two
    logins at once, two sessions racing for the one active slot) nor ends the session the worker is
    about to replace: it waits, and says so when the lock stays taken."""
    from brokers.errors import BrokerUnavailable
    from brokers.paper.adapter import PaperBroker
    from tradingplatform import locks

    first = services.session_live(paper_account)
    logins = []
    login = PaperBroker.login
    monkeypatch.setattr(PaperBroker, "login", lambda self: logins.append(1) or login(self))
    monkeypatch.setattr(services, "LOGIN_LOCK_WAIT_S", 0.3)
    token = locks.acquire(f"broker-login:{paper_account.pk}", ttl_s=30)  # a worker logging in
    try:
        with pytest.raises(BrokerUnavailable):
            services.session_connect(account=paper_account, actor=paper_account.owner)
        assert logins == []
        assert BrokerSession.objects.get(pk=first.session_id).status == "active"
    finally:
        locks.release(f"broker-login:{paper_account.pk}", token)
    connected = services.session_connect(account=paper_account, actor=paper_account.owner)  # the lock free
    assert logins == [1] and connected.session_id != first.session_id
    assert BrokerSession.objects.get(pk=first.session_id).status == "revoked"


def test_a_session_ended_while_it_was_being_read_is_not_left_in_the_cache(kite_on_face, monkeypatch):
    """A worker reads the active session from the database just as the trader's credentials change
    (or a disconnect) ends it: the session it caches after that end must not be what every call
    of the next half-minute uses, with the old token, the account's page saying "not connected"."""
    services.cache.delete(services._cache_key(kite_on_face.pk))
    active = services._active

    def read_then_ended(account_id):
        session = active(account_id)
        monkeypatch.setattr(services, "_active", active)
        services.session_revoke(kite_on_face, reason="credentials changed")  # meanwhile, elsewhere
        return session

    monkeypatch.setattr(services, "_active", read_then_ended)
    services.session_live(kite_on_face)  # it read the row before its end: this one call has it
    assert BrokerSession.objects.get(account=kite_on_face).status == "revoked"
    with pytest.raises(AuthError):
        services.session_live(kite_on_face)
    assert services.sessions_live([kite_on_face]) == {}


def test_a_session_ended_while_many_were_being_read_is_not_left_in_the_cache(paper_account, monkeypatch):
    """The same for ``sessions_live`` (the monitoring cycle's read of many accounts' sessions)."""
    first = services.session_live(paper_account)
    key = services._cache_key(paper_account.pk)
    services.cache.delete(key)
    cached_form = services._cached_form

    def read_then_ended(session):
        monkeypatch.setattr(services, "_cached_form", cached_form)
        services.session_disconnect(account=paper_account, actor=None)  # meanwhile, elsewhere
        return cached_form(session)

    monkeypatch.setattr(services, "_cached_form", read_then_ended)
    assert services.sessions_live([paper_account])[paper_account.pk].session_id == first.session_id
    assert services.cache.get(key) is None
    assert services.session_live(paper_account).session_id != first.session_id  # a new login


def test_a_call_failing_on_the_token_a_disconnect_logged_out_leaves_the_account_disconnected(
    kite_on_face, trader, monkeypatch
):
    """A disconnect logged the token out at Kite before it ended the session here: a worker's call
    in flight with that token failed meanwhile and its renewal ended the session as "expired" (the
    call's error as its reason). The disconnect then found it ended already: no "Disconnected"
    message, no audit entry by the trader, and the accounts page said "Expired" in red."""
    from brokers.client import AccountBroker
    from brokers.kite.adapter import KiteBroker

    worker = AccountBroker(kite_on_face, attempts=1, session=services.session_live(kite_on_face))  # mid-run
    logout = KiteBroker.logout

    def logout_while_the_worker_calls(self):
        logout(self)
        with pytest.raises(AuthError):
            worker.positions()

    monkeypatch.setattr(KiteBroker, "logout", logout_while_the_worker_calls)
    assert services.session_disconnect(account=kite_on_face, actor=trader)
    session = BrokerSession.objects.get(account=kite_on_face)
    assert (session.status, session.last_error) == ("revoked", "disconnected by the trader")
    assert services.session_states([kite_on_face])[kite_on_face.pk].label == "Disconnected"
    assert AuditLog.objects.filter(action="broker_session_logout", actor=trader).exists()
    assert not AuditLog.objects.filter(action="broker_session_expired").exists()
