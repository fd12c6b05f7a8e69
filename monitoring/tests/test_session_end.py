"""A user's open websockets close when their sessions end: a logout, a deactivation, a password change."""

import asyncio
import json
import logging

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.tests.factories import PASSWORD
from monitoring import broadcast, consumers, presence
from tradingplatform.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")
CLOSED = {"type": "websocket.close", "code": 4401}


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def sign_in(*users) -> list[Client]:
    return [await sync_to_async(signed_in)(user) for user in users]


async def open_socket(client: Client) -> WebsocketCommunicator:
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    communicator = WebsocketCommunicator(application, "/ws/", headers=[ORIGIN, (b"cookie", cookie.encode())])
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def still_open(communicator: WebsocketCommunicator, user) -> bool:
    await get_channel_layer().group_send(f"user.{user.pk}", {"type": "fragment.push", "html": "<div id='x'></div>"})
    return await communicator.receive_output(timeout=2) == {"type": "websocket.send", "text": "<div id='x'></div>"}


async def test_logout_closes_that_sessions_socket_only(trader, other_trader):
    browser, laptop, other = await sign_in(trader, trader, other_trader)
    socket, laptop_socket, other_socket = [await open_socket(c) for c in (browser, laptop, other)]

    response = await sync_to_async(browser.post)(reverse("logout"))

    assert response.status_code == 302
    assert await socket.receive_output(timeout=2) == CLOSED
    # The trader's other session is still signed in over HTTP, so its socket stays too.
    assert await still_open(laptop_socket, trader)
    assert await still_open(other_socket, other_trader)
    for communicator in (socket, laptop_socket, other_socket):
        await communicator.disconnect()


async def test_a_closed_sockets_session_cannot_connect_again(trader):
    [browser] = await sign_in(trader)
    cookie = browser.cookies[settings.SESSION_COOKIE_NAME].value
    socket = await open_socket(browser)
    await sync_to_async(browser.post)(reverse("logout"))
    assert await socket.receive_output(timeout=2) == CLOSED
    await socket.disconnect()

    header = (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())
    again = WebsocketCommunicator(application, "/ws/", headers=[ORIGIN, header])
    connected, _ = await again.connect()
    assert connected  # only to be told why it is closed
    assert await again.receive_output(timeout=2) == CLOSED
    await again.disconnect()


def change_in_admin(admin: Client, user, **changes):
    local = timezone.localtime(user.date_joined)
    data = {
        "username": user.username,
        "email": user.email,
        "is_active": "on" if user.is_active else "",
        "date_joined_0": local.strftime("%Y-%m-%d"),
        "date_joined_1": local.strftime("%H:%M:%S"),
        "timezone": user.timezone,
        **changes,
    }
    response = admin.post(reverse("admin:accounts_user_change", args=[user.pk]), {k: v for k, v in data.items() if v})
    assert response.status_code == 302, response.content.decode()[:2000]


async def test_deactivation_in_the_admin_closes_every_socket_of_the_user(trader, other_trader, staff):
    browser, laptop, other = await sign_in(trader, trader, other_trader)
    socket, laptop_socket, other_socket = [await open_socket(c) for c in (browser, laptop, other)]

    [admin] = await sign_in(staff)
    await sync_to_async(change_in_admin)(admin, trader, is_active="")

    await trader.arefresh_from_db()
    assert not trader.is_active
    assert await socket.receive_output(timeout=2) == CLOSED
    assert await laptop_socket.receive_output(timeout=2) == CLOSED
    assert await still_open(other_socket, other_trader)
    for communicator in (socket, laptop_socket, other_socket):
        await communicator.disconnect()


async def test_an_admin_edit_that_keeps_the_user_active_closes_nothing(trader, staff):
    browser, admin = await sign_in(trader, staff)
    socket = await open_socket(browser)
    await sync_to_async(change_in_admin)(admin, trader, first_name="Alice")
    assert await still_open(socket, trader)
    await socket.disconnect()


async def test_password_change_closes_every_socket_of_the_user(trader, other_trader):
    browser, laptop, other = await sign_in(trader, trader, other_trader)
    socket, laptop_socket, other_socket = [await open_socket(c) for c in (browser, laptop, other)]
    new = "N3w-passw0rd!x"
    data = {"form": "password", "old_password": PASSWORD, "new_password1": new, "new_password2": new}

    response = await sync_to_async(browser.post)(reverse("accounts:profile"), data)

    # The page where it was changed reloads (302) and connects again with its new session key.
    assert response.status_code == 302
    assert await socket.receive_output(timeout=2) == CLOSED
    assert await laptop_socket.receive_output(timeout=2) == CLOSED
    assert await still_open(other_socket, other_trader)
    for communicator in (socket, laptop_socket, other_socket):
        await communicator.disconnect()


async def test_a_profile_save_or_a_login_closes_nothing(trader):
    [browser] = await sign_in(trader)
    socket = await open_socket(browser)
    await sync_to_async(browser.post)(reverse("accounts:profile"), {"form": "profile", "timezone": "Europe/London"})
    await sync_to_async(Client().post)(reverse("login"), {"username": trader.username, "password": PASSWORD})
    assert await still_open(socket, trader)
    await socket.disconnect()


