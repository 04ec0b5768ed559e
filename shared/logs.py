"""Structured JSON logs (python-json-logger), every line tagged with what it is about.

The ids of the turn being handled (session, message), the Celery task and the OpenTelemetry
trace ride in context variables: a Flask request or a Celery task sets them once, and every
log line written while handling it carries them, whichever module logs. Context variables are
per thread and per greenlet, so concurrent requests and tasks never mix their ids."""

import logging
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from pythonjsonlogger.json import JsonFormatter

from shared.redaction import LogFilter
from shared.settings import get_settings
from shared.tracing import current_trace_id

CONTEXT_FIELDS = ("session_id", "message_id", "task_id", "task_name")
_context: dict[str, ContextVar[str | None]] = {name: ContextVar(name, default=None) for name in CONTEXT_FIELDS}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ContextFilter(logging.Filter):
    """Copies the context ids and the trace id onto each record (None when unset)."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        for name, var in _context.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        record.trace_id = current_trace_id()
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(trace_id)s "
                         + " ".join(f"%({name})s" for name in CONTEXT_FIELDS),
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})


def configure_logging(service: str, level: int = logging.INFO) -> None:
    """Route the root logger to stderr, as JSON unless TURNSTREAM_LOG_FORMAT=text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(service))
    handler.addFilter(LogFilter())
    handler.setFormatter(json_formatter() if get_settings().log_format != "text" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)


def bind(**ids: str | None) -> list:
    """Set context ids (session_id, message_id, task_id, task_name); returns tokens for `unbind`."""
    return [(_context[name], _context[name].set(value)) for name, value in ids.items() if name in _context]


def unbind(tokens: list) -> None:
    for var, token in reversed(tokens):
        try:
            var.reset(token)
        except ValueError:  # set in another context (a signal ran elsewhere): clear instead.
            var.set(None)


@contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    tokens = bind(**ids)
    try:
        yield
    finally:
        unbind(tokens)
