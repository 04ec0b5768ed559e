"""Every error leaves as JSON naming the problem; no traceback ever reaches a client."""

import logging

import redis
from flask import Flask, jsonify, request
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from shared.breakers import UNAVAILABLE
from shared.keys import InvalidId
from shared.settings import get_settings

log = logging.getLogger(__name__)

# A Redis that answers but refuses writes (maxmemory reached under noeviction, or a replica) is
# as unavailable to a writer as one that is down: 503 with Retry-After, not a 500.
REFUSED_WRITES = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)


class ApiError(Exception):
    """An error with a status and a message meant for the client."""

    def __init__(self, status: int, error: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers or {}


def error_response(status: int, error: str, message: str, headers: dict | None = None, **extra):
    response = jsonify({"error": error, "message": message, **extra})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _problem(error: dict) -> str:
    """pydantic's message, without the "Value error, " it puts before a validator's own words."""
    message = error["msg"]
    return message.removeprefix("Value error, ") if error["type"] == "value_error" else message


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.error, exc.message, exc.headers)

    @app.errorhandler(InvalidId)
    def _invalid_id(exc: InvalidId):
        return error_response(400, "invalid_id", str(exc), field=exc.what)

    @app.errorhandler(ValidationError)
    def _invalid_body(exc: ValidationError):
        problems = [{"field": ".".join(map(str, e["loc"])), "problem": _problem(e)} for e in exc.errors()]
        # A rule about the whole body (a model validator) has no field: say the rule alone.
        summary = "; ".join(f"{p['field']}: {p['problem']}" if p["field"] else p["problem"] for p in problems)
        return error_response(400, "invalid_body", summary, problems=problems)

    def _unavailable(exc: Exception):
        """A Redis store (or the broker's queue) is down or refuses writes: say so at once, and
        when to come back."""
        store = getattr(exc, "store", None) or ("broker" if isinstance(exc, OperationalError) else None)
        log.warning("%s %s unavailable: %s", request.method, request.path, exc)
        retry_after = str(get_settings().broker_retry_after_s)
        which = f"the {store} store" if store else "a store"
        state = "refuses writes (full or read-only)" if isinstance(exc, REFUSED_WRITES) else "is unavailable"
        return error_response(503, "unavailable", f"{which} {state}; retry in {retry_after}s",
                              {"Retry-After": retry_after})

    for unavailable in (*UNAVAILABLE, OperationalError, *REFUSED_WRITES):
        app.register_error_handler(unavailable, _unavailable)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # Keep werkzeug's own headers (a 405's Allow, a 401's WWW-Authenticate), not its HTML type.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"),
                              exc.description or exc.name or "error", headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "the server failed to handle this request")
