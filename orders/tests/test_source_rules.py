"""The rules of baskets, scheduled orders and strategy signals that a trader's money depends on:
when an order may be placed, and when two requests are one."""

import json
import time as clock
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from brokers.paper.models import PaperOrder
from orders import sources
from orders.models import Order, ScheduledFire, ScheduledOrder, Strategy
from orders.tests.factories import instrument, place
from orders.tests.test_sources import make_scheduled, spec, webhook

IST = ZoneInfo("Asia/Kolkata")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture
def strategy(trader, account):
    row, secret = sources.strategy_save(owner=trader, name="Breakout", account_ids=[account.pk])
    row.secret = secret
    return row


# --- Two requests are one only when their ids are the same, byte for byte ---------------------


def test_signal_ids_that_differ_in_case_accents_or_spaces_are_different_signals(client, strategy):
    ids = ["Sig-Case-X", "sig-case-x", "sig-case-x ", "sig-cáse-x"]
    answers = [webhook(client, strategy, id=signal_id) for signal_id in ids]
    assert [a.status_code for a in answers] == [201, 201, 201, 201]
    assert strategy.signals.count() == 4 and PaperOrder.objects.count() == 4
    assert webhook(client, strategy, id="sig-case-x").json()["replayed"] is True


def test_a_signal_id_is_never_cut(client, strategy):
    refused = webhook(client, strategy, id="x" * 64 + "A")
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "id"
    assert webhook(client, strategy, id="x" * 64).status_code == 201
    assert PaperOrder.objects.count() == 1


def test_idempotency_keys_that_differ_in_case_or_accents_are_different_orders(trader, account):
    keys = ["Idem-Case-Q", "idem-case-q", "idem-cáse-q"]
    orders = [place(trader, account, idempotency_key=key) for key in keys]
    assert len({order.pk for order in orders}) == 3
    assert place(trader, account, idempotency_key="idem-case-q").pk == orders[1].pk
    assert PaperOrder.objects.count() == 3


def test_strategy_create_keys_that_differ_in_case_accents_or_spaces_are_different_creates(trader, account):
    """MariaDB's collation took "make-case-k" for "Make-Case-K": the second create was refused as
    the first's repeat with other settings (or, asking the same, rotated the first's secret)."""
    keys = ["Make-Case-K", "make-case-k", "make-cáse-k", "make-case-k "]
    made = [
        sources.strategy_save(owner=trader, name=f"Case {n}", account_ids=[account.pk], create_key=key)[0]
        for n, key in enumerate(keys)
    ]
    assert len({strategy.pk for strategy in made}) == 4 and Strategy.objects.count() == 4
    again, secret = sources.strategy_save(owner=trader, name="Case 1", account_ids=[account.pk], create_key=keys[1])
    assert again.pk == made[1].pk and secret


def test_names_that_differ_only_in_an_emoji_are_different_names(trader, account):
    """MariaDB's default collation weighs every character beyond the BMP (every emoji) alike: a
    second strategy or basket named "📈 Scalp" beside "🚀 Scalp" was refused as a name taken."""
    first, _ = sources.strategy_save(owner=trader, name="🚀 Scalp", account_ids=[account.pk])
    second, _ = sources.strategy_save(owner=trader, name="📈 Scalp", account_ids=[account.pk])
    assert first.pk != second.pk
    assert set(Strategy.objects.values_list("name", flat=True)) == {"🚀 Scalp", "📈 Scalp"}
    item = {"instrument": instrument("INFY"), "side": "BUY", "quantity": 1}
    baskets = [
        sources.basket_save(owner=trader, name=name, items=[item], account_ids=[]) for name in ("🟢 Open", "🔴 Open")
    ]
    assert baskets[0].pk != baskets[1].pk
    with pytest.raises(ValidationError) as taken:  # the same name is still taken
        sources.strategy_save(owner=trader, name="🚀 Scalp", account_ids=[account.pk])
    assert taken.value.message_dict == {"name": [sources.STRATEGY_NAME_TAKEN]}


