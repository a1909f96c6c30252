"""OpenAI's error envelope, ``{"error": {"message", "type", "param", "code"}}``, for every failure.

Handlers registered here make sure no request ever sees a stack trace: schema violations become
400s naming the offending param, unknown routes 404s, and anything unexpected a plain 500.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("octogate")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class OpenAIError(Exception):
    """An error the client should see, with its HTTP status and OpenAI envelope fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return Response(orjson.dumps(self.body()), self.status, self.headers, media_type="application/json")


def format_param(loc: tuple[Any, ...]) -> str | None:
    """('messages', 0, 'user', 'content') -> 'messages[0].content' (union tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or (isinstance(part, str) and ("[" in part or part.startswith("function-"))):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or None


# Names pydantic inserts into error paths for union members and discriminated-union tags.
_UNION_TAGS = frozenset(
    {"str", "int", "float", "bool", "list", "dict", "none", "system", "developer", "user", "assistant", "tool", "function",
     "NamedToolChoice", "TextPart", "ContentPart"}
)


def from_validation_error(exc: ValidationError) -> OpenAIError:
    """Turn pydantic's report into one OpenAI-style 400 naming the first offending param."""
    errors = exc.errors(include_url=False)
    for err in errors:
        ctx_err = (err.get("ctx") or {}).get("error")
        param = getattr(ctx_err, "param", None)
        if param:
            return OpenAIError(400, f"Invalid value for '{param}': {ctx_err.message}", param=param, code="invalid_value")
    err = _most_specific(errors)
    param = format_param(err["loc"])
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return OpenAIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "union_tag_invalid":
        expected = (err.get("ctx") or {}).get("expected_tags", "")
        return OpenAIError(
            400, f"Invalid value for '{param}.role': expected one of {expected}.", param=f"{param}.role", code="invalid_value"
        )
    if kind == "union_tag_not_found":
        return OpenAIError(400, f"Missing required parameter: '{param}.role'.", param=f"{param}.role", code="missing_required_parameter")
    code = "invalid_type" if kind.endswith("_type") or kind.endswith("_parsing") else "invalid_value"
    return OpenAIError(400, f"Invalid value for '{param}': {msg}.", param=param, code=code)


def _most_specific(errors: list[Any]) -> Any:
    # With unions pydantic reports one error per member; the deepest path is the one the client meant.
    return max(errors, key=lambda e: len([p for p in e["loc"] if p not in _UNION_TAGS]))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0]
        param = format_param(tuple(err["loc"][1:]))  # drop "body"/"path"/"query"
        return OpenAIError(400, f"Invalid value for '{param}': {err['msg']}.", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return OpenAIError(404, f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url").response()
        if exc.status_code == 405:
            return OpenAIError(405, f"Method {request.method} is not allowed for {request.url.path}.", code="method_not_allowed").response()
        return OpenAIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return OpenAIError(500, "The server had an error while processing your request.", code="internal_error").response()
