"""AccountBroker against the paper exchange: sessions, retries, budgets, lost answers."""

import threading
import time
from decimal import Decimal

import pytest
from django.db import connection

from accounts.models import AuditLog
from brokers import ratelimit, services
from brokers.base import OrderRequest, Status
from brokers.client import AccountBroker
from brokers.errors import BrokerUnavailable, NetworkError, OrderRejected, RateLimited, RejectKind, SendTooLate
from brokers.models import BrokerSession
from brokers.paper import engine
from brokers.paper.adapter import PaperBroker
from brokers.paper.models import PaperClient, PaperOrder
from tradingplatform.testing import requires_redis


def request(tag="T-1", **overrides):
    values = {
        "exchange": "NSE",
        "tradingsymbol": "INFY",
        "side": "BUY",
        "quantity": 1,
        "order_type": "MARKET",
        "product": "MIS",
        "tag": tag,
    }
    values.update(overrides)
    return OrderRequest(**values)


def knobs(account, **values):
    PaperClient.objects.filter(user_id=account.client_id).update(**values)


def no_sleep(_seconds):
    return None


def test_first_call_logs_in_and_later_calls_reuse_the_session(paper_account):
    broker = AccountBroker(paper_account)
    placed = broker.place_order(request())
    assert broker.order(placed.broker_order_id).status == Status.FILLED
    AccountBroker(paper_account).orders()
    assert BrokerSession.objects.filter(account=paper_account).count() == 1
    assert AuditLog.objects.filter(action=AuditLog.Action.BROKER_SESSION_LOGIN).count() == 1


def test_a_lost_answer_is_resolved_by_tag_not_by_sending_again(paper_account):
    AccountBroker(paper_account).orders()  # log in
    knobs(paper_account, timeout_rate=1)
    placed = AccountBroker(paper_account, sleep=no_sleep).place_order(request(tag="LOST-1"))
    orders = PaperOrder.objects.filter(tag="LOST-1")
    assert orders.count() == 1
    assert placed.broker_order_id == orders.get().order_id


def test_a_broker_that_keeps_failing_leaves_the_outcome_unknown_and_nothing_doubled(paper_account):
    from brokers.errors import OutcomeUnknown

    AccountBroker(paper_account).orders()
    knobs(paper_account, error_rate=1)
    with pytest.raises(OutcomeUnknown):
        AccountBroker(paper_account, sleep=no_sleep).place_order(request(tag="ERR-1"))
    assert not PaperOrder.objects.filter(tag="ERR-1").exists()


def test_reads_retry_transient_errors_then_give_up(paper_account):
    AccountBroker(paper_account).orders()
    knobs(paper_account, error_rate=1)
    calls = []
    with pytest.raises(BrokerUnavailable):
        AccountBroker(paper_account, sleep=calls.append, attempts=3).positions()
    assert len(calls) == 2  # three attempts, two backoffs


def test_rejections_are_typed_and_not_retried(paper_account):
    with pytest.raises(OrderRejected) as error:
        AccountBroker(paper_account).place_order(request(order_type="LIMIT", price=Decimal("1500.03")))
    assert error.value.kind == RejectKind.TICK_SIZE
    with pytest.raises(OrderRejected) as error:
        AccountBroker(paper_account).place_order(request(tag="BAND", order_type="LIMIT", price=Decimal("2500")))
    assert error.value.kind == RejectKind.PRICE_BAND and error.value.broker_order_id
    assert PaperOrder.objects.filter(tag="BAND").count() == 1