def test_the_webhook_takes_tradingview_times_and_a_bare_symbol(client, strategy):
    now = datetime.now(UTC)
    assert webhook(client, strategy, id="iso", timestamp=now.isoformat().replace("+00:00", "Z")).status_code == 201
    assert webhook(client, strategy, id="ms", timestamp=int(clock.time() * 1000)).status_code == 201
    assert webhook(client, strategy, id="bare", symbol="INFY").status_code == 201
    naive = webhook(client, strategy, id="naive", timestamp=now.replace(tzinfo=None).isoformat())
    assert naive.status_code == 422 and naive.json()["error"]["field"] == "timestamp"
    assert PaperOrder.objects.count() == 3


# --- A deactivated trader opens nothing --------------------------------------------------------


def test_a_deactivated_traders_webhook_schedule_and_entries_place_nothing(client, trader, account, strategy):
    row = make_scheduled(trader, account)
    fire_ids = sources.scheduled_claim_due(now=row.next_run_at + timedelta(seconds=1))
    ScheduledFire.objects.filter(pk__in=fire_ids).update(due_at=timezone.now())
    trader.is_active = False
    trader.save()

    assert webhook(client, strategy).status_code == 403
    fire = sources.scheduled_fire(fire_id=fire_ids[0])
    assert fire.status == "failed" and "deactivated" in fire.detail
    with pytest.raises(ValidationError) as error:
        place(trader, account)
    assert "account" in error.value.message_dict
    assert not PaperOrder.objects.exists()
    # The exits that protect what they hold are still placed.
    assert place(trader, account, side="SELL", role=Order.Role.STOP_LOSS).status == Order.Status.FILLED


# --- When a scheduled order fires ----------------------------------------------------------------


def test_every_trading_day_means_the_exchanges_days_in_any_zone(trader, account):
    """23:30 in New York is 10:00 the next morning in India: Thursday to Friday evenings in New
    York are trading days, Friday and Saturday evenings are not, Sunday evening is Monday's."""
    row = make_scheduled(trader, account, recurrence="trading_days", run_on=None, time_of_day=time(23, 30))
    row.timezone = "America/New_York"
    after = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)  # Thursday
    runs = []
    for _ in range(4):
        after = sources.next_occurrence(row, after)
        runs.append(after.astimezone(IST).strftime("%a %H:%M"))
    assert runs == ["Fri 10:00", "Mon 10:00", "Tue 10:00", "Wed 10:00"]
    row.recurrence, row.weekdays = "weekdays", [5]  # chosen weekdays are the trader's own
    assert sources.next_occurrence(row, after).astimezone(NEW_YORK).strftime("%a %H:%M") == "Sat 23:30"


def test_every_trading_day_places_once_on_an_exchange_day_its_traders_clocks_go_forward_on(
    trader, account, monkeypatch
):
    """Jerusalem's clocks go forward on Friday 27 March 2026. 21:00 there was 00:30 the next day in
    India until then, and is 23:30 the same day from then: Thursday's 21:00 and Friday's 21:00 are
    both on the exchange's Friday, and an every-trading-day order placed two orders that day. One
    run an exchange day: Friday's is Thursday evening's; the next is Monday's."""
    jerusalem = ZoneInfo("Asia/Jerusalem")
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 3, 26, 12, 0, tzinfo=UTC))
    row = make_scheduled(
        trader, account, recurrence="trading_days", run_on=None, time_of_day=time(21, 0), timezone_name="Asia/Jerusalem"
    )
    claimed = []
    for _ in range(3):
        due_at = row.next_run_at
        monkeypatch.setattr(timezone, "now", lambda due_at=due_at: due_at)
        assert len(sources.scheduled_claim_due(now=due_at)) == 1
        claimed.append(f"{due_at.astimezone(jerusalem):%a %H:%M} = {due_at.astimezone(IST):%a %d %H:%M} in India")
        row.refresh_from_db()
    assert claimed == [
        "Thu 21:00 = Fri 27 00:30 in India",
        "Mon 21:00 = Mon 30 23:30 in India",
        "Tue 21:00 = Tue 31 23:30 in India",
    ]
    # Made on Friday after that day's time had passed, it places Friday evening: nothing ran for the day.
    friday_noon = datetime(2026, 3, 27, 9, 0, tzinfo=UTC)
    assert sources.next_occurrence(row, friday_noon) == datetime(2026, 3, 27, 18, 0, tzinfo=UTC)


