"""Operations surface: liveness, and the admin-only /ops page that refreshes itself over SSE.

/ops is rendered on the server from the shared snapshot (web.snapshot). The page then opens
/ops/stream, which sends the same panels, re-rendered, every TURNSTREAM_OPS_REFRESH_S seconds:
one template, no client-side renderer to drift from it. EventSource cannot send headers, so the
page carries a short-lived ops token (shared.tokens) for its stream, like a turn's stream URL."""

import time
from collections.abc import Iterator

import redis
from flask import Blueprint, current_app, jsonify, render_template, request, stream_with_context
from flask_sse import Message

from shared import breakers
from shared.defaults import ROLES
from shared.redis_roles import client
from shared.settings import get_settings
from shared.tokens import Principal, TokenError, issue_ops_token, verify_ops_token, verify_user_token
from web.auth import require_admin
from web.errors import ApiError

ops = Blueprint("ops", __name__, template_folder="templates")


@ops.get("/healthz")
def healthz():
    """Liveness: the process serves requests. It does not touch Redis, so a dead role cannot fail it."""
    return jsonify({"ok": True})


def admin_from_request() -> Principal:
    """The admin calling: `Authorization: Bearer`, or `?token=` so a browser can open the page."""
    token = request.args.get("token")
    if token and "Authorization" not in request.headers:
        try:
            principal = verify_user_token(token)
        except TokenError as exc:
            raise ApiError(401, "unauthorized", f"invalid token: {exc}") from exc
        if not principal.is_admin:
            raise ApiError(403, "forbidden", "this needs the admin role")
        return principal
    return require_admin()


def snapshot() -> dict:
    return current_app.extensions["ops_snapshotter"].get()


@ops.get("/ops")
def page():
    principal = admin_from_request()
    return render_template("ops.html", snap=snapshot(), ops_token=issue_ops_token(principal),
                           refresh_s=get_settings().ops_refresh_s)


@ops.get("/ops/snapshot")
def snapshot_json():
    """The same figures as JSON, for scripts."""
    admin_from_request()
    return jsonify(snapshot())


@ops.get("/ops/stream")
def live():
    token = request.args.get("token")
    if not token:
        raise ApiError(401, "unauthorized", "missing ops token (?token=...)")
    try:
        _, expires_at = verify_ops_token(token)
    except TokenError as exc:
        raise ApiError(403, "forbidden", f"this token does not grant the ops stream: {exc}") from exc
    interval = get_settings().ops_refresh_s
    response = current_app.response_class(stream_with_context(_panels(expires_at, interval)),
                                          mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _panels(expires_at: int, interval: float) -> Iterator[str]:
    """Re-rendered panels every `interval` seconds until the ops token expires."""
    yield f"retry: {int(interval * 1000)}\n: ops stream open\n\n"
    while time.time() < expires_at:
        html = render_template("ops_panels.html", snap=snapshot())
        yield str(Message(html, type="snapshot"))
        time.sleep(interval)
    yield str(Message("the ops token expired; reload the page", type="expired"))


@ops.get("/readyz")
def readyz():
    """Readiness: can this process accept turns? Only the broker decides (503 without it); the
    other roles are reported, since the system degrades rather than stops without them.
    Each ping goes through its role's breaker, so a dead role answers at once."""
    roles = {}
    for role in ROLES:
        try:
            client(role).ping()
            roles[role] = "ok"
        except redis.RedisError as exc:
            roles[role] = f"unavailable: {exc}"
    response = jsonify({"ready": roles["broker"] == "ok", "roles": roles, "breakers": breakers.states()})
    response.status_code = 200 if roles["broker"] == "ok" else 503
    return response
