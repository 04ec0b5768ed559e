"""The web tier: an app factory with one blueprint per surface (api, ag_ui, stream, ops, ui, admin).

Rule: Flask views and what only they use (SSE fan-out, auth of requests, the /ops snapshot).
It sends turns by task name (shared.turn_flow) and never imports `workers`."""

from flask import Flask
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from shared import defaults, gevent_polls, sent_events
from shared.broker_channel import transport_for
from shared.celery_config import make_celery
from shared.eviction import check_evictions
from shared.redis_stores import check_broker_version, make_redis
from shared.settings import get_settings
from web import extensions, telemetry
from web.admin import admin
from web.ag_ui import ag_ui
from web.api import api
from web.dispatcher import Dispatcher
from web.errors import register_error_handlers
from web.metrics import metrics_bp
from web.openapi import openapi
from web.ops import ops
from web.ratelimit import TurnRateLimiter
from web.request_limit import install_request_limit
from web.stream import stream
from web.turn_watch import TurnWatch
from web.ui import ui


def create_app(check_redis: bool = True) -> Flask:
    """Build the app. Refuses to start if the broker or progress Redis evicts keys, or the
    broker is older than Redis 7."""
    telemetry.configure_process()
    gevent_polls.install()  # gunicorn's gevent workers patched before loading us
    settings = get_settings()
    settings.secret_key()
    if check_redis:
        check_evictions()
        check_broker_version()

    app = Flask(__name__)
    # The byte cap follows JSON's worst case for a prompt within the character limit: a character
    # may arrive as a \uXXXX escape (6 bytes), one outside the BMP as a surrogate pair (12). The
    # exact limit is the view's character count (a 413 naming it).
    app.config["MAX_CONTENT_LENGTH"] = settings.prompt_max_chars * defaults.JSON_MAX_BYTES_PER_CHAR + 4096
    app.json.sort_keys = False
    # Streams get their own small pool: thousands of clients replaying at once queue for a
    # connection instead of opening one each.
    stream_redis = make_redis(settings.store_url("progress"), settings, settings.sse_redis_connections)
    celery = make_celery("turnstream-web", settings)
    celery.conf.broker_transport = transport_for(settings.store_target("broker").sentinel)  # shared.broker_channel
    sent_events.batch_here(celery)  # the POST's task-sent event leaves in a batch, not in the request
    extensions.install(app, celery=celery, stream_redis=stream_redis,
                       dispatcher=Dispatcher(stream_redis, settings.sse_client_queue,
                                             subscribe_timeout=defaults.SSE_SUBSCRIBE_TIMEOUT_S),
                       turn_watch=TurnWatch(settings.sse_heartbeat_s),
                       rate_limiter=TurnRateLimiter(settings))
    for blueprint in (api, ag_ui, openapi, stream, ops, metrics_bp, admin, ui):
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    install_request_limit(app, settings.request_rate_limit)
    allow_cross_origin(app, settings.cors_origin_list())
    telemetry.init_app(app)
    trust_proxies(app, settings.trusted_proxies)
    return app


def trust_proxies(app: Flask, hops: int) -> None:
    """Behind `hops` proxies (TURNSTREAM_TRUSTED_PROXIES), the client's address is the one the
    outermost of them put in X-Forwarded-For: the request limit counts tokenless requests by it,
    logs and traces show it. Outermost, so every layer of the app sees that address. With 0 the
    header is ignored: a client cannot choose the address it is counted by."""
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops)


def allow_cross_origin(app: Flask, origins: list[str]) -> None:
    """Browsers on `origins` (TURNSTREAM_CORS_ORIGINS) may call the API and open streams; with
    none configured no CORS header is sent and only same-origin pages can."""
    if not origins:
        return
    CORS(app, resources={r"/api/*": {"origins": origins}, r"/stream/*": {"origins": origins}},
         allow_headers=["Authorization", "Content-Type", "Last-Event-ID"], expose_headers=["Retry-After"],
         methods=["GET", "POST", "DELETE"], max_age=600)