def test_an_unreachable_channel_layer_breaks_neither_logout_nor_a_save(trader, monkeypatch, caplog):
    def unreachable(*_args, **_kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(broadcast, "get_channel_layer", unreachable)
    browser = signed_in(trader)
    with caplog.at_level(logging.WARNING, logger="monitoring.broadcast"):
        assert browser.post(reverse("logout")).status_code == 302
        trader.is_active = False
        trader.save()

    assert browser.get(reverse("accounts:profile")).status_code == 302  # signed out
    trader.refresh_from_db()
    assert not trader.is_active
    assert caplog.text.count(f"closing the websockets of user {trader.pk} failed") == 2


async def test_another_user_signing_in_on_the_same_browser_closes_the_previous_users_socket(trader, other_trader):
    # A shared computer: the next person signs in over the previous trader's still-open tab.
    [browser] = await sign_in(trader)
    socket = await open_socket(browser)

    data = {"username": other_trader.username, "password": PASSWORD}
    response = await sync_to_async(browser.post)(reverse("login"), data)

    assert response.status_code == 302
    assert await socket.receive_output(timeout=2) == CLOSED
    await socket.disconnect()


def expire_in(client: Client, seconds: int) -> None:
    session = client.session
    session.set_expiry(seconds)
    session.save()


async def test_a_socket_closes_when_its_session_expires(trader):
    # A tab left open on a shared computer: once the session has expired, the pushes stop.
    [browser] = await sign_in(trader)
    await sync_to_async(expire_in)(browser, 1)
    socket = await open_socket(browser)

    assert await socket.receive_output(timeout=5) == CLOSED
    await socket.disconnect()


async def test_a_socket_whose_session_is_still_good_stays_open_after_a_recheck(trader, monkeypatch):
    monkeypatch.setattr(consumers, "SESSION_RECHECK_S", 1)
    [browser] = await sign_in(trader)
    socket = await open_socket(browser)
    await asyncio.sleep(1.5)
    assert await still_open(socket, trader)
    await socket.disconnect()


async def test_a_page_left_open_longer_than_a_day_still_gets_its_pushes(trader, monkeypatch):
    # The channel layer drops a group's member a day (its group_expiry) after it joined, and the
    # presence set expires a day after its last join: a socket open longer (a trading screen left on
    # over days) must join both again, or its orders and dashboard stop updating with no sign of it.
    layer = get_channel_layer()
    monkeypatch.setattr(consumers, "SESSION_RECHECK_S", 1)
    monkeypatch.setattr(layer, "group_expiry", 2)
    monkeypatch.setattr(presence, "TTL_S", 2)
    [browser] = await sign_in(trader)
    socket = await open_socket(browser)
    await socket.send_to(text_data=json.dumps({"subscribe": ["101"]}))
    await asyncio.sleep(3.5)

    if settings.REDIS_URL:  # asked of Redis itself: this process may keep an answer a few seconds
        assert await sync_to_async(presence._ask)([trader.pk]) == {trader.pk: True}
    assert await still_open(socket, trader)
    await layer.group_send(consumers.MARKET_GROUP, {"type": "prices.tick", "prices": {"101": {"last": "1"}}})
    assert (await socket.receive_output(timeout=2))["type"] == "websocket.send"
    await socket.disconnect()


@pytest.mark.parametrize("change", ["deactivated", "password"])
async def test_a_socket_whose_close_was_lost_closes_at_its_next_recheck(trader, monkeypatch, change):
    # The close is sent through Redis after commit and a failure only logged (above): a user
    # deactivated (or whose password was changed) while Redis blinked kept their open tab's pushes,
    # their orders and PnL, for as long as it stayed open. Its next session read must refuse it.
    monkeypatch.setattr(consumers, "SESSION_RECHECK_S", 1)
    [browser] = await sign_in(trader)
    socket = await open_socket(browser)
    monkeypatch.setattr(broadcast, "user_sockets_close", lambda **_kwargs: None)  # the close is lost

    if change == "deactivated":
        trader.is_active = False
    else:
        trader.set_password("N3w-passw0rd!x")
    await trader.asave()

    assert await socket.receive_output(timeout=5) == CLOSED
    await socket.disconnect()


def test_an_unreachable_cache_breaks_neither_a_profile_save_nor_a_deactivation(trader, monkeypatch, caplog):
    """A save of the user has the pushes read its timezone again, by dropping it from the cache after
    commit. Redis away then: the trader's timezone change answered a 500 (though saved), and staff
    deactivating a user got one too, as the channel layer's close never makes them (above)."""
    import redis

    class Unreachable:
        def __getattr__(self, _name):
            def call(*_args, **_kwargs):
                raise redis.ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

            return call

    monkeypatch.setattr(broadcast, "cache", Unreachable())
    browser = signed_in(trader)
    with caplog.at_level(logging.WARNING, logger="monitoring.broadcast"):
        answer = browser.post(reverse("accounts:profile"), {"form": "profile", "timezone": "Europe/London"})
        assert answer.status_code == 302
        trader.refresh_from_db()
        trader.is_active = False
        trader.save()

    trader.refresh_from_db()
    assert trader.timezone == "Europe/London" and not trader.is_active
    assert caplog.text.count(f"forgetting the timezone of user {trader.pk} failed") == 2


@pytest.mark.parametrize("ending", ["logout", "deactivation"])
async def test_a_session_ended_as_its_socket_joins_its_group_closes_that_socket(trader, monkeypatch, ending):
    """The socket's user is read (by the auth middleware) before the socket joins its group: a sign-out
    or a deactivation made in between sent its close to a group the socket was not in yet. The socket
    stayed open, getting the trader's orders and PnL, until its session was next read (five minutes)."""
    [browser] = await sign_in(trader)
    layer = get_channel_layer()
    group_add = layer.group_add

    def end_session():
        if ending == "logout":
            assert browser.post(reverse("logout")).status_code == 302
        else:
            trader.is_active = False
            trader.save()

    async def joined_after_the_session_ended(group, channel):
        if group == f"user.{trader.pk}":
            await sync_to_async(end_session)()
        await group_add(group, channel)

    monkeypatch.setattr(layer, "group_add", joined_after_the_session_ended)
    socket = await open_socket(browser)

    assert await socket.receive_output(timeout=2) == CLOSED
    await socket.disconnect()
