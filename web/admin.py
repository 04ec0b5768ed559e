"""Admin surface: invalidating permission memos after a policy change (admin role only)."""

import logging

import redis
from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, model_validator

from shared.guards import auth_memo
from web.api import json_body
from web.auth import require_admin
from web.errors import ApiError

log = logging.getLogger(__name__)

admin = Blueprint("admin", __name__, url_prefix="/admin")


class InvalidateBody(BaseModel):
    """Exactly one of: {"user": "alice"}, {"tool": "weather"}, {"tenant": "acme"}, {"all": true}."""

    model_config = ConfigDict(extra="forbid")
    user: str | None = None
    tool: str | None = None
    tenant: str | None = None
    all: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> "InvalidateBody":
        auth_memo.invalidation_target(self.user, self.tool, self.tenant, self.all)
        return self


@admin.post("/auth/invalidate")
def invalidate_auth():
    """Every matching memo stops counting for the very next check; the cost is one INCR."""
    principal = require_admin()
    body = json_body(InvalidateBody)
    try:  # the ids are validated as the generation key is built (400 invalid_id)
        result = auth_memo.invalidate(user=body.user, tool=body.tool, tenant=body.tenant, everything=body.all)
    except redis.RedisError as exc:
        raise ApiError(503, "auth_memo_unavailable",
                       f"the permission memo could not be invalidated ({type(exc).__name__}); try again") from exc
    log.info("admin %s invalidated permission memos: %s", principal.owner, result)
    return jsonify({"invalidated": {result["scope"]: result["target"]}, "generation": result["generation"]})
