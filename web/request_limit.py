"""Per-client limit on every request a web process serves, checked before the view reads the body.

One gevent process serves thousands of clients; one client sending requests as fast as it can
(bad bodies, forged tokens, posts over its turn limit) must not take it over. Every request
counts against its client, `TURNSTREAM_REQUEST_RATE_LIMIT` per web process (flask-limiter,
moving window, in the process's memory), before authorization of the view, body parsing or any
Redis call; over it the answer is a JSON 429 with Retry-After naming the limit, sent after a
pause of up to a second, so a client that asks again at once is slowed down. The client is
the user of a valid bearer token, or of a valid stream token for this very stream, else the
address the connection comes from (or, behind `TURNSTREAM_TRUSTED_PROXIES` proxy hops, the
address they forwarded: web.trust_proxies). Not counted: probes (/healthz, /readyz), /metrics,
the page and its static files (they touch no store, and a reload must not spend the API's
budget), and CORS preflights (OPTIONS: they never carry a token, so every cross-origin client
behind one address would share one budget, and a refused preflight makes the browser drop the
request it announced).

The turn limit (web.ratelimit) is another concept: new turns per user across every process,
on the broker. Rejected: counting requests on the broker too, as the turn limit does: a round
trip to the noeviction store for every request of every client, and the web tier's every
answer would depend on that store (a broker outage would turn stream reconnects and probes
into 503s). The price of counting in memory: with N web processes behind a balancer, a client
may get up to N times the limit, which still bounds its share of each process."""

import logging
import math
import time

import limits
from flask import Flask, request
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit

from shared import metrics
from shared.identity import TokenError
from web.auth import current_principal, stream_principal
from web.errors import ApiError, error_response

# Endpoints that probes and scrapers call: never limited (a refused probe restarts a healthy pod);
# the page and its files: no store behind them.
UNLIMITED_ENDPOINTS = frozenset({"ops.healthz", "ops.readyz", "metrics.expose",
                                 "ui.index", "ui.static", "ui.vocabulary_js"})
# A refused request's answer waits this long (at most its Retry-After).
REFUSAL_PAUSE_S = 1.0


def client_key() -> str:
    """Whom this request counts against. A valid bearer or stream token also stays known to the
    view (current_principal and stream_principal keep it), so a token is verified once per request."""
    if "Authorization" in request.headers:
        try:
            principal = current_principal()
            return f"user:{principal.owner}"
        except ApiError:
            pass  # a forged or expired token counts against its address
    args = request.view_args or {}
    if request.endpoint == "stream.stream" and "token" in request.args:
        try:
            return f"user:{stream_principal(args.get('session_id', ''), args.get('message_id', '')).owner}"
        except (ApiError, TokenError):
            pass  # a missing or forged stream token counts against its address
    return f"addr:{request.remote_addr}"


def exempt() -> bool:
    """Requests the limit does not count (module docstring)."""
    return request.method == "OPTIONS" or request.endpoint in UNLIMITED_ENDPOINTS


def _refuse(limit: RequestLimit):
    """The 429: which limit, and when the client's window frees a request again. It leaves after
    a pause: a client that sends its next request as soon as the last one is answered would
    otherwise get a fast 429 after fast 429, and its refusals alone would keep the process busy.
    The pause costs a sleeping greenlet, and a client that respects Retry-After waits longer anyway."""
    metrics.REQUESTS_LIMITED.inc()
    retry_after = max(1, math.ceil(limit.window.reset_time - time.time()))
    time.sleep(min(REFUSAL_PAUSE_S, retry_after))  # gevent's sleep in the web server: other requests go on
    allowed = str(limit.limit).replace(" per ", " requests per ", 1)  # "50 requests per 1 second"
    return error_response(429, "too_many_requests", f"this client is over the request limit of {allowed} "
                          f"(TURNSTREAM_REQUEST_RATE_LIMIT); retry in {retry_after}s", {"Retry-After": str(retry_after)})


def install_request_limit(app: Flask, limit: str) -> Limiter:
    """Count every request of `app` against its client (`limit` in `limits` notation)."""
    limits.parse_many(limit)  # a malformed TURNSTREAM_REQUEST_RATE_LIMIT stops the start, not a request
    # flask-limiter logs each refusal at INFO: one line per request of a flood. The metric counts them.
    logging.getLogger("flask-limiter").setLevel(logging.WARNING)
    # Application limits: one count per client across every endpoint (default limits count per endpoint).
    limiter = Limiter(client_key, app=app, application_limits=[limit], storage_uri="memory://",
                      strategy="moving-window", on_breach=_refuse,
                      application_limits_exempt_when=exempt)

    @app.errorhandler(RateLimitExceeded)
    def _over_limit(exc: RateLimitExceeded):
        # _refuse's answer; the generic 429 only if flask-limiter ever raises without calling it.
        return exc.response or error_response(429, "too_many_requests",
                                              f"this client is over the request limit ({exc.description})")

    return limiter
