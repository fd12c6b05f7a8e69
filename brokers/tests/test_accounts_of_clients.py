"""Review: a broker's client id read back in another case than the account stores it (MariaDB's
collation matches them; an update for the account was applied before the batch load)."""

import pytest
from django.db import connection

from accounts.tests.factories import make_broker_account
from brokers import services


@pytest.mark.django_db
def test_an_update_naming_the_client_in_another_case_still_finds_its_account(trader):
    if connection.vendor != "mysql":
        pytest.skip("MariaDB's default collation matches client ids whatever their case")
    account = make_broker_account(trader, client_id="AB1234")
    # The paper exchange's client row may be "ab1234" (made by an earlier account of that id):
    # its announcements name it so, and the query below matches the account either way.
    assert [a.pk for a in services._accounts_of_client("paper", "ab1234")] == [account.pk]


@pytest.mark.django_db
def test_a_change_of_an_account_here_is_seen_at_once_by_the_fast_paths(trader, django_capture_on_commit_callbacks):
    """The client's accounts are remembered for a minute, but this process forgets them when it
    changes, (de)activates or deletes an account: no fill of an account deactivated here is recorded by
    its fast paths, and one reactivated gets its fills at once."""
    from accounts import services as accounts_services

    account = make_broker_account(trader, client_id="CL77")
    assert [a.pk for a in services._accounts_of_client("paper", "CL77")] == [account.pk]  # now remembered
    with django_capture_on_commit_callbacks(execute=True):
        accounts_services.broker_account_set_active(account=account, actor=trader, active=False)
    assert services._accounts_of_client("paper", "CL77") == []
    with django_capture_on_commit_callbacks(execute=True):
        accounts_services.broker_account_set_active(account=account, actor=trader, active=True)
    assert [a.pk for a in services._accounts_of_client("paper", "CL77")] == [account.pk]
    with django_capture_on_commit_callbacks(execute=True):
        accounts_services.broker_account_update(account=account, actor=trader, label="renamed")
    assert [a.label for a in services._accounts_of_client("paper", "CL77")] == ["renamed"]
    with django_capture_on_commit_callbacks(execute=True):
        account.delete()  # as the admin deletes it
    assert services._accounts_of_client("paper", "CL77") == []
