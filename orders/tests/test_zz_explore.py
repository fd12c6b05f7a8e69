import pytest
from orders.tests.test_api import api, body, post  # noqa


@pytest.mark.parametrize("extra", [
    {"recurrence": "once", "run_on": "0001-01-01", "time_of_day": "00:00:00", "timezone": "Asia/Kolkata"},
    {"recurrence": "once", "run_on": "0001-01-01", "time_of_day": "00:00:00", "timezone": "America/New_York"},
    {"recurrence": "once", "run_on": "9999-12-31", "time_of_day": "23:59:00", "timezone": "Pacific/Kiritimati"},
    {"recurrence": "weekdays", "weekdays": [], "time_of_day": "10:00:00"},
    {"recurrence": "weekdays", "weekdays": [7], "time_of_day": "10:00:00"},
    {"recurrence": "weekdays", "weekdays": [10**30], "time_of_day": "10:00:00"},
    {"recurrence": "once", "time_of_day": "10:00:00"},
    {"recurrence": "once", "run_on": "2020-01-01", "time_of_day": "10:00:00"},
    {"recurrence": "trading_days", "time_of_day": "10:00:00", "timezone": "Nope/X"},
    {"recurrence": "trading_days", "time_of_day": "10:00:00", "timezone": "x" * 5000},
    {"recurrence": "trading_days", "time_of_day": "10:00:00", "grace_s": -1},
    {"recurrence": "trading_days", "time_of_day": "10:00:00", "quantity": 0},
    {"recurrence": "trading_days", "time_of_day": "10:00:00", "order_type": "LIMIT", "price": "NaN"},
    {"recurrence": "trading_days", "time_of_day": "10:00:00", "order_type": "LIMIT", "price": "Infinity"},
    {"recurrence": "trading_days", "time_of_day": "10:00:00", "order_type": "LIMIT", "price": "-5"},
    {"recurrence": "trading_days", "time_of_day": "10:00:00", "order_type": "LIMIT", "price": "1e-30"},
    {"recurrence": "trading_days", "time_of_day": "10:00:00", "order_type": "LIMIT", "price": 1400.1},
    {"recurrence": "trading_days", "time_of_day": "10:00:00+05:30"},
    {"recurrence": "trading_days", "time_of_day": "24:00:00"},
    {"recurrence": "trading_days", "time_of_day": "10:00:00", "tradingsymbol": "NOPE"},
])
def test_explore(api, account, extra):
    r = post(api, "/api/v1/scheduled", {**body(account), **extra})
    print(extra, r.status_code, r.content[:300])
    assert r.status_code in (201, 422, 409)


def test_patch_explore(api, account, other_trader):
    from accounts.tests.factories import make_broker_account
    theirs = make_broker_account(other_trader, broker="paper", client_id="THEIRS")
    r = post(api, "/api/v1/scheduled", {**body(account), "recurrence": "trading_days", "time_of_day": "10:00:00"})
    sid = r.json()["id"]
    for patch in [{"tradingsymbol": "NOPE"}, {"account_id": theirs.pk}, {"run_on": None}, {"recurrence": "once"},
                  {"recurrence": "once", "run_on": "0001-01-01"}, {"weekdays": None}, {"timezone": None},
                  {"recurrence": "weekdays", "weekdays": []}, {"grace_s": None}, {"exchange": "NOPE"},
                  {"quantity": None}, {"side": None}, {"price": "1e400"}, {"time_of_day": None}]:
        r = api.patch(f"/api/v1/scheduled/{sid}", patch, content_type="application/json")
        print(patch, r.status_code, r.content[:300])
        assert r.status_code in (200, 422, 409)
    r = api.put(f"/api/v1/scheduled/{sid}", {**body(theirs), "time_of_day": "10:00:00", "recurrence": "trading_days"}, content_type="application/json")
    print(r.status_code, r.content[:200])
