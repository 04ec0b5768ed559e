"""The web tier's per-app objects, kept in `app.extensions` and read only through here.

create_app builds them once (`install`, then `install_snapshotter` once telemetry is set up);
views and helpers ask for them by name with a type, instead of indexing a dict of Any."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    import redis
    from celery import Celery

    from web.dispatcher import Dispatcher
    from web.ratelimit import TurnRateLimiter
    from web.snapshot import Snapshotter
    from web.turn_watch import TurnWatch

_CELERY = "turnstream.celery"
_STREAM_REDIS = "turnstream.stream_redis"
_DISPATCHER = "turnstream.dispatcher"
_RATE_LIMITER = "turnstream.rate_limiter"
_SNAPSHOTTER = "turnstream.snapshotter"
_TURN_WATCH = "turnstream.turn_watch"


def install(app: Flask, *, celery: Celery, stream_redis: redis.Redis, dispatcher: Dispatcher,
            turn_watch: TurnWatch, rate_limiter: TurnRateLimiter) -> None:
    app.extensions.update({_CELERY: celery, _STREAM_REDIS: stream_redis, _DISPATCHER: dispatcher,
                           _TURN_WATCH: turn_watch, _RATE_LIMITER: rate_limiter})


def install_snapshotter(app: Flask, snapshotter: Snapshotter) -> None:
    app.extensions[_SNAPSHOTTER] = snapshotter


def _get(name: str, app: Flask | None):
    return (app or current_app).extensions[name]


def celery(app: Flask | None = None) -> Celery:
    """The Celery app the web tier sends turns with (it never runs tasks)."""
    return _get(_CELERY, app)


def stream_redis(app: Flask | None = None) -> redis.Redis:
    """The progress client with its own small pool, for log replays of streams."""
    return _get(_STREAM_REDIS, app)


def dispatcher(app: Flask | None = None) -> Dispatcher:
    """This process's one pub/sub connection and its subscribers."""
    return _get(_DISPATCHER, app)


def turn_watch(app: Flask | None = None) -> TurnWatch:
    """Whether the turns of this process's open streams have ended (one read per turn per beat)."""
    return _get(_TURN_WATCH, app)


def rate_limiter(app: Flask | None = None) -> TurnRateLimiter:
    return _get(_RATE_LIMITER, app)


def snapshotter(app: Flask | None = None) -> Snapshotter:
    """The /ops snapshot, shared by /ops pages and /metrics scrapes."""
    return _get(_SNAPSHOTTER, app)
