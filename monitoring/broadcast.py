"""Push rendered fragments to a user's websocket group, after the transaction commits."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.template.loader import render_to_string

from .consumers import MARKET_GROUP, user_group


def push_fragment(*, user_id: int, template: str, context: dict) -> None:
    """Render ``template`` (a fragment with a stable id) and send it once the data is committed."""

    def send():
        html = render_to_string(template, context)
        async_to_sync(get_channel_layer().group_send)(user_group(user_id), {"type": "fragment.push", "html": html})

    transaction.on_commit(send)


def push_prices(prices: dict[str, dict]) -> None:
    """Send one coalesced price tick ({instrument id: {last, change, pct}}) to subscribed pages, after commit."""
    transaction.on_commit(
        lambda: async_to_sync(get_channel_layer().group_send)(MARKET_GROUP, {"type": "prices.tick", "prices": prices})
    )
