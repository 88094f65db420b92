"""HTTP errors in the caller's API shape: OpenAI's {"error": {message, type, param, code}}, or on the
Anthropic routes (/v1/messages...) Anthropic's {"type": "error", "error": {type, message}}.

The handlers registered here replace FastAPI's defaults so that a client never sees a stack trace or
FastAPI's own `{"detail": [...]}` shape; unexpected exceptions are logged here and answered with a
generic 500.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hybrid_k2.errors import HybridK2Error

log = logging.getLogger("hybrid_k2.serve")

# OpenAI's `type` strings by status, as its SDK and API use them.
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
    503: "server_error",
}


# Anthropic's error types by status (its SDK maps them to exception classes).
_ANTHROPIC_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/")


def is_anthropic(path: str) -> bool:
    return path == ANTHROPIC_PATHS[0] or path.startswith(ANTHROPIC_PATHS[1])


class APIError(HybridK2Error):
    """A request we refuse, with the HTTP status and OpenAI error fields to answer with."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None,
                 code: Optional[str] = None, type: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPE_BY_STATUS.get(status, "invalid_request_error")


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_body(status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
               type: Optional[str] = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type or _TYPE_BY_STATUS.get(status, "server_error"),
                      "param": param, "code": code}}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPE_BY_STATUS.get(status, "api_error"), "message": message}}


def error_body_for(path: str, status: int, message: str, **kw: Any) -> dict[str, Any]:
    """The error body in the API shape of the route at `path`."""
    return anthropic_error_body(status, message) if is_anthropic(path) else error_body(status, message, **kw)


def error_response(status: int, message: str, *, path: str = "", **kw: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body_for(path, status, message, **kw), status_code=status, headers=headers)


def _loc_to_param(loc: tuple) -> Optional[str]:
    """('body', 'messages', 0, 'role') -> 'messages.0.role' (OpenAI names the offending field)."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def _validation_message(exc: RequestValidationError) -> tuple[int, str, Optional[str]]:
    """A body that does not validate is a 400 invalid_request_error, as OpenAI and Anthropic answer it
    (FastAPI's default 422 makes the openai client raise UnprocessableEntityError)."""
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        ctx = errors[0].get("ctx") or {}
        return 400, f"request body is not valid JSON: {ctx.get('error', 'parse error')}", None
    if not errors:
        return 400, "invalid request", None
    first = errors[0]
    param = _loc_to_param(tuple(first.get("loc", ())))
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        text = f"missing required field '{param}'"
    else:
        text = f"invalid value for '{param}': {msg}" if param else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return 400, text, param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, path=request.url.path, param=exc.param, code=exc.code,
                              type=exc.type)

    @app.exception_handler(HybridK2Error)
    async def _project_error(request: Request, exc: HybridK2Error) -> JSONResponse:
        # Our own one-line errors are about the input (a template, a token, a schema).
        return error_response(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                              path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, param = _validation_message(exc)
        json_error = message.startswith("request body is not valid JSON")
        return error_response(status, message, path=request.url.path, param=param,
                              code="invalid_json" if json_error else "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = ("no such route (see GET /v1/models, POST /v1/chat/completions, POST /v1/completions, "
                       "POST /v1/messages)")
        return error_response(exc.status_code, message, path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while serving a request", exc_info=exc)
        return error_response(500, "internal server error (the server log has the details)", path=request.url.path)
