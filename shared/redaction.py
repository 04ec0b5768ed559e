"""Keeping user text out of what operators see: Celery's task reprs (Flower, task events) and
worker logs.

User text is everything a user or a model wrote: prompts, answers, history, tool arguments and
tool results. A turn's task arguments carry all of it, and Celery copies their repr into the
message headers (`argsrepr`, `kwargsrepr`), the `task-sent` and `task-received` events Flower
shows, the `task-succeeded` event's result, the worker's "succeeded in …: <result>" log line, and
the arguments `inspect active` (Flower's worker pages) reports.

Rule: an allowlist. Inside task arguments only values under the keys in SHOWN_KEYS (ids, names,
states, counts) are shown; every other string becomes a placeholder with its length (message
headers leave the other fields out altogether: `summary`), so an operator can still follow a turn
by its ids. Results, which are whole turns or tool outcomes,
are replaced by one placeholder. The rejected alternative is a denylist of known text fields
(prompt, answer, args…): it leaks the first field somebody adds.

Hooks, each a class Celery lets an app replace: the app's `amqp` class (task reprs, before the
`task-sent` event is built), the task class's `Request` (the `task-succeeded` result and the
`inspect` view), and a logging filter (the success line). TURNSTREAM_REDACT_USER_TEXT=0 turns all
of it off, for debugging on a developer's machine."""

import logging

from celery.app.amqp import AMQP
from celery.app.task import Task
from celery.worker.request import Request

from shared.settings import get_settings

# Keys whose values identify a turn, a step or a tool call without saying what anyone wrote.
SHOWN_KEYS = frozenset({"session_id", "message_id", "call_id", "tool", "step", "round", "status", "cache",
                        "owner", "tenant", "user", "roles", "permission", "allowed", "memo", "duration_ms"})
RESULT_PLACEHOLDER = "<redacted result>"


def enabled() -> bool:
    return get_settings().redact_user_text


def placeholder(value: object) -> str:
    return f"<redacted {len(value)} chars>" if isinstance(value, str) else f"<redacted {type(value).__name__}>"


def redact(value: object, shown: bool = False) -> object:
    """`value` with every string not under a SHOWN_KEYS key replaced by a placeholder."""
    if isinstance(value, dict):
        return {key: redact(item, shown=key in SHOWN_KEYS) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item, shown) for item in value)
    if isinstance(value, str) and not shown:
        return placeholder(value)
    return value


def summary(value: object) -> object:
    """One task argument as its message header shows it: a dict by its SHOWN_KEYS entries whose
    values are plain (ids, names, counts; the rest, user text or not, is left out), a list by its
    length, anything else by its placeholder.

    Only the top level is read: the turn a step carries holds its whole tool catalogue, history
    and rounds, and walking it (redact, then saferepr) on every send was a few per cent of a busy
    tools worker's CPU, for a header that shows the ids anyway."""
    if isinstance(value, dict):
        return {key: item for key, item in value.items() if key in SHOWN_KEYS and _plain(item)}
    if isinstance(value, (list, tuple)):
        return f"<{len(value)} items>"
    return value if isinstance(value, (int, float, bool)) or value is None else placeholder(value)


def _plain(value: object) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(item, str) for item in value)
    return isinstance(value, (str, int, float, bool)) or value is None


class RedactingAMQP(AMQP):
    """Builds task messages whose `argsrepr` / `kwargsrepr` hold no user text: each argument's summary."""

    def as_task_v2(self, task_id, name, args=None, kwargs=None, *rest, argsrepr=None, kwargsrepr=None,
                   **options):
        if enabled():
            argsrepr = repr(tuple(summary(arg) for arg in args or ()))
            kwargsrepr = repr({key: summary(value) for key, value in (kwargs or {}).items()})
        return super().as_task_v2(task_id, name, args, kwargs, *rest, argsrepr=argsrepr, kwargsrepr=kwargsrepr,
                                  **options)


class RedactingRequest(Request):
    """A worker-side request whose task events carry no result text, and whose `inspect` view
    (`active`, `reserved`, `scheduled`: Flower's worker pages, /ops) carries redacted arguments,
    still as structures, so the turn's ids stay readable."""

    def send_event(self, type, **fields):
        if "result" in fields and enabled():
            fields["result"] = RESULT_PLACEHOLDER
        super().send_event(type, **fields)

    def info(self, safe=False):
        shown = super().info(safe=safe)
        if enabled() and not safe:
            shown["args"] = redact(list(shown["args"] or ()))
            shown["kwargs"] = redact(dict(shown["kwargs"] or {}))
        return shown


class RedactingTask(Task):
    Request = "shared.redaction:RedactingRequest"


class LogFilter(logging.Filter):
    """Replaces the result and arguments of Celery's task log lines ("succeeded in …: <result>")."""

    FIELDS = ("return_value", "args", "kwargs")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("celery.app.trace") and isinstance(record.args, dict) and enabled():
            record.args = {key: (RESULT_PLACEHOLDER if key in self.FIELDS else value)
                           for key, value in record.args.items()}
            if isinstance(getattr(record, "data", None), dict):  # Celery passes the same fields as `extra`
                record.data = record.args
        return True
