"""Who is calling: the bearer token on API requests, or a token in the query string where a
browser cannot send headers (EventSource, opening a page)."""

from flask import g, request

from shared.identity import Principal, TokenError, verify_stream_token, verify_user_token
from web.errors import ApiError


def query_token(what: str) -> str:
    """The `?token=` of a stream or page URL; 401 naming the token that is missing."""
    token = _in_query()
    if not token:
        raise ApiError(401, "unauthorized", f"missing {what} token (?token=...)")
    return token


def stream_principal(session_id: str, message_id: str) -> Principal:
    """The caller of a stream URL, from its `?token=` scoped to this one turn; 401 if missing,
    TokenError if it does not grant the turn. Verified once per request (the request limit asks
    first, then the stream view), and kept in `g` like current_principal's."""
    if "stream_principal" not in g:
        g.stream_principal = verify_stream_token(query_token("stream"), session_id, message_id)
    return g.stream_principal


def _in_query() -> str | None:
    """The one place a token is read from the query string."""
    return request.args.get("token") or None


def current_principal(allow_query_token: bool = False) -> Principal:
    """The caller, from `Authorization: Bearer <token>`; 401 if missing or invalid. With
    `allow_query_token`, a request without that header may carry the token as `?token=`."""
    if "principal" in g:
        return g.principal
    in_query = _in_query() if allow_query_token and "Authorization" not in request.headers else None
    token = in_query or _bearer_token()
    try:
        g.principal = verify_user_token(token)
    except TokenError as exc:
        raise ApiError(401, "unauthorized", f"invalid token: {exc}",
                       {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
    return g.principal


def _bearer_token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)",
                       {"WWW-Authenticate": "Bearer"})
    return token.strip()


def require_admin(allow_query_token: bool = False) -> Principal:
    principal = current_principal(allow_query_token)
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "this needs the admin role")
    return principal
