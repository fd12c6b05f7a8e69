"""Browser journeys: the platform started as ``bin/run`` starts it (``e2e/stack.py``), once per
session, driven by Playwright in Debian's Chromium (never a downloaded browser).

Environment:
- ``DATABASE_URL`` / ``REDIS_URL``: MariaDB and Redis servers (a fresh database and key prefix
  per run); without them SQLite and the Procfile's embedded Redis.
- ``E2E_CHROMIUM``: the browser binary (``/usr/bin/chromium``); ``E2E_HEADED=1`` to watch.
- ``E2E_ATTACH=var/e2e-run/<run id>``: use a stack ``python -m e2e.stack`` keeps running
  (quick iterations) instead of starting one.

The stack runs with bin/run's defaults (``STACK_ENV`` is empty; ``MONITORING_INTERVAL_S`` stays
60 s): every live update a journey waits for must come by the fast path and the pushes, none by
waiting for the next monitoring cycle.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from e2e.stack import Stack
from e2e.steps import DESKTOP, PASSWORD, SCREENSHOTS, Trader

STACK_ENV: dict[str, str] = {}

# Live updates come over the websocket within a second or two; a monitoring cycle on a busy
# 2-core CI machine can take longer, so waits are generous (they end as soon as the DOM changes).
expect.set_options(timeout=30_000)


@pytest.fixture(scope="session")
def stack(pytestconfig) -> Iterator[Stack]:
    attach = os.environ.get("E2E_ATTACH")
    if attach:
        yield Stack.attach(attach)
        return
    with Stack(env=STACK_ENV) as running:
        with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print(
                f"\nstack {running.run_id} up in {running.up_s:.1f} s (database ready in {running.setup_s:.1f} s) "
                f"at {running.base_url}; logs in {running.dir}"
            )
        yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"),
            headless=not os.environ.get("E2E_HEADED"),
        )
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def trader_pool(stack) -> list[Trader]:
    """Fresh traders for the session's tests, created in one shell call (each Django start costs seconds)."""
    names = [f"trader_{secrets.token_hex(4)}" for _ in range(12)]
    ids = stack.shell_json(
        "import json; from accounts.models import User\n"
        f"print(json.dumps([User.objects.create_user(username=n, password={PASSWORD!r}).pk for n in {names!r}]))"
    )
    return [Trader(name, PASSWORD, pk) for name, pk in zip(names, ids, strict=True)]


@pytest.fixture
def trader(trader_pool) -> Trader:
    return trader_pool.pop()


@pytest.fixture
def context(browser, stack, request) -> Iterator[BrowserContext]:
    ctx = browser.new_context(base_url=stack.base_url, viewport=DESKTOP)
    frames: list[str] = []  # what the pages' websockets received, shown when a journey fails

    def record(page, frame):
        frames.append(f"{time.strftime('%H:%M:%S')} {page.url}: {str(frame)[:1500]}")

    script_errors: list[str] = []  # uncaught exceptions in the pages' scripts, and CSP refusals, fail the journey

    def watch(page):
        page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: record(page, frame)))
        page.on("pageerror", lambda error: script_errors.append(f"{page.url}: {error}"))
        # What the Content-Security-Policy refuses (an inline script or style, an eval) is logged
        # by the browser as a console error: it fails the journey too.
        page.on(
            "console",
            lambda message: (
                "Content Security Policy" in message.text and script_errors.append(f"{page.url}: {message.text}")
            ),
        )

    ctx.on("page", watch)
    yield ctx
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for i, open_page in enumerate(ctx.pages):
            stem = SCREENSHOTS / f"FAILED-{request.node.name}-{i}"
            open_page.screenshot(path=f"{stem}.png", full_page=True)
            Path(f"{stem}.html").write_text(open_page.content())
        print("\n--- websocket frames received\n" + "\n".join(frames[-30:]))
        print(f"\n--- stack logs at failure\n{stack.logs(60)}")
    ctx.close()
    assert not script_errors, "script errors in the pages:\n" + "\n".join(script_errors)


@pytest.fixture
def page(context) -> Page:
    return context.new_page()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
