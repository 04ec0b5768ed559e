"""Operations surface: liveness, and the admin-only /ops page that refreshes itself over SSE.

/ops is rendered on the server from the shared snapshot (web.snapshot). The page then opens
/ops/stream, which sends the same panels, re-rendered, every TURNSTREAM_OPS_REFRESH_S seconds:
one template, no client-side renderer to drift from it. EventSource cannot send headers, so the
page carries a short-lived ops token (shared.identity) for its stream, like a turn's stream URL."""

import time
from collections.abc import Iterator

import redis
from flask import Blueprint, jsonify, render_template
from flask_sse import Message

from shared import breakers
from shared.defaults import STORES
from shared.identity import TokenError, issue_ops_token, verify_ops_token
from shared.redis_stores import client
from shared.settings import get_settings
from web import extensions
from web.auth import query_token, require_admin
from web.errors import ApiError
from web.sse import sse_response

ops = Blueprint("ops", __name__, template_folder="templates")


@ops.get("/healthz")
def healthz():
    """Liveness: the process serves requests. It does not touch Redis, so a dead store cannot fail it."""
    return jsonify({"ok": True})


def snapshot() -> dict:
    return extensions.snapshotter().get()


@ops.get("/ops")
def page():
    principal = require_admin(allow_query_token=True)  # `?token=` so a browser can open the page
    return render_template("ops.html", snap=snapshot(), ops_token=issue_ops_token(principal),
                           refresh_s=get_settings().ops_refresh_s)


@ops.get("/ops/snapshot")
def snapshot_json():
    """The same figures as JSON, for scripts."""
    require_admin(allow_query_token=True)
    return jsonify(snapshot())


@ops.get("/ops/stream")
def live():
    try:
        _, expires_at = verify_ops_token(query_token("ops"))
    except TokenError as exc:
        raise ApiError(403, "forbidden", f"this token does not grant the ops stream: {exc}") from exc
    interval = get_settings().ops_refresh_s
    return sse_response(_panels(expires_at, interval), int(interval * 1000), "ops stream open")


def _panels(expires_at: int, interval: float) -> Iterator[str]:
    """Re-rendered panels every `interval` seconds until the ops token expires."""
    while time.time() < expires_at:
        html = render_template("ops_panels.html", snap=snapshot())
        yield str(Message(html, type="snapshot"))
        time.sleep(interval)
    yield str(Message("the ops token expired; reload the page", type="expired"))


@ops.get("/readyz")
def readyz():
    """Readiness: can this process accept turns? Only the broker decides (503 without it); the
    other stores are reported, since the system degrades rather than stops without them.
    Each ping goes through its store's breaker, so a dead store answers at once."""
    stores = {}
    for store in STORES:
        try:
            client(store).ping()
            stores[store] = "ok"
        except redis.RedisError as exc:
            stores[store] = f"unavailable: {exc}"
    response = jsonify({"ready": stores["broker"] == "ok", "stores": stores, "breakers": breakers.states()})
    response.status_code = 200 if stores["broker"] == "ok" else 503
    return response
