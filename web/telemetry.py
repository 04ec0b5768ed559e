"""Logs, traces and live figures for the web tier, attached to the app in one call.

Each request binds the session and message ids of its URL to the log context, so every line it
logs (and the JSON error it may turn into) names the turn; the trace id comes from the Flask
instrumentation when OpenTelemetry is on."""

from flask import Flask, g, request

from shared import defaults, logs, tracing
from shared.settings import get_settings
from web import extensions
from web.metrics import start_heartbeat
from web.snapshot import Snapshotter


def _bind_request_ids() -> None:
    args = request.view_args or {}
    g.log_tokens = logs.bind(session_id=args.get("session_id"), message_id=args.get("message_id"))


def _unbind_request_ids(_: BaseException | None = None) -> None:
    tokens = g.pop("log_tokens", None)
    if tokens:
        logs.unbind(tokens)


def configure_process() -> None:
    """JSON logs and (if OTEL_* asks) tracing, once per process, before the app is built."""
    logs.configure_logging("web")
    tracing.setup_tracing("web")


def init_app(app: Flask, heartbeat: bool = True) -> None:
    settings = get_settings()
    tracing.instrument_flask(app)
    app.before_request(_bind_request_ids)
    app.teardown_request(_unbind_request_ids)
    extensions.install_snapshotter(app, Snapshotter(extensions.celery(app), settings.ops_refresh_s))
    if heartbeat:
        start_heartbeat(extensions.dispatcher(app), interval=defaults.OPS_WEB_HEARTBEAT_TTL_S / 3)