def test_every_trading_day_places_on_an_exchange_day_its_traders_clocks_skip_over(trader, account, monkeypatch):
    """Cairo's clocks go back at the end of Thursday 29 October 2026. 21:00 there was 23:30 the same
    day in India until then, and is 00:30 the next day from then: Thursday's 21:00 is the exchange's
    Thursday, Friday's is Saturday, and no 21:00 of the trader's fell on the exchange's Friday: an
    every-trading-day order placed nothing for it. Friday's run is the trader's Friday 21:00."""
    cairo = ZoneInfo("Africa/Cairo")
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 10, 28, 12, 0, tzinfo=UTC))
    row = make_scheduled(
        trader, account, recurrence="trading_days", run_on=None, time_of_day=time(21, 0), timezone_name="Africa/Cairo"
    )
    claimed = []
    for _ in range(4):
        due_at = row.next_run_at
        monkeypatch.setattr(timezone, "now", lambda due_at=due_at: due_at)
        assert len(sources.scheduled_claim_due(now=due_at)) == 1
        claimed.append(f"{due_at.astimezone(cairo):%a %H:%M} = {due_at.astimezone(IST):%a %d %H:%M} in India")
        row.refresh_from_db()
    assert claimed == [
        "Wed 21:00 = Wed 28 23:30 in India",
        "Thu 21:00 = Thu 29 23:30 in India",
        "Fri 21:00 = Sat 31 00:30 in India",
        "Sun 21:00 = Mon 02 00:30 in India",
    ]
    assert set(ScheduledFire.objects.filter(scheduled=row).values_list("status", flat=True)) == {"pending"}


def test_a_time_in_the_hour_the_clocks_go_back_over_is_still_to_come_the_second_time_round(
    trader, account, monkeypatch
):
    """New York's clocks go back from 02:00 EDT to 01:00 EST on 1 Nov 2026: 01:00-01:59 happens
    twice. At 01:10 the second time round, 01:30 is twenty minutes away on the trader's clock: a
    one-off for it is placed then, not refused as passed; and a weekly order that ran at the first
    01:30 does not run at the second."""
    second_pass = datetime(2026, 11, 1, 6, 10, tzinfo=UTC)  # 01:10 EST
    monkeypatch.setattr(timezone, "now", lambda: second_pass)
    at_0130 = {"time_of_day": time(1, 30), "timezone_name": "America/New_York"}
    row = make_scheduled(trader, account, run_on=second_pass.astimezone(NEW_YORK).date(), **at_0130)
    assert row.next_run_at == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST
    assert len(sources.scheduled_claim_due(now=row.next_run_at)) == 1
    row.refresh_from_db()
    assert row.status == "done" and row.next_run_at is None
    ScheduledFire.objects.filter(scheduled=row).update(status=ScheduledFire.Status.PLACED)
    monkeypatch.setattr(timezone, "now", lambda: second_pass + timedelta(minutes=30))
    with pytest.raises(ValidationError) as refused:  # its run placed: not armed again for another day
        sources.scheduled_change(owner=trader, scheduled=row, run_on=row.run_on + timedelta(days=1))
    assert refused.value.error_dict["scheduled"][0].code == "conflict"

    monkeypatch.setattr(timezone, "now", lambda: second_pass)
    sundays = make_scheduled(trader, account, recurrence="weekdays", weekdays=[6], run_on=None, **at_0130)
    assert sundays.next_run_at == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    first_pass = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT, the first 01:30
    assert sources.next_occurrence(sundays, first_pass) == datetime(2026, 11, 8, 6, 30, tzinfo=UTC)
    assert sources.next_occurrence(sundays, first_pass - timedelta(minutes=20)) == first_pass


