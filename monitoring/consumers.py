"""The per-user websocket: live fragments pushed to ``user.<id>``."""

from channels.generic.websocket import AsyncWebsocketConsumer


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


class UserConsumer(AsyncWebsocketConsumer):
    """Accepts only signed-in users and joins them to their own group, nothing else.

    Events sent to the group carry rendered template fragments (``fragment.push``);
    the htmx ws extension swaps them into the page by their ids.
    """

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        # The page sends nothing we act on; commands go through HTTP with CSRF.
        return

    async def fragment_push(self, event):
        await self.send(text_data=event["html"])
