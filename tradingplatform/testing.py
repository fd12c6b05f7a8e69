"""Helpers shared by the test suites of every app."""

import os
import signal
import socket
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.views.debug import get_exception_reporter_class

requires_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (a real Redis server)")


def mariadb_only():
    """Skip a test of concurrent writers where the database is not MariaDB (called in the test: the
    database is known then)."""
    if connection.vendor != "mysql":
        pytest.skip("row locks are MariaDB's; SQLite's IMMEDIATE transactions run one writer at a time")


def server_reads(query) -> tuple[object, int]:
    """What ``query()`` returns, and the rows MariaDB read for it (its session's handler reads)."""

    def handler_reads():
        with connection.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%%'")
            return sum(int(value) for _name, value in cursor.fetchall())

    before = handler_reads()
    result = query()
    return result, handler_reads() - before


def error_report(request) -> str:
    """Django's report (as mailed to ADMINS, or the debug page) of an error raised while serving ``request``."""
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        reporter = get_exception_reporter_class(request)(request, *sys.exc_info(), is_email=True)
    return reporter.get_traceback_text() + reporter.get_traceback_html()


def database_url() -> str:
    """The test database as a ``DATABASE_URL``, for a process a test starts (a worker, a server)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "root", safe="") + (f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else "")
    return f"mysql://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 3306}/{db['NAME']}"


def free_port() -> int:
    """A TCP port free on this machine now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a server a test started in its own session (``start_new_session``): SIGTERM to its
    group, SIGKILL when it has not gone in 15 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


class _FormFields(HTMLParser):
    """The fields a browser posts from a page's forms, as shown (``page_form_data``)."""

    SKIPPED = {"submit", "button", "reset", "file", "image", "password"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.data: dict[str, list[str]] = {}
        self._select = None  # (name, its options, those selected)
        self._textarea = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        name, disabled = attrs.get("name"), "disabled" in attrs
        if tag == "input" and name and not disabled and name != "csrfmiddlewaretoken":
            kind = (attrs.get("type") or "text").lower()
            if kind in self.SKIPPED or (kind in ("checkbox", "radio") and "checked" not in attrs):
                return
            self.data.setdefault(name, []).append(attrs.get("value") or ("on" if kind == "checkbox" else ""))
        elif tag == "select":
            self._select = None if disabled or not name else (name, [], [])
        elif tag == "option" and self._select is not None:
            self._select[1].append(attrs.get("value") or "")
            if "selected" in attrs:
                self._select[2].append(attrs.get("value") or "")
        elif tag == "textarea" and name and not disabled:
            self._textarea = name
            self.data.setdefault(name, []).append("")

    def handle_endtag(self, tag):
        if tag == "select" and self._select is not None:
            name, options, selected = self._select
            if selected or options:  # none selected: a browser posts the first
                self.data.setdefault(name, []).extend(selected or options[:1])
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea is not None:
            values = self.data[self._textarea]
            values[-1] = (values[-1] + data).removeprefix("\n")  # a browser drops the first newline


def page_form_data(page) -> dict[str, list[str]]:
    """What a browser posts unchanged from ``page`` (a test client's answer): every field as shown,
    the hidden ones included (a form's ``initial-`` values: what it showed, ``watch_changes``), each
    as the list of its values. Give changes as ``{**data, "name": "new"}``."""
    parser = _FormFields()
    parser.feed(page.content.decode())
    return parser.data


def refused(model, pk, **values) -> bool:
    """Whether the database refuses to write ``values`` on the row (and so keeps what it had),
    whatever writes it: a constraint, not the code's own checks."""
    try:
        with transaction.atomic():
            model.objects.filter(pk=pk).update(**values)
    except IntegrityError:
        return True
    return False
