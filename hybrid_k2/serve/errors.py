"""OpenAI-shaped HTTP errors: every failure leaves the server as {"error": {message, type, param, code}}.

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


def error_response(status: int, message: str, **kw: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(status, message, **kw), status_code=status, headers=headers)


def _loc_to_param(loc: tuple) -> Optional[str]:
    """('body', 'messages', 0, 'role') -> 'messages.0.role' (OpenAI names the offending field)."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def _validation_message(exc: RequestValidationError) -> tuple[int, str, Optional[str]]:
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        ctx = errors[0].get("ctx") or {}
        return 400, f"request body is not valid JSON: {ctx.get('error', 'parse error')}", None
    if not errors:
        return 422, "invalid request", None
    first = errors[0]
    param = _loc_to_param(tuple(first.get("loc", ())))
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        text = f"missing required field '{param}'"
    else:
        text = f"invalid value for '{param}': {msg}" if param else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return 422, text, param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, type=exc.type)

    @app.exception_handler(HybridK2Error)
    async def _project_error(_: Request, exc: HybridK2Error) -> JSONResponse:
        # Our own one-line errors are about the input (a template, a token, a schema).
        return error_response(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, param = _validation_message(exc)
        return error_response(status, message, param=param,
                              code="invalid_json" if status == 400 else "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = "no such route (see GET /v1/models, POST /v1/chat/completions, POST /v1/completions)"
        return error_response(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while serving a request", exc_info=exc)
        return error_response(500, "internal server error (the server log has the details)")