def test_an_expired_session_is_renewed_once_and_the_call_succeeds(paper_account, paper_client):
    broker = AccountBroker(paper_account)
    broker.orders()
    first = BrokerSession.objects.get(account=paper_account)
    engine.session_expire_now(client=paper_client)  # the broker ends it; our row still says active
    broker.positions()
    first.refresh_from_db()
    assert first.status == BrokerSession.Status.EXPIRED
    assert BrokerSession.objects.filter(account=paper_account, status="active").count() == 1
    assert AuditLog.objects.filter(action=AuditLog.Action.BROKER_SESSION_REFRESHED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_auth_failures_cause_one_login(paper_account, paper_client):
    AccountBroker(paper_account).orders()
    engine.session_expire_now(client=paper_client)
    errors, barrier = [], threading.Barrier(6)

    def work():
        try:
            barrier.wait()
            AccountBroker(paper_account).orders()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert BrokerSession.objects.filter(account=paper_account).count() == 2  # the first and one renewal
    assert AuditLog.objects.filter(action=AuditLog.Action.BROKER_SESSION_REFRESHED).count() == 1


def test_budget_refuses_or_waits_as_the_caller_chooses(paper_account, settings):
    settings.BROKER_RATE_LIMITS = {"paper": {"orders": [(2, 1)]}}
    AccountBroker(paper_account).orders()
    refusing = AccountBroker(paper_account, wait_for_budget=False, attempts=1)
    refusing.place_order(request(tag="B1"))
    refusing.place_order(request(tag="B2"))
    with pytest.raises(RateLimited) as error:
        refusing.place_order(request(tag="B3"))
    assert 0 < error.value.retry_after <= 1
    waiting = AccountBroker(paper_account, wait_for_budget=True)
    waiting.place_order(request(tag="B4"))
    assert waiting.budget_wait_s > 0
    assert PaperOrder.objects.filter(tag__in=["B1", "B2", "B4"]).count() == 3
    assert not PaperOrder.objects.filter(tag="B3").exists()


def test_an_order_whose_time_runs_out_before_a_slot_frees_neither_waits_nor_takes_one(paper_account, settings):
    """An order not to be sent after ``send_by`` is not kept waiting for a slot that frees later,
    nor does it take that slot and then not send: the account's next order would wait for it."""
    settings.BROKER_RATE_LIMITS = {"paper": {"orders": [(1, 1)]}}
    AccountBroker(paper_account).orders()
    AccountBroker(paper_account).place_order(request(tag="IN-TIME"))  # the window's one slot
    taken_at = time.monotonic()
    with pytest.raises(SendTooLate):
        AccountBroker(paper_account).place_order(request(tag="TOO-LATE"), send_by=time.time() + 0.3)
    assert time.monotonic() - taken_at < 0.5  # refused at once, not after waiting the second out
    time.sleep(max(0.0, taken_at + 1.05 - time.monotonic()))
    assert ratelimit.take(paper_account.pk, "paper", "orders", [(1, 1)]) == 0  # the freed slot is left
    assert not PaperOrder.objects.filter(tag="TOO-LATE").exists()


@requires_redis
def test_a_first_call_reads_its_cached_session_in_the_round_trip_that_takes_its_slot(paper_account, monkeypatch):
    from django.core.cache import cache

    from brokers import ratelimit

    AccountBroker(paper_account).orders()  # logs in: the session is cached
    session_key = f"brokersession:{paper_account.pk}"
    read = cache.get
    monkeypatch.setattr(
        cache, "get", lambda key, *a, **k: pytest.fail("read apart") if key == session_key else read(key, *a, **k)
    )
    took = []
    monkeypatch.setattr(ratelimit, "take", lambda *a, **k: took.append(a) or 0)
    placed = AccountBroker(paper_account).place_order(request(tag="ONE-TRIP"))
    assert PaperOrder.objects.get(tag="ONE-TRIP").order_id == placed.broker_order_id
    assert took == []  # its slot was taken with the session's read, not on its own


def test_broker_429_is_retried_after_the_wait(paper_account):
    AccountBroker(paper_account).orders()
    knobs(paper_account, rate_limit_per_s=1)
    waits = []
    broker = AccountBroker(paper_account, sleep=waits.append)
    tags = [f"R{i}" for i in range(10)]
    with pytest.raises(RateLimited):
        for tag in tags:  # two in one second of the exchange's clock (not two calls across a second's edge)
            refused = tag
            broker.place_order(request(tag=tag))
    assert waits and all(wait >= 1.0 for wait in waits)
    assert not PaperOrder.objects.filter(tag=refused).exists()  # refused, retried, refused: never placed
    assert PaperOrder.objects.filter(tag__in=tags).count() == tags.index(refused)


def test_a_broker_asking_for_a_wait_longer_than_the_caller_waits_refuses_at_once(paper_account, monkeypatch):
    """A 429 whose Retry-After is longer than the caller waits for a budget (an hour, from a
    broker in trouble) is not slept through in a request or a cycle: it is the refusal."""

    def refused(self, *args):
        raise RateLimited("come back in an hour", retry_after=3600)

    monkeypatch.setattr(PaperBroker, "place_order", refused)
    monkeypatch.setattr(PaperBroker, "orders", refused)
    waits = []
    broker = AccountBroker(paper_account, sleep=waits.append, budget_timeout_s=10)
    for call in (lambda: broker.place_order(request(tag="LONG-WAIT")), broker.orders):
        with pytest.raises(RateLimited):
            call()
    assert waits == []


def test_deactivated_account_gets_no_session(paper_account):
    paper_account.is_active = False
    with pytest.raises(services.AuthError):
        AccountBroker(paper_account).orders()


def test_network_error_is_transient_and_typed():
    assert NetworkError.permanent is False and OrderRejected.permanent is True


def test_when_the_broker_cannot_be_asked_the_outcome_is_unknown(paper_account):
    from brokers.errors import OutcomeUnknown

    AccountBroker(paper_account).orders()
    knobs(paper_account, timeout_rate=1, error_rate=0)
    broker = AccountBroker(paper_account, sleep=no_sleep)
    original = broker.find_by_tag

    def lookup_fails(tag):
        knobs(paper_account, error_rate=1)
        return original(tag)

    broker.find_by_tag = lookup_fails
    with pytest.raises(OutcomeUnknown):
        broker.place_order(request(tag="UNK-1"))
    assert PaperOrder.objects.filter(tag="UNK-1").count() == 1  # it was placed; we just could not know


def test_an_unknown_instrument_is_rejected_and_nothing_placed(paper_account):
    with pytest.raises(OrderRejected) as error:
        AccountBroker(paper_account).place_order(request(tag="NOPE-1", tradingsymbol="NOPE"))
    assert error.value.kind == RejectKind.INSTRUMENT and "NOPE" in error.value.message
    assert not PaperOrder.objects.filter(tag="NOPE-1").exists()


def test_a_placement_after_the_latency_knob_fills_at_the_quote_it_arrives_to(paper_account, monkeypatch):
    AccountBroker(paper_account).orders()
    knobs(paper_account, latency_ms=1)

    slept, sleep = [], engine.time.sleep

    def the_market_moves_meanwhile(seconds):
        if slept:
            return sleep(seconds)
        slept.append(seconds)
        engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1510"), bid=None, ask=None)

    monkeypatch.setattr(engine.time, "sleep", the_market_moves_meanwhile)
    placed = AccountBroker(paper_account).place_order(request(tag="LATE-1"))
    assert slept == [0.001]  # the knob's wait, once
    assert placed.state.average_price == Decimal("1510.1000")
    assert PaperOrder.objects.get(tag="LATE-1").average_price == Decimal("1510.1")


def test_a_placement_on_a_session_the_broker_ended_renews_it_and_places_once(paper_account, paper_client):
    AccountBroker(paper_account).orders()
    engine.session_expire_now(client=paper_client)
    with pytest.raises(engine.TokenException):
        engine.client_and_instrument(
            access_token=services.session_live(paper_account).access_token, exchange="NSE", tradingsymbol="INFY"
        )
    placed = AccountBroker(paper_account).place_order(request(tag="RENEWED-1"))
    assert PaperOrder.objects.get(tag="RENEWED-1").order_id == placed.broker_order_id
    assert AuditLog.objects.filter(action=AuditLog.Action.BROKER_SESSION_REFRESHED).count() == 1


# --- Sent with other accounts' orders: place_together, then place_order(first=...) -------------


def test_orders_of_several_accounts_go_together_and_each_goes_on_from_its_first_answer(paper_account, trader):
    from accounts.tests.factories import make_broker_account
    from brokers.client import BUDGET_TAKEN

    other = make_broker_account(trader, broker="paper", client_id="PAPER-C2")
    knobbed = make_broker_account(trader, broker="paper", client_id="PAPER-C3")
    brokers = [AccountBroker(account, sleep=no_sleep) for account in (paper_account, other, knobbed)]
    for broker in brokers:
        broker.orders()  # logged in: a session at hand
    knobs(knobbed, latency_ms=1)
    calls = [(broker, request(tag=f"TOG-{i}")) for i, broker in enumerate(brokers)]
    calls.append((brokers[0], request(tag="TOG-BAD", tradingsymbol="NOSUCH")))

    first = AccountBroker.place_together(calls)

    assert [type(answer).__name__ for answer in first[:2]] == ["PlacedOrder", "PlacedOrder"]
    assert first[2] is BUDGET_TAKEN and isinstance(first[3], OrderRejected)
    assert sorted(PaperOrder.objects.values_list("tag", flat=True)) == ["TOG-0", "TOG-1"]
    # Each goes on from there: an answer is the answer, the one left alone is sent now, once.
    assert brokers[0].place_order(calls[0][1], first=first[0]) is first[0]
    placed = brokers[2].place_order(calls[2][1], first=first[2])
    assert PaperOrder.objects.get(tag="TOG-2").order_id == placed.broker_order_id
    with pytest.raises(OrderRejected):
        brokers[0].place_order(calls[3][1], first=first[3])
    assert PaperOrder.objects.count() == 3


def test_a_first_answer_that_the_exchange_failed_is_looked_up_before_the_order_is_sent_again(paper_account):
    broker = AccountBroker(paper_account, sleep=no_sleep)
    broker.orders()
    sent = broker.place_order(request(tag="ONCE-1"))  # the exchange took it, its answer was lost
    found = broker.place_order(request(tag="ONCE-1"), first=BrokerUnavailable("the paper exchange failed"))
    assert found.broker_order_id == sent.broker_order_id
    again = broker.place_order(request(tag="ONCE-2"), first=BrokerUnavailable("the paper exchange failed"))
    assert PaperOrder.objects.get(tag="ONCE-2").order_id == again.broker_order_id  # not there: sent
    assert PaperOrder.objects.count() == 2


def test_a_login_that_times_out_before_an_order_is_sent_is_not_a_lost_answer(paper_account, monkeypatch):
    """The session's login timing out (or its lock staying busy) comes before the order is sent:
    nothing can be at the broker, so the order is not left 'submitted, answer lost' to be looked
    up by its tag. It is tried again (the login works the second time) and placed once; a login
    that keeps failing is the placement's failure, never an unknown outcome."""
    from brokers.errors import OutcomeUnknown

    login, logins = PaperBroker.login, []

    def flaky(self):
        logins.append(self.client_id)
        if len(logins) == 1:
            raise NetworkError("the login timed out")
        return login(self)

    monkeypatch.setattr(PaperBroker, "login", flaky)
    placed = AccountBroker(paper_account, sleep=no_sleep).place_order(request(tag="LOGIN-1"))
    assert PaperOrder.objects.get(tag="LOGIN-1").order_id == placed.broker_order_id

    services.session_revoke(paper_account, reason="test")
    monkeypatch.setattr(PaperBroker, "login", lambda self: (_ for _ in ()).throw(NetworkError("timed out")))
    with pytest.raises(NetworkError) as raised:
        AccountBroker(paper_account, sleep=no_sleep).place_order(request(tag="LOGIN-2"))
    assert not isinstance(raised.value, OutcomeUnknown)
    assert not PaperOrder.objects.filter(tag="LOGIN-2").exists()
