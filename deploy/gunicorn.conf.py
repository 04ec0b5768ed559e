"""gunicorn for the web tier: gevent workers, so one process holds thousands of SSE streams."""

import os

# gevent patches the standard library before anything else loads: the log config below imports
# modules that import ssl, and gevent warns (MonkeyPatchWarning) when it patches ssl after that.
from gevent import monkey

monkey.patch_all()

# Every web process on this host aggregates the samples of every worker here (shared.metrics_dir).
from shared.metrics_dir import use_host_metrics_dir  # noqa: E402

use_host_metrics_dir()

worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("TURNSTREAM_WORKER_CONNECTIONS", "10000"))
bind = os.environ.get("TURNSTREAM_BIND", "127.0.0.1:8000")
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = "-"
# The path without its query string: stream URLs carry a token (?token=...) that must not reach logs.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(f)s" "%(a)s"'
errorlog = "-"
loglevel = os.environ.get("TURNSTREAM_LOG_LEVEL", "info")
# gunicorn 27's control socket defaults to one fixed path per user (~/.gunicorn/gunicorn.ctl), so
# every web tier on a host would bind the same socket. turnstream is run by signals and its
# supervisor, never by gunicornc, so the socket stays off.
control_socket_disable = True


def json_error_pages() -> None:
    """Requests gunicorn refuses before the app sees them (a URL or header over its limits: 414,
    431, 400; a malformed request line: 400) get gunicorn's own page, which is HTML. Every worker
    writes those through gunicorn.util.write_error, so replacing it here makes them JSON like every
    other error, with the same status. Rejected: a front proxy to rewrite them (one more part every
    deployment must run and configure for a few error pages)."""
    import json

    from gunicorn import util

    def write_json_error(sock, status_int, reason, mesg):
        body = json.dumps({"error": reason.lower().replace(" ", "_"),
                           "message": (str(mesg) or reason)[:200]}).encode()
        head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        util.write_nonblock(sock, head.encode("latin-1") + body)

    util.write_error = write_json_error


json_error_pages()


def on_starting(server):
    """Live gauges left by processes of an earlier run (a restarted container) must not count."""
    from shared.metrics import forget_dead_processes

    forget_dead_processes()


def child_exit(server, worker):
    """prometheus-client multiprocess mode: drop a dead worker's live gauges (SSE clients)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# gunicorn's own error and access logs as JSON too, like the app's (TURNSTREAM_LOG_FORMAT=text to opt out).
if os.environ.get("TURNSTREAM_LOG_FORMAT", "json") == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "shared.logs.ContextFilter", "service": "web"}},
        "formatters": {"json": {"()": "shared.logs.json_formatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"],
                                "stream": "ext://sys.stderr"}},
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                    "gunicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
    }
