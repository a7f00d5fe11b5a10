"""Schemathesis against the streams API's OpenAPI: malformed requests get a 4xx and a reason."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.streams.conftest import Town

pytestmark = pytest.mark.integration

# The streams resources; `/events` streams until the client leaves, so it is left out.
_PATHS = r"^/v1/(grants|subscriptions|history|streams|audit)"
# Examples per operation: ~15 operations in a few seconds each on 2 cores.
_EXAMPLES = 30


def test_the_api_answers_malformed_requests_with_a_4xx_and_a_reason(town: Town) -> None:
    # Driven by hand: schemathesis's pytest plugin does not run under pytest 9 yet.
    loaded = schemathesis.openapi.from_url(town.base + "/openapi.json")
    schema = loaded.include(path_regex=_PATHS).exclude(path_regex=r"/events$")
    auth = {"Authorization": f"Bearer {town.tokens['planning']}"}
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=_EXAMPLES, deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        def check(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
            case.headers.update(auth)
            response = case.call(timeout=10)
            assert response.status_code < 500, (case.method, case.path, response.text[:300])
            if response.status_code >= 400:
                body = response.json()
                assert body["reason"], body
                assert body["detail"], body

        check()
