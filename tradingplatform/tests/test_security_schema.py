"""schemathesis against /api/v1/openapi.json: no 500s, and every answer matches the schema.

Every operation gets generated requests, valid ones (half of them naming the trader's real
account, instrument and objects, so the success paths run too) and invalid ones, sent with a
valid API key through Django's WSGI application in this process (the test's database). Each
answer must not be a server error, must have a documented status code and content type, and
its body must match the documented schema for that status.

Bounded for CI: ``SCHEMATHESIS_MAX_EXAMPLES`` examples per operation and mode (default 10:
560 requests, 70-90 s on this 2-core machine under load), derandomized so a run is repeatable.
"""

import os
from contextlib import contextmanager

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@contextmanager
def same_connection_for_requests():
    """Django's test client does this too: a request must not close the test's database connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def with_real_ids(case_strategy, owned):
    """Half the cases name the trader's own objects, account and a real instrument."""
    ids = {
        "account_id": owned["account"].pk,
        "order_id": owned["order"].pk,
        "basket_id": owned["basket"].pk,
        "scheduled_id": owned["scheduled"].pk,
        "strategy_id": owned["strategy"].pk,
    }

    def real(spec: dict) -> dict:
        spec = dict(spec)
        if "tradingsymbol" in spec:
            spec.update(exchange="NSE", tradingsymbol="INFY")
        if "account_id" in spec:
            spec["account_id"] = ids["account_id"]
        if "account_ids" in spec:
            spec["account_ids"] = [ids["account_id"]]
        if isinstance(spec.get("items"), list):
            spec["items"] = [real(item) if isinstance(item, dict) else item for item in spec["items"]]
        return spec

    @st.composite
    def cases(draw):
        case = draw(case_strategy)
        if draw(st.booleans()):
            for name in case.path_parameters or {}:
                case.path_parameters[name] = ids.get(name, case.path_parameters[name])
            if isinstance(case.body, dict):
                case.body = real(case.body)
        return case

    return cases()


@pytest.fixture
def no_rate_limit(settings):
    """The generated requests come fast, from one key, placing orders on one account: no waiting on budgets."""
    settings.API_RATE_LIMITS = [(1_000_000, 1.0)]
    unlimited = [(1_000_000, 1.0)]
    settings.BROKER_RATE_LIMITS = {"paper": {"orders": unlimited, "other": unlimited, "quote": unlimited}}


def test_the_api_answers_as_its_schema_says(owned, no_rate_limit):
    secret = owned["api_secret"]
    failures = []
    with same_connection_for_requests():
        schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 25
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=with_real_ids(operation.as_strategy(generation_mode=mode), owned))
                @hypothesis_settings(
                    max_examples=MAX_EXAMPLES,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                def check(case):
                    response = case.call(headers={"Authorization": f"Bearer {secret}"})
                    case.validate_response(response, checks=CHECKS)

                try:
                    check()
                except BaseException as error:  # a schemathesis FailureGroup; keep going, report all
                    if isinstance(error, KeyboardInterrupt):
                        raise
                    failures.append(f"{operation.label} ({mode}): {str(error)[:1500]}")
    assert not failures, "\n\n".join(failures)
