"""A strategy's retry and re-entry limits hold whatever replaces an order and wherever a worker stops."""

from decimal import Decimal

from brokers.paper import engine
from brokers.paper.models import PaperClient
from monitoring import cycle
from orders import sources
from orders.models import Order
from orders.tests.factories import place

from .test_strategy_exits import quote

D = Decimal


def rejecting(account, rate):
    engine.client_get_or_create(user_id=account.client_id)
    PaperClient.objects.filter(user_id=account.client_id).update(rejection_rate=rate)


def backed_off(order):
    """As if its retry's backoff had long passed."""
    Order.objects.filter(pk=order.pk).update(updated_at=order.updated_at.replace(year=2020))


def test_a_retried_reentry_is_the_reentry_still_and_does_not_reenter_past_the_limit(trader, account):
    """max_reentries=1: the stop-loss fills, the re-entry is refused (RMS) and retried; the retry
    fills and its own stop-loss fills. The strategy has re-entered once: nothing more is placed."""
    strategy, _ = sources.strategy_save(
        owner=trader,
        name="Reenter",
        account_ids=[account.pk],
        stop_loss=D("1"),
        reentry_enabled=True,
        max_reentries=1,
        max_retries=1,
        retryable_kinds=["rms"],
    )
    quote("1500")
    first = place(trader, account, quantity=10, strategy=strategy, source="strategy")
    cycle.account_monitor(account=account)  # its stop-loss
    rejecting(account, 1)
    quote("1480")  # the stop-loss fills; the re-entry is refused
    cycle.account_monitor(account=account)
    reentry = Order.objects.get(parent=first, role="entry")
    assert reentry.status == Order.Status.REJECTED and reentry.reentry_count == 1
    rejecting(account, 0)
    backed_off(reentry)
    cycle.account_monitor(account=account)  # step 9 retries the re-entry
    retry = Order.objects.get(parent=reentry, role="entry")
    assert retry.status == Order.Status.FILLED
    assert (retry.retry_count, retry.reentry_count) == (1, 1)
    cycle.account_monitor(account=account)  # the retry's stop-loss
    quote("1460")  # it fills
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    entries = Order.objects.filter(account=account, role="entry")
    assert entries.count() == 3  # the first, its re-entry and the re-entry's retry: no second re-entry


def test_a_retry_placed_just_before_the_worker_stops_counts_as_one(trader, account, monkeypatch):
    """max_retries=1: the worker stops right after placing the retry, which is refused too. Its
    count was written with its row, so no run retries it again."""
    strategy, _ = sources.strategy_save(
        owner=trader, name="Retry", account_ids=[account.pk], max_retries=1, retryable_kinds=["rms"]
    )
    rejecting(account, 1)
    first = place(trader, account, strategy=strategy, source="strategy")
    assert first.status == Order.Status.REJECTED
    backed_off(first)
    placing = cycle._place_again

    def stops_after_placing(*args, **kwargs):
        placing(*args, **kwargs)
        monkeypatch.setattr(cycle, "_place_again", placing)
        raise SystemExit("worker stopped")  # the order placed, nothing after it

    monkeypatch.setattr(cycle, "_place_again", stops_after_placing)
    try:
        cycle.account_monitor(account=account)
    except SystemExit:
        pass
    retry = Order.objects.get(parent=first)
    assert retry.status == Order.Status.REJECTED and retry.retry_count == 1
    backed_off(retry)
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    assert Order.objects.filter(account=account).count() == 2  # the first and its one retry
