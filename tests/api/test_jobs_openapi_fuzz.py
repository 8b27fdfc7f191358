"""Property-based requests from the OpenAPI schema of the job, event, artifact and webhook routes.

No 5xx for anything a client can send, and every response matches what the schema documents.
Runs on Postgres (its text types refuse NUL and its JSONB refuses ``\\u0000``, which SQLite would
let through). Half the generated specs are pointed at a real dataset and model so that spec
resolution and estimates run on arbitrary valid specs, not only the reference checks.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance

from tests.api.conftest import ApiEnv
from tests.api.jobs_support import Seed, add_artifact, new_job, seed

OUR_ROUTES = r"^/v1/(jobs|artifacts|webhook-endpoints)"
EXAMPLES = 40


def _fuzz(operation: Any, s: Seed, job_id: str) -> None:
    """Run one operation's bounded property test."""

    @given(case=operation.as_strategy(), authorised=st.booleans(), real_refs=st.booleans())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case, authorised: bool, real_refs: bool) -> None:
        if real_refs and isinstance(case.body, dict) and "dataset_id" in case.body:
            body: dict[str, Any] = case.body
            body.update(dataset_id=s.dataset_id, base_model=s.model_name, init_from=None)
        if real_refs and case.path_parameters and "job_id" in case.path_parameters:
            case.path_parameters["job_id"] = job_id
        response = case.call(headers=s.tenant.headers if authorised else {})
        assert response.status_code < 500, (operation.label, response.text)
        # A schema cannot say "this dataset exists" or spell the learn-rate schedule grammar, so a
        # schema-valid spec may rightly be a 422; everything else the schema documents is checked.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    check()


def test_job_routes_never_fail_and_match_their_schema(api_env: ApiEnv) -> None:
    """Each operation gets bounded generated requests, authorised or not; none may answer 5xx."""
    s = seed(api_env)
    job_id = new_job(api_env, s)
    add_artifact(api_env, job_id, s.tenant.id, b"weights")
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_env.client.app)
    operations = [r.ok() for r in schema.include(path_regex=OUR_ROUTES).get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == 14
    for operation in operations:
        _fuzz(operation, s, job_id)