def test_a_recurring_time_the_clocks_skip_runs_at_the_moment_they_jump_on_either_path(trader, account, monkeypatch):
    """New York's clocks jump from 02:00 to 03:00 on Sunday 8 March 2026: a Sunday order at 02:30
    ran at 03:30 EDT, an hour late by the clock, shown nowhere as that. It runs when the clocks jump
    (03:00, the first moment after 02:30) and that is its next run; the next Sunday's is 02:30. An
    every-trading-day order does the same (Cairo jumps from 00:00 to 01:00 on Friday 24 April 2026,
    a trading day in India): its 00:30 that day is 01:00, as a Fridays order's is."""
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 3, 5, 12, 0, tzinfo=UTC))
    sundays = make_scheduled(
        trader,
        account,
        recurrence="weekdays",
        weekdays=[6],
        run_on=None,
        time_of_day=time(2, 30),
        timezone_name="America/New_York",
    )
    assert sundays.next_run_at == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert f"{sundays.next_run_at.astimezone(NEW_YORK):%a %d %H:%M %Z}" == "Sun 08 03:00 EDT"
    assert sources.next_occurrence(sundays, sundays.next_run_at) == datetime(2026, 3, 15, 6, 30, tzinfo=UTC)

    cairo = ZoneInfo("Africa/Cairo")
    thursday = datetime(2026, 4, 23, 12, 0, tzinfo=UTC)
    at_0030 = {"run_on": None, "time_of_day": time(0, 30), "timezone_name": "Africa/Cairo"}
    fridays = make_scheduled(trader, account, recurrence="weekdays", weekdays=[4], **at_0030)
    trading_days = make_scheduled(trader, account, recurrence="trading_days", **at_0030)
    for row in (fridays, trading_days):
        assert f"{sources.next_occurrence(row, thursday).astimezone(cairo):%a %d %H:%M}" == "Fri 24 01:00"


@pytest.mark.parametrize("name", ["localtime", "Factory", "posixrules"])
def test_a_zone_must_be_a_place(trader, account, name):
    with pytest.raises(ValidationError) as error:
        make_scheduled(trader, account, timezone_name=name)
    assert "timezone" in error.value.message_dict
    assert not ScheduledOrder.objects.exists()


def test_a_time_missed_by_seconds_is_not_placed_without_grace(trader, account, settings):
    row = make_scheduled(trader, account)
    assert settings.SCHEDULE_ON_TIME_S == 10
    assert sources.scheduled_claim_due(now=row.next_run_at + timedelta(seconds=30)) == []
    assert ScheduledFire.objects.get(scheduled=row).status == "missed"


def test_a_late_fire_whose_worker_died_before_placing_is_missed_not_placed_late(trader, account):
    rows = [make_scheduled(trader, account) for _ in range(2)]
    fire_ids = sources.scheduled_claim_due(now=rows[0].next_run_at + timedelta(seconds=1))
    ScheduledFire.objects.filter(pk__in=fire_ids).update(due_at=timezone.now())
    placed = sources.scheduled_fire(fire_id=fire_ids[0])  # its worker made the order, then died
    assert placed.status == "placed"
    # Both left PLACING by the dead worker, sent again two minutes after their time.
    ScheduledFire.objects.filter(pk__in=fire_ids).update(status="placing", due_at=timezone.now() - timedelta(minutes=2))
    again = {fire.pk: fire for fire in sources.scheduled_fires(fire_ids=fire_ids)}
    assert again[fire_ids[0]].status == "placed"  # its order exists: the same one, not another
    assert again[fire_ids[1]].status == "missed" and "stopped" in again[fire_ids[1]].detail
    assert Order.objects.filter(scheduled__in=rows).count() == 1 and PaperOrder.objects.count() == 1


