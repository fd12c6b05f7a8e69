"""Fixtures of the orders tests."""

import pytest
from django.contrib.auth.hashers import make_password

from accounts.tests.factories import make_kite_account
from brokers import services as broker_services
from brokers.paper import engine
from brokers.paper.models import PaperClient


@pytest.fixture
def kite_on_face(face_url, settings, trader, instruments):
    """A kite account connected to the paper exchange's Kite face, as the callback leaves it."""
    settings.KITE_API_URL = face_url
    exchange_client = PaperClient.objects.create(user_id="AB1234", password=make_password("pw-123456"))
    account = make_kite_account(
        trader, client_id="AB1234", api_key=exchange_client.api_key, api_secret=exchange_client.api_secret
    )
    _, request_token = engine.login_with_password(
        api_key=exchange_client.api_key, user_id="AB1234", password="pw-123456"
    )
    broker_services.connect_complete(account=account, request_token=request_token, actor=trader)
    return account
