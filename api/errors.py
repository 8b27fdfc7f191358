"""The API's one error hierarchy and its one renderer: RFC 9457 ``application/problem+json``.

Services raise a ``Problem`` subclass (``NotFoundProblem``, ``ConflictProblem(code="dataset_in_use")``,
``ValidationProblem(pointer="/url")`` ...). ``install_problem_handlers`` renders those, core's
``HyperforgeError``, the storage layer's ``StorageError``, FastAPI's own 404/405/422 and anything
unexpected (500, logged with its traceback) through ``problem_response``, the only place a problem
body is built. Every body has ``type, title, status, detail, instance, code, request_id`` and, for
field problems, ``errors: [{pointer, code, detail}]`` where ``pointer`` is an RFC 6901 JSON pointer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, TypedDict

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from api.storage.base import ObjectNotFoundError, StorageError
from core.errors import HyperforgeError

PROBLEM_CONTENT_TYPE = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-Id"
logger = logging.getLogger("api.errors")


class FieldError(TypedDict):
    """One field's problem: where (JSON pointer), what (stable code) and a readable detail."""

    pointer: str
    code: str
    detail: str


class Problem(Exception):
    """Base of every error the API reports to a client; subclasses fix ``status``, ``code`` and ``title``."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        pointer: str | None = None,
        errors: Sequence[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)
        if code is not None:
            self.code = code
        field_errors = list(errors or [])
        if pointer is not None:
            field_errors.insert(0, FieldError(pointer=pointer, code=self.code, detail=self.detail))
        self.errors = field_errors
        self.headers = dict(headers or {})
        # Extension members (RFC 9457 section 3.2), e.g. the report of an invalid dataset.
        self.extra = dict(extra or {})


class BadRequestProblem(Problem):
    """The request is malformed in a way no single field explains (400)."""

    status, code, title = 400, "bad_request", "Bad Request"


class UnauthorizedProblem(Problem):
    """No credentials, or credentials that do not identify anyone (401)."""

    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"WWW-Authenticate": 'Bearer realm="hyperforge"'})


class ForbiddenProblem(Problem):
    """Authenticated, but this action is not open to the caller (403; never for others' objects)."""

    status, code, title = 403, "forbidden", "Forbidden"


class NotFoundProblem(Problem):
    """No such object for this tenant: others' objects are reported exactly like missing ones (404)."""

    status, code, title = 404, "not_found", "Not Found"


class MethodNotAllowedProblem(Problem):
    """The path exists but not with this method (405)."""

    status, code, title = 405, "method_not_allowed", "Method Not Allowed"


class ConflictProblem(Problem):
    """The object's current state forbids the request (409)."""

    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLargeProblem(Problem):
    """The request body, an archive or a member of it is over a limit (413)."""

    status, code, title = 413, "payload_too_large", "Content Too Large"


class UnsupportedMediaTypeProblem(Problem):
    """The body's media type is not one this route reads (415)."""

    status, code, title = 415, "unsupported_media_type", "Unsupported Media Type"


class RangeNotSatisfiableProblem(Problem):
    """A ``Range`` header asks for bytes the object does not have (416)."""

    status, code, title = 416, "range_not_satisfiable", "Range Not Satisfiable"


class ValidationProblem(Problem):
    """The request is well-formed but its content is invalid (422)."""

    status, code, title = 422, "validation_failed", "Unprocessable Content"


class ServiceUnavailableProblem(Problem):
    """A dependency (database, broker, storage) cannot be reached right now (503)."""

    status, code, title = 503, "service_unavailable", "Service Unavailable"


class ProblemDetails(BaseModel):
    """The problem+json body every error response carries (RFC 9457)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:hyperforge:problem:validation_failed",
                    "title": "Unprocessable Content",
                    "status": 422,
                    "detail": "1 field is invalid",
                    "instance": "/v1/jobs",
                    "code": "validation_failed",
                    "request_id": "req_01j9z3k8m2v6f4q7r1s5t0w3xy",
                    "errors": [{"pointer": "/training/steps", "code": "out_of_range", "detail": "> 0"}],
                }
            ]
        },
    )

    type: str = Field(description="A URN naming the problem type: `urn:hyperforge:problem:<code>`.")
    title: str = Field(description="The HTTP status phrase.")
    status: int
    detail: str = Field(description="What went wrong, for a human.")
    instance: str = Field(description="The request path.")
    code: str = Field(description="Stable snake_case code to branch on.")
    request_id: str | None = Field(description="Also sent as the `X-Request-Id` header.")
    errors: list[dict[str, str]] = Field(
        default_factory=list, description="Field problems: `{pointer, code, detail}`."
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json bodies for ``statuses``."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        for status in statuses
    }


def document_problems(openapi: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI schema tell the truth about 422s: problem+json, not FastAPI's default body."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    if "ProblemDetails" not in schemas:
        schemas["ProblemDetails"] = ProblemDetails.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
    problem = {
        "description": "Unprocessable Content",
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
    }
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            default_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
            if default_422.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                responses["422"] = problem
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return openapi


def request_id_of(request: Request) -> str | None:
    """The request id the middleware assigned (None outside it)."""
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    detail: str,
    title: str | None = None,
    errors: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """Build the problem+json response; the only place a problem body is assembled."""
    request_id = request_id_of(request)
    body: dict[str, Any] = {
        "type": f"urn:hyperforge:problem:{code}",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        "request_id": request_id,
        "errors": list(errors),
    }
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    all_headers = dict(headers or {})
    if request_id:
        all_headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(body, status_code=status, headers=all_headers, media_type=PROBLEM_CONTENT_TYPE)


# pydantic's error types folded into the few codes clients handle (the same codes core.spec uses).
_PYDANTIC_CODES: dict[str, str] = {
    "missing": "missing",
    "missing_argument": "missing",
    "extra_forbidden": "unknown_field",
    "unexpected_keyword_argument": "unknown_field",
    "literal_error": "invalid_choice",
    "enum": "invalid_choice",
    "json_invalid": "invalid_json",
}
_RANGE_PREFIXES = ("greater_than", "less_than", "too_short", "too_long", "multiple_of", "string_too")


def _pydantic_code(error_type: str) -> str:
    if error_type in _PYDANTIC_CODES:
        return _PYDANTIC_CODES[error_type]
    if error_type.startswith(_RANGE_PREFIXES):
        return "out_of_range"
    if error_type.endswith(("_type", "_parsing")):
        return "invalid_type"
    return error_type


def json_pointer(parts: Sequence[int | str]) -> str:
    """RFC 6901 pointer for a location path (``~`` and ``/`` escaped)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _validation_errors(exc: RequestValidationError) -> list[FieldError]:
    """FastAPI's error list as field errors; body locations become JSON pointers into the body."""
    out: list[FieldError] = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        where, rest = (str(loc[0]), loc[1:]) if loc else ("body", ())
        pointer = json_pointer(rest) if where == "body" else json_pointer((where, *rest))
        out.append(
            FieldError(pointer=pointer, code=_pydantic_code(str(err.get("type", ""))), detail=err["msg"])
        )
    return out


def _core_errors(exc: HyperforgeError) -> list[FieldError]:
    """Field errors carried by a core error: its ``errors`` list, else its ``option`` as one pointer."""
    listed = getattr(exc, "errors", None)
    if isinstance(listed, list) and listed:
        return [
            FieldError(
                pointer=str(e.get("pointer", "")),
                code=str(e.get("code", exc.code)),
                detail=str(e.get("detail", "")),
            )
            for e in listed
            if isinstance(e, dict)
        ]
    if exc.option:
        pointer = exc.option if exc.option.startswith("/") else "/" + exc.option
        return [FieldError(pointer=pointer, code=exc.code, detail=exc.message)]
    return []


async def _handle_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        errors=exc.errors,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _handle_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    noun = "field is" if len(errors) == 1 else "fields are"
    return problem_response(
        request, status=422, code="validation_failed", detail=f"{len(errors)} {noun} invalid", errors=errors
    )


async def _handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, Problem):
        # FastAPI wraps errors raised while reading a JSON body (e.g. our streamed body limit) in a 400.
        return await _handle_problem(request, exc.__cause__)
    codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "payload_too_large"}
    code = codes.get(exc.status_code, HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_"))
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route matches {request.url.path}"
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(
        request, status=exc.status_code, code=code, detail=detail, headers=dict(exc.headers or {})
    )


async def _handle_core(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HyperforgeError)
    return problem_response(request, status=422, code=exc.code, detail=str(exc), errors=_core_errors(exc))


async def _handle_storage(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ObjectNotFoundError):
        return problem_response(request, status=404, code="not_found", detail="the object's content is gone")
    logger.error("storage error", exc_info=exc, extra={"request_id": request_id_of(request)})
    return problem_response(
        request, status=503, code="storage_unavailable", detail="object storage failed; retry later"
    )


async def _handle_unexpected(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error", exc_info=exc, extra={"request_id": request_id_of(request)})
    return problem_response(
        request, status=500, code="internal_error", detail="an unexpected error occurred; it has been logged"
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Render every error the app can meet as problem+json."""
    app.add_exception_handler(Problem, _handle_problem)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(HyperforgeError, _handle_core)
    app.add_exception_handler(StorageError, _handle_storage)
    app.add_exception_handler(Exception, _handle_unexpected)
