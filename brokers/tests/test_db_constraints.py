"""What the brokers tables refuse to hold, whatever writes the row."""

import pytest
from django.db import IntegrityError, transaction

from brokers.models import BrokerSession

pytestmark = pytest.mark.django_db


def refused(pk, **values) -> bool:
    try:
        with transaction.atomic():
            BrokerSession.objects.filter(pk=pk).update(**values)
    except IntegrityError:
        return True
    return False


def test_a_broker_session_holds_only_its_statuses(account):
    ended = BrokerSession.objects.create(account=account, status=BrokerSession.Status.FAILED, last_error="x")
    # Neither active nor ended: no login would replace it, no page would offer to reconnect.
    assert refused(ended.pk, status="ended")
    assert refused(ended.pk, status="")
    for value in (BrokerSession.Status.EXPIRED, BrokerSession.Status.REVOKED, BrokerSession.Status.FAILED):
        assert not refused(ended.pk, status=value)
    assert not refused(ended.pk, status=BrokerSession.Status.ACTIVE, active_for=account.pk + 10**6)
    ended.refresh_from_db()
    assert ended.status == BrokerSession.Status.ACTIVE
