"""Operations surface: health now; the /ops page and metrics plug in here."""

import redis
from flask import Blueprint, jsonify

from shared import breakers
from shared.defaults import ROLES
from shared.redis_roles import client

ops = Blueprint("ops", __name__)


@ops.get("/healthz")
def healthz():
    """Liveness: the process serves requests. It does not touch Redis, so a dead role cannot fail it."""
    return jsonify({"ok": True})


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