def test_an_edit_after_todays_run_does_not_place_again_today(trader, account):
    every_day = {"recurrence": "weekdays", "weekdays": list(range(7)), "run_on": None}
    row = make_scheduled(trader, account, **every_day)
    now = timezone.now()
    ScheduledFire.objects.create(scheduled=row, due_at=now - timedelta(seconds=1), status="placed")
    later_today = (now + timedelta(seconds=30)).astimezone(IST)
    if later_today.date() != now.astimezone(IST).date():
        pytest.skip("too close to midnight in India")

    def edit():
        return sources.scheduled_save(
            owner=trader,
            account=account,
            spec=spec(quantity=2),
            time_of_day=later_today.time(),
            timezone_name="Asia/Kolkata",
            scheduled=row,
            **every_day,
        )

    assert edit().next_run_at.astimezone(IST).date() == later_today.date() + timedelta(days=1)
    # With no order placed today, the new time later today is today's run.
    ScheduledFire.objects.filter(scheduled=row).update(status="failed")
    edited = edit()
    assert edited.next_run_at.astimezone(IST).date() == later_today.date()


def tokyo_at_eight(trader, account, *, weekdays):
    """A chosen-weekdays order at 08:00 in Tokyo."""
    return make_scheduled(
        trader,
        account,
        recurrence="weekdays",
        weekdays=weekdays,
        run_on=None,
        time_of_day=time(8, 0),
        timezone_name="Asia/Tokyo",
    )


def test_moving_a_weekday_orders_zone_after_todays_run_does_not_place_again_that_day(trader, account, monkeypatch):
    """A Mondays order at 08:00 in Tokyo placed on Monday 7 December 2026 (Sunday 23:00 UTC). At
    10:00 in Tokyo the trader moves it to 09:00 in London, where it is still Sunday 01:00 when the
    run was placed: the edit set its next run to Monday 09:00 London (18:00 in Tokyo), a second
    order that Monday. Its next run is the next Monday's."""
    tokyo = ZoneInfo("Asia/Tokyo")
    london = ZoneInfo("Europe/London")
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 12, 5, 12, 0, tzinfo=UTC))
    row = tokyo_at_eight(trader, account, weekdays=[0])
    assert f"{row.next_run_at.astimezone(tokyo):%a %d %H:%M}" == "Mon 07 08:00"
    ScheduledFire.objects.create(scheduled=row, due_at=row.next_run_at, status="placed")
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 12, 7, 1, 0, tzinfo=UTC))  # Monday 10:00 in Tokyo
    edited = sources.scheduled_change(
        owner=trader, scheduled=row, timezone_name="Europe/London", time_of_day=time(9, 0)
    )
    assert f"{edited.next_run_at.astimezone(london):%a %d %H:%M}" == "Mon 14 09:00"
    # With no order placed on Monday, London's Monday 09:00 is its run.
    ScheduledFire.objects.filter(scheduled=row).update(status="failed")
    edited = sources.scheduled_change(owner=trader, scheduled=row, time_of_day=time(9, 30))
    assert f"{edited.next_run_at.astimezone(london):%a %d %H:%M}" == "Mon 07 09:30"


def test_moving_a_weekday_orders_zone_twice_after_todays_run_does_not_place_again_that_day(
    trader, account, monkeypatch
):
    """The order above, moved on Monday to London's 09:00 (next run the next Monday), then to New
    York's 09:00. The second edit read Monday's run in London's zone, where it was Sunday, so New
    York's Monday 09:00 (14:00 UTC, still to come) was its next run: a second order that Monday.
    A run's day is the one it was placed on as the order then was (Tokyo's Monday)."""
    new_york = ZoneInfo("America/New_York")
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 12, 5, 12, 0, tzinfo=UTC))
    row = tokyo_at_eight(trader, account, weekdays=[0])
    assert len(sources.scheduled_claim_due(now=row.next_run_at)) == 1
    ScheduledFire.objects.filter(scheduled=row).update(status="placed")
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 12, 7, 1, 0, tzinfo=UTC))  # Monday 10:00 in Tokyo
    sources.scheduled_change(owner=trader, scheduled=row, timezone_name="Europe/London", time_of_day=time(9, 0))
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 12, 7, 2, 0, tzinfo=UTC))
    edited = sources.scheduled_change(owner=trader, scheduled=row, timezone_name="America/New_York")
    assert f"{edited.next_run_at.astimezone(new_york):%a %d %H:%M}" == "Mon 14 09:00"


