"""Pushes are sent on a daemon thread; a process that ends right after a push still sends it."""

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from tradingplatform.testing import requires_redis

ROOT = Path(__file__).resolve().parents[2]


@requires_redis
def test_a_process_that_exits_right_after_a_push_still_sends_it():
    layer = get_channel_layer()
    group = f"exit-{uuid.uuid4().hex[:8]}"
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)

    # A short-lived process (a management command, a script): one push, then it ends at once.
    script = (
        "import django; django.setup()\n"
        "from monitoring.broadcast import _sender\n"
        f"_sender.group_send({group!r}, {{'type': 'fragment.push', 'html': 'last words'}})\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test", "LOG_LEVEL": "WARNING"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]

    async def receive():
        return await asyncio.wait_for(layer.receive(channel), 10)

    assert async_to_sync(receive)()["html"] == "last words"
