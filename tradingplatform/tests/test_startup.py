"""Servers and workers load every URLconf and view at start, then freeze what they loaded
(``tradingplatform.startup``), so a full garbage collection no longer walks the whole app.

Each case runs in a fresh interpreter: freezing this test process would be the thing under test
leaking into the others.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What a process holds after start-up: objects frozen, whether the API's views were imported, objects
# a full collection still walks.
PROBE = "import gc, sys; {start}; print(gc.get_freeze_count(), 'orders.api' in sys.modules, len(gc.get_objects()))"


def _started(start: str) -> tuple[int, bool, int]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test", "LOG_LEVEL": "WARNING"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(start=start)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    frozen, views_loaded, walked = done.stdout.split()
    return int(frozen), views_loaded == "True", int(walked)


def test_a_process_that_only_sets_up_django_freezes_nothing():
    frozen, views_loaded, walked = _started("import django; django.setup()")
    assert frozen == 0
    assert not views_loaded  # views are imported on the first request
    assert walked > 50_000


def test_the_wsgi_server_loads_every_view_then_freezes():
    frozen, views_loaded, walked = _started("import tradingplatform.wsgi")
    assert views_loaded
    assert frozen > 50_000
    assert walked < frozen / 10  # a full collection walks a small part of what it used to


def test_the_asgi_server_loads_every_view_then_freezes():
    frozen, views_loaded, walked = _started("import tradingplatform.asgi")
    assert views_loaded
    assert frozen > 50_000
    assert walked < frozen / 10


def test_a_celery_worker_freezes_in_its_main_process_and_in_each_prefork_child():
    start = (
        "import django; django.setup(); from tradingplatform.celery import app; "
        "from celery.signals import worker_init, worker_process_init; import gc; "
        "worker_init.send(sender=None); first = gc.get_freeze_count(); assert first > 50_000, first; "
        "extra = [[] for _ in range(1000)]; worker_process_init.send(sender=None); "
        "assert gc.get_freeze_count() >= first + 1000, (first, gc.get_freeze_count())"
    )
    frozen, views_loaded, walked = _started(start)
    assert frozen > 50_000
    assert walked < frozen / 10
