"""Property-based requests generated from the OpenAPI schema of the dataset, model, admin and ops
routes: no 5xx, and every response matches what the schema documents (status, content type, body)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.api.conftest import ADMIN_TOKEN, ApiEnv

OUR_ROUTES = r"^/(v1/(datasets|models|admin)|healthz|readyz)"


def _fuzz(operation: schemathesis.APIOperation, token: str) -> None:
    @given(case=operation.as_strategy(), authorised=st.booleans())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case, authorised: bool) -> None:
        headers = {"Authorization": f"Bearer {token}"} if authorised else {}
        response = case.call(headers=headers)
        assert response.status_code < 500, (operation.label, response.text)
        # Everything but "schema-valid data is accepted": the schema cannot say "a zip whose
        # images decode", so valid-looking uploads are rightly 422 ``dataset_invalid``.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    check()


def test_routes_never_fail_and_match_their_schema(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    schema = schemathesis.openapi.from_asgi("/openapi.json", any_env.client.app)
    operations = [result.ok() for result in schema.include(path_regex=OUR_ROUTES).get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        _fuzz(operation, ADMIN_TOKEN if operation.path.startswith("/v1/admin") else tenant.key)
