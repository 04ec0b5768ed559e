"""Who a request or a turn is for: the Principal, and the signed tokens that carry one
(PyJWT, HS256, secret from the environment). In this code "token" means one of these.

Three audiences: API bearer tokens carry who the user is; stream tokens are short-lived,
scoped to one turn, and ride in the stream URL because EventSource cannot send headers; ops
tokens do the same for the /ops page's stream.

A signature proves who wrote a token, not that its claims have the right shape: every
token's claims are validated by a strict pydantic model (`roles` must be a list of ids, not
a string or a number), and a token that fails is refused like a forged one."""

import time
from dataclasses import dataclass

import jwt
from pydantic import BaseModel, ConfigDict, ValidationError

from shared import defaults
from shared.keys import valid_id
from shared.settings import get_settings

API_AUDIENCE = "turnstream-api"
STREAM_AUDIENCE = "turnstream-stream"


class TokenError(ValueError):
    """A token that is missing, malformed, expired, or for something else."""


@dataclass(frozen=True)
class Principal:
    user: str
    tenant: str
    roles: tuple[str, ...]

    @property
    def owner(self) -> str:
        return f"{self.tenant}/{self.user}"

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


class _Claims(BaseModel):
    # strict: no coercion ("5" is not a list, 5 is not a string); unknown claims are ignored.
    model_config = ConfigDict(strict=True, extra="ignore")

    sub: str
    tenant: str
    exp: int


class UserClaims(_Claims):
    roles: list[str] = []


class StreamClaims(_Claims):
    sid: str
    mid: str


def _claims(model: type[_Claims], claims: dict) -> _Claims:
    try:
        return model.model_validate(claims)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'claims'}: {e['msg']}" for e in exc.errors())
        raise TokenError(f"malformed claims: {problems}") from None


def _sign(claims: dict, ttl_s: int) -> str:
    now = int(time.time())
    return jwt.encode({**claims, "iat": now, "exp": now + ttl_s}, get_settings().secret_key(),
                      algorithm=defaults.JWT_ALGORITHM)


def _verify(token: str, audience: str) -> dict:
    try:
        return jwt.decode(token, get_settings().secret_key(), algorithms=[defaults.JWT_ALGORITHM],
                          audience=audience, options={"require": ["exp", "sub", "aud"]})
    except jwt.PyJWTError as exc:
        raise TokenError(str(exc)) from exc


def issue_user_token(user: str, tenant: str, roles: list[str] | tuple[str, ...], ttl_s: int | None = None) -> str:
    valid_id(user, "user")
    valid_id(tenant, "tenant")
    for role in roles:
        valid_id(role, "role")
    return _sign({"sub": user, "tenant": tenant, "roles": list(roles), "aud": API_AUDIENCE},
                 ttl_s or get_settings().user_token_ttl_s)


def verify_user_token(token: str) -> Principal:
    claims = _claims(UserClaims, _verify(token, API_AUDIENCE))
    return _principal(claims.sub, claims.tenant, claims.roles)


def _principal(user: str, tenant: str, roles: list[str]) -> Principal:
    try:
        return Principal(user=valid_id(user, "user"), tenant=valid_id(tenant, "tenant"),
                         roles=tuple(valid_id(r, "role") for r in roles))
    except ValueError as exc:
        raise TokenError(str(exc)) from exc


def issue_stream_token(principal: Principal, session_id: str, message_id: str) -> str:
    return _sign({"sub": principal.user, "tenant": principal.tenant, "sid": session_id, "mid": message_id,
                  "aud": STREAM_AUDIENCE}, get_settings().stream_token_ttl_s)


def verify_stream_token(token: str, session_id: str, message_id: str) -> Principal:
    """The stream's owner, if `token` was issued for exactly this turn."""
    claims = _claims(StreamClaims, _verify(token, STREAM_AUDIENCE))
    if claims.sid != session_id or claims.mid != message_id:
        raise TokenError("token is for another stream")
    return _principal(claims.sub, claims.tenant, [])


OPS_AUDIENCE = "turnstream-ops"


def issue_ops_token(principal: Principal) -> str:
    """A short-lived token for the /ops live stream, issued only to admins (EventSource sends no headers)."""
    if not principal.is_admin:
        raise TokenError("only admins get an ops token")
    return _sign({"sub": principal.user, "tenant": principal.tenant, "roles": list(principal.roles),
                  "aud": OPS_AUDIENCE}, defaults.OPS_TOKEN_TTL_S)


def verify_ops_token(token: str) -> tuple[Principal, int]:
    """The admin an ops token was issued to, and when the token expires (epoch seconds)."""
    claims = _claims(UserClaims, _verify(token, OPS_AUDIENCE))
    principal = _principal(claims.sub, claims.tenant, claims.roles)
    if not principal.is_admin:
        raise TokenError("not an admin token")
    return principal, claims.exp