def test_a_run_kept_by_a_zone_edit_counts_as_the_new_zones_day(trader, account, monkeypatch):
    """A Sundays-and-Mondays order at 08:00 in Tokyo, claimed for Monday (Sunday 23:00 UTC) and not
    yet sent when the trader moves it to London's 09:00, where it is Sunday: the run places as
    London's Sunday run, and Monday 09:00 London is still to come. A later edit must not read that
    run as Tokyo's Monday and skip London's Monday."""
    london = ZoneInfo("Europe/London")
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 12, 6, 0, 0, tzinfo=UTC))
    row = tokyo_at_eight(trader, account, weekdays=[0, 6])
    due = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
    assert row.next_run_at == due
    assert len(sources.scheduled_claim_due(now=due)) == 1
    monkeypatch.setattr(timezone, "now", lambda: due + timedelta(seconds=30))
    edited = sources.scheduled_change(
        owner=trader, scheduled=row, timezone_name="Europe/London", time_of_day=time(9, 0)
    )
    assert f"{edited.next_run_at.astimezone(london):%a %d %H:%M}" == "Mon 07 09:00"
    assert ScheduledFire.objects.get(scheduled=row).status == "pending"
    ScheduledFire.objects.filter(scheduled=row).update(status="placed")
    monkeypatch.setattr(timezone, "now", lambda: due + timedelta(minutes=10))
    edited = sources.scheduled_change(owner=trader, scheduled=row, time_of_day=time(9, 30))
    assert f"{edited.next_run_at.astimezone(london):%a %d %H:%M}" == "Mon 07 09:30"


# --- What a basket or a strategy accepts ---------------------------------------------------------


def test_a_basket_items_quantity_is_whole_lots(trader, account):
    future = instrument("NIFTY26DECFUT", "NFO")
    item = spec(instrument=future, product="NRML", quantity=future.lot_size + 5)
    with pytest.raises(ValidationError) as error:
        sources.basket_save(owner=trader, name="Lots", account_ids=[account.pk], items=[item])
    assert "items.0.quantity" in error.value.message_dict


def test_a_deactivated_account_is_not_added_to_a_basket_or_strategy(trader, account):
    from accounts.tests.factories import make_broker_account

    spare = make_broker_account(trader, broker="paper", client_id="PAPER-SPARE", label="Spare")
    spare.is_active = False
    spare.save()
    item = spec(quantity=1)
    for save in (
        lambda ids: sources.basket_save(owner=trader, name="B", account_ids=ids, items=[item]),
        lambda ids: sources.strategy_save(owner=trader, name="S", account_ids=ids),
    ):
        with pytest.raises(ValidationError) as error:
            save([account.pk, spare.pk])
        assert "Spare is deactivated" in error.value.message_dict["account_ids"][0]
    basket = sources.basket_save(owner=trader, name="B", account_ids=[account.pk], items=[item])
    account.is_active = False
    account.save()
    # One deactivated after it was chosen stays chosen: the basket can still be renamed.
    renamed = sources.basket_save(owner=trader, name="B2", account_ids=[account.pk], items=[item], basket=basket)
    assert list(renamed.accounts.all()) == [account]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"stop_loss": Decimal("150")}, "stop_loss"),
        ({"stop_loss": Decimal("100")}, "stop_loss"),
        ({"take_profit": Decimal("100")}, "take_profit"),
        ({"chase_max_percent": Decimal("500")}, "chase_max_percent"),
        ({"trailing_step": Decimal("2")}, "trailing_step"),
    ],
)
def test_strategy_exits_that_could_never_be_placed_are_refused(trader, account, params, field):
    with pytest.raises(ValidationError) as error:
        sources.strategy_save(owner=trader, name="Bad", account_ids=[account.pk], **params)
    assert field in error.value.message_dict


