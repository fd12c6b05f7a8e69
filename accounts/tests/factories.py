from decimal import Decimal

from accounts import services
from accounts.models import User

PASSWORD = "correct horse battery staple"


def make_user(username: str, **extra) -> User:
    return User.objects.create_user(username=username, password=PASSWORD, email=f"{username}@example.com", **extra)


def make_broker_account(owner: User, *, broker="paper", client_id=None, label=None, credentials=None, **limits):
    client_id = client_id or f"{owner.username.upper()}-{broker.upper()}-{owner.broker_accounts.count() + 1}"
    limits.setdefault("copy_multiplier", Decimal("1"))
    return services.broker_account_create(
        owner=owner,
        broker=broker,
        client_id=client_id,
        label=label or f"{owner.username} {broker}",
        credentials=credentials or {},
        **limits,
    )


def make_kite_account(owner: User, *, api_key="kite-key-123", api_secret="kite-secret-XYZ-987", **kwargs):
    return make_broker_account(
        owner, broker="kite", credentials={"api_key": api_key, "api_secret": api_secret}, **kwargs
    )
