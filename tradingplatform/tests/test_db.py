import pytest
from django.contrib.auth import get_user_model

from tradingplatform.db import PlainUpdates


@pytest.mark.django_db
def test_plain_updates_write_each_row_its_own_values_and_leave_the_others():
    users = get_user_model()
    ann, bob, cid = (users.objects.create_user(username=name, first_name="-") for name in ("ann", "bob", "cid"))
    updates = PlainUpdates(users, ("first_name", "is_active"))
    assert updates.update({ann.pk: ("Ann", False), cid.pk: ("Cid", True)}) == 2
    assert updates.update({}) == 0
    rows = {u.username: (u.first_name, u.is_active) for u in users.objects.all()}
    assert rows == {"ann": ("Ann", False), "bob": ("-", True), "cid": ("Cid", True)}
    assert updates.update({bob.pk: ("Bob", True)}) == 1  # another row count: its own statement
    assert users.objects.get(pk=bob.pk).first_name == "Bob"
