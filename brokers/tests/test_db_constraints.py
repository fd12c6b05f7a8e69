"""What the brokers tables refuse to hold, whatever writes the row."""

import pytest

from brokers.models import BrokerSession
from tradingplatform.testing import refused

pytestmark = pytest.mark.django_db


def test_a_broker_session_holds_only_its_statuses(account):
    ended = BrokerSession.objects.create(account=account, status=BrokerSession.Status.FAILED, last_error="x")
    # Neither active nor ended: no login would replace it, no page would offer to reconnect.
    assert refused(BrokerSession, ended.pk, status="ended")
    assert refused(BrokerSession, ended.pk, status="")
    for value in (BrokerSession.Status.EXPIRED, BrokerSession.Status.REVOKED, BrokerSession.Status.FAILED):
        assert not refused(BrokerSession, ended.pk, status=value)
    assert not refused(BrokerSession, ended.pk, status=BrokerSession.Status.ACTIVE, active_for=account.pk + 10**6)
    ended.refresh_from_db()
    assert ended.status == BrokerSession.Status.ACTIVE
