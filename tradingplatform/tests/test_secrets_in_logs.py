"""Secrets carried one level down, percent-encoded inside another URL, stay out of logs and reports.

The Kite login callback (``/brokers/callback/?request_token=...&state=...``) is a signed-in page:
a browser whose session ended while the trader was on Kite's login page is sent to the sign-in page
with the whole callback URL in ``?next=``, its ``=`` and ``&`` written ``%3D`` and ``%26``.
"""

import io
import json
import logging

import pytest

from tradingplatform import logs

REQUEST_TOKEN = "RqT0kenFromKite7788"
STATE = "N0nceOfTheConnect.5ig0fTheState"
CALLBACK = f"/brokers/callback/?request_token={REQUEST_TOKEN}&action=login&type=login&status=success&state={STATE}"


@pytest.fixture
def written():
    """What the console writes from here on, in both formats (the real filter and formatters)."""
    streams = {"json": io.StringIO(), "plain": io.StringIO()}
    formatters = {
        "json": logs.JsonFormatter(),
        "plain": logs.PlainFormatter("%(levelname)s %(name)s%(rid)s %(message)s"),
    }
    handlers = []
    root = logging.getLogger()
    level = root.level
    for name, stream in streams.items():
        handler = logging.StreamHandler(stream)
        handler.addFilter(logs.ContextFilter())
        handler.setFormatter(formatters[name])
        root.addHandler(handler)
        handlers.append(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lambda: {name: stream.getvalue() for name, stream in streams.items()}
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)


def test_a_kite_callback_sent_to_sign_in_keeps_its_request_token_and_state_out_of_the_logs(
    client, trader, settings, written
):
    settings.LOGIN_FAILURES_PER_USERNAME = 1
    bounced = client.get(CALLBACK)
    assert bounced.status_code == 302 and "%3Frequest_token%3D" in bounced["Location"]  # next= carries it
    sign_in = bounced["Location"]
    assert client.post(sign_in, {"username": "trader", "password": "not it"}).status_code == 200
    assert client.post(sign_in, {"username": "trader", "password": "not it"}).status_code == 429  # logged
    assert client.put(sign_in).status_code == 405  # logged too

    lines = written()
    assert "Too Many Requests" in lines["json"] and "Method Not Allowed" in lines["json"]
    for name, text in lines.items():
        assert REQUEST_TOKEN not in text, (name, text)
        assert STATE not in text and "5ig0fTheState" not in text, (name, text)


@pytest.mark.parametrize(
    "line",
    [
        f"<WSGIRequest: POST '/login/?next=/brokers/callback/%3Frequest_token%3D{REQUEST_TOKEN}%26state%3D{STATE}'>",
        # the same URL once more encoded (a sign-in page's next= inside another next=)
        f"/login/?next=/x/%253Fnext%253D/brokers/callback/%25253Frequest_token%25253D{REQUEST_TOKEN}%252526state%25253D{STATE}",
        f"next=%2Fbrokers%2Fcallback%2F%3Fstate%3D{STATE}%26request_token%3D{REQUEST_TOKEN}",
    ],
)
def test_percent_encoded_secrets_are_redacted_and_what_follows_them_kept(line):
    redacted = logs.redact(line)
    assert REQUEST_TOKEN not in redacted and "5ig0fTheState" not in redacted, redacted
    assert "request_token%" in redacted and "state%" in redacted  # the names stay, to read the line


def test_json_lines_of_a_bounced_callback_name_the_pages_without_their_secrets(client, trader, settings, written):
    settings.LOGIN_FAILURES_PER_USERNAME = 1
    sign_in = client.get(CALLBACK)["Location"]
    client.post(sign_in, {"username": "trader", "password": "not it"})
    client.post(sign_in, {"username": "trader", "password": "not it"})
    records = [json.loads(line) for line in written()["json"].splitlines()]
    refused = [r for r in records if r["logger"] == "django.request"]
    assert refused and all("/login/?next=/brokers/callback/" in r["request"] for r in refused)


def test_an_error_report_of_the_sign_in_page_hides_the_callbacks_secrets_in_its_next(client, trader, settings):
    """Django's report of a 500 (the debug page, a mail to ADMINS) shows the URL, the GET and POST
    parameters and the request's repr: a ``next`` holding the callback URL must not carry its
    request_token and state into it, as the callback's own URL does not."""
    from tradingplatform.testing import error_report

    sign_in = client.get(CALLBACK)["Location"]
    answer = client.post(sign_in, {"username": "trader", "password": "not it", "next": CALLBACK})
    assert answer.status_code == 200
    report = error_report(answer.wsgi_request)
    assert "/brokers/callback/" in report and "next" in report  # the page asked for is still named
    assert REQUEST_TOKEN not in report, report[report.find(REQUEST_TOKEN) - 300 : report.find(REQUEST_TOKEN) + 50]
    assert "5ig0fTheState" not in report
