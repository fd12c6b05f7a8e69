import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import transaction
from django.test import Client

from monitoring.broadcast import push_fragment
from tradingplatform.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


async def connect(user=None, origin=ORIGIN):
    headers = [origin]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    communicator = WebsocketCommunicator(application, "/ws/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def test_anonymous_is_refused():
    # Accepted only to be closed with 4401 (a page is told its sign-in ended: see test_live_socket).
    communicator, connected, _ = await connect()
    assert connected
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}
    await communicator.disconnect()


async def test_foreign_origin_is_refused(trader):
    communicator, connected, _ = await connect(trader, origin=(b"origin", b"http://evil.example"))
    assert not connected
    await communicator.disconnect()


async def test_signed_in_user_joins_own_group_only(trader, other_trader):
    communicator, connected, _ = await connect(trader)
    assert connected
    layer = get_channel_layer()
    await layer.group_send(f"user.{other_trader.pk}", {"type": "fragment.push", "html": "<div id='x'>theirs</div>"})
    assert await communicator.receive_nothing(timeout=0.3)
    await layer.group_send(f"user.{trader.pk}", {"type": "fragment.push", "html": "<div id='x'>mine</div>"})
    assert await communicator.receive_from(timeout=2) == "<div id='x'>mine</div>"
    await communicator.disconnect()


async def test_fragment_is_pushed_after_commit_and_escaped(trader):
    communicator, connected, _ = await connect(trader)
    assert connected

    def push_in_transaction():
        with transaction.atomic():
            push_fragment(
                user_id=trader.pk,
                template="partials/notice_push.html",
                context={"level": "info", "text": "<script>alert(1)</script>"},
            )

    await sync_to_async(push_in_transaction)()
    html = await communicator.receive_from(timeout=2)
    assert 'id="notices"' in html and 'hx-swap-oob="afterbegin"' in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    await communicator.disconnect()


async def test_rolled_back_transaction_pushes_nothing(trader):
    communicator, connected, _ = await connect(trader)
    assert connected

    def push_then_roll_back():
        try:
            with transaction.atomic():
                push_fragment(user_id=trader.pk, template="partials/notice_push.html", context={"text": "never"})
                raise RuntimeError("roll back")
        except RuntimeError:
            pass

    await sync_to_async(push_then_roll_back)()
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


@pytest.mark.parametrize("message", ['{"subscribe": 1.5}', '{"subscribe": {"a": [1]}}', "[" * 100000 + "]" * 100000])
async def test_a_malformed_message_leaves_the_socket_open(trader, message):
    """The socket takes only price subscriptions: anything else is ignored, not a crash that drops
    the trader's live updates."""
    communicator, connected, _ = await connect(trader)
    assert connected
    await communicator.send_to(text_data=message)
    assert await communicator.receive_nothing(timeout=0.3)
    await get_channel_layer().group_send(f"user.{trader.pk}", {"type": "fragment.push", "html": "<div id='x'>y</div>"})
    assert await communicator.receive_from(timeout=2) == "<div id='x'>y</div>"
    await communicator.disconnect()
