"""Who is calling: the bearer token on API requests."""

from flask import g, request

from shared.tokens import Principal, TokenError, verify_user_token
from web.errors import ApiError


def current_principal() -> Principal:
    """The caller, from `Authorization: Bearer <token>`; 401 if missing or invalid."""
    if "principal" in g:
        return g.principal
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)",
                       {"WWW-Authenticate": "Bearer"})
    try:
        g.principal = verify_user_token(token.strip())
    except TokenError as exc:
        raise ApiError(401, "unauthorized", f"invalid token: {exc}",
                       {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
    return g.principal


def require_admin() -> Principal:
    principal = current_principal()
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "this needs the admin role")
    return principal
