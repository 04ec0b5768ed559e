"""Operations surface: health now; the /ops page and metrics plug in here."""

from flask import Blueprint, jsonify

ops = Blueprint("ops", __name__)


@ops.get("/healthz")
def healthz():
    """Liveness: the process serves requests. It does not touch Redis, so a dead role cannot fail it."""
    return jsonify({"ok": True})
