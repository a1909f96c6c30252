"""The ASGI app's exception handlers: no request ever sees a stack trace.

Schema violations become 400s naming the offending param, unknown routes 404s, and anything
unexpected a plain 500, all in OpenAI's error envelope (``octogate.core.errors``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from octogate.core.errors import OpenAIError, format_param

log = logging.getLogger("octogate")


def error_response(exc: OpenAIError) -> Response:
    return Response(exc.json(), exc.status, exc.headers, media_type="application/json")


def _allowed(request: Request) -> str:
    """The methods every route of this path accepts, for a 405's ``Allow`` header (RFC 9110 requires
    it). Starlette's own header names the first matching route's methods only: with GET and DELETE
    as two routes of one path, it would say ``GET``."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, BaseRoute) and route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0]
        param = format_param(tuple(err["loc"][1:]))  # drop "body"/"path"/"query"
        return error_response(OpenAIError(400, f"Invalid value for '{param}': {err['msg']}.", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(OpenAIError(404, f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url"))
        if exc.status_code == 405:
            return error_response(OpenAIError(405, f"Method {request.method} is not allowed for {request.url.path}.",
                                              code="method_not_allowed", headers={"Allow": _allowed(request)}))
        return error_response(OpenAIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(OpenAIError(500, "The server had an error while processing your request.", code="internal_error"))
