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
