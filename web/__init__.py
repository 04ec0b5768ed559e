"""The web tier: an app factory with one blueprint per surface (api, stream, ops, ui, admin)."""

import logging

from flask import Flask

from shared import defaults
from shared.celery_config import make_celery
from shared.policy import check_policies
from shared.redis_roles import client
from shared.settings import get_settings
from web.admin import admin
from web.api import api
from web.dispatcher import Dispatcher
from web.errors import register_error_handlers
from web.ops import ops
from web.stream import stream
from web.ui import ui


def create_app(check_redis: bool = True) -> Flask:
    """Build the app. Refuses to start if the broker or progress Redis evicts keys."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    settings.secret_key()
    if check_redis:
        check_policies()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.prompt_max_chars * 4 + 4096
    app.json.sort_keys = False
    app.extensions["celery"] = make_celery("turnstream-web", settings)
    app.extensions["dispatcher"] = Dispatcher(client("progress"), settings.sse_client_queue,
                                              subscribe_timeout=defaults.SSE_SUBSCRIBE_TIMEOUT_S)
    for blueprint in (api, stream, ops, ui, admin):
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    return app