def test_a_chase_cap_of_no_ticks_is_refused_not_taken_for_no_cap(trader, account):
    """0 ticks reads as "do not move it"; the cycle would take it as no cap and chase without end.
    Refused on the field, as the API refuses it."""
    with pytest.raises(ValidationError) as error:
        sources.strategy_save(owner=trader, name="Chase", account_ids=[account.pk], chase_after_s=5, chase_max_ticks=0)
    assert error.value.message_dict == {"chase_max_ticks": ["Must be above 0 (leave it blank for none)."]}
    assert not Strategy.objects.exists()


def test_a_chase_without_a_cap_is_refused(trader, account):
    """Without a cap in ticks or percent the cycle would chase the entry to whatever the market
    does: refused on the field, on creation and when a change takes the last cap off."""
    with pytest.raises(ValidationError) as error:
        sources.strategy_save(owner=trader, name="Chase", account_ids=[account.pk], chase_after_s=5)
    assert error.value.message_dict == {
        "chase_max_ticks": ["A chase needs a cap: set its ticks, its percent, or both."]
    }
    assert not Strategy.objects.exists()
    chaser, _ = sources.strategy_save(
        owner=trader, name="Chase", account_ids=[account.pk], chase_after_s=5, chase_max_percent=Decimal("1")
    )
    with pytest.raises(ValidationError) as error:
        sources.strategy_save(
            owner=trader, name="Chase", account_ids=[account.pk], strategy=chaser, chase_max_percent=None
        )
    assert "chase_max_ticks" in error.value.message_dict
    chaser.refresh_from_db()
    assert chaser.chase_max_percent == Decimal("1")
    sources.strategy_save(owner=trader, name="Chase", account_ids=[account.pk], strategy=chaser, max_retries=1)


def test_a_stop_loss_in_points_may_be_large(trader, account):
    row, _ = sources.strategy_save(
        owner=trader, name="Points", account_ids=[account.pk], stop_loss=Decimal("150"), stop_loss_unit="points"
    )
    assert row.stop_loss == Decimal("150")


def test_the_api_names_a_bad_webhook_body(client, strategy):
    response = client.post(
        f"/hooks/strategies/{strategy.pk}/",
        json.dumps({"secret": strategy.secret, "id": "t", "timestamp": True, "symbol": "INFY", "side": "BUY"}),
        content_type="application/json",
    )
    assert response.status_code == 422 and response.json()["error"]["field"] == "timestamp"


def test_a_signal_answers_for_a_deactivated_account_too(trader, account, strategy):
    from accounts.tests.factories import make_broker_account

    resting = make_broker_account(trader, broker="paper", client_id="SIG-OFF", label="Resting")
    resting.is_active = False
    resting.save(update_fields=["is_active"])
    strategy.accounts.add(resting)
    signal, _ = sources.strategy_signal(
        strategy=strategy, actor=trader, signal_id="s", via="api", instrument=instrument(), side="BUY", quantity=1
    )
    by_account = {row["account_id"]: row for row in signal.results}
    assert by_account[account.pk]["status"] == "FILLED"
    assert by_account[resting.pk]["status"] == "INVALID" and "deactivated" in by_account[resting.pk]["error"]


def test_a_late_fire_a_live_worker_is_still_placing_is_neither_missed_nor_placed_again(trader, account):
    from tradingplatform import locks

    row = make_scheduled(trader, account)
    (fire_id,) = sources.scheduled_claim_due(now=row.next_run_at + timedelta(seconds=1))
    ScheduledFire.objects.filter(pk=fire_id).update(status="placing", due_at=timezone.now() - timedelta(minutes=2))
    fire = ScheduledFire.objects.get(pk=fire_id)
    token = locks.acquire(sources._placing_lock(fire), ttl_s=60)  # its worker, slow but alive
    try:
        assert sources.scheduled_fire(fire_id=fire_id).status == "placing"
    finally:
        locks.release(sources._placing_lock(fire), token)
    assert not PaperOrder.objects.exists()
    assert sources.scheduled_fire(fire_id=fire_id).status == "missed"  # once its worker is gone
