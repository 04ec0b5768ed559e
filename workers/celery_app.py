"""The workers' Celery app. Each process checks the Redis eviction policies before it takes work."""

import logging

from celery.signals import worker_init

from shared.celery_config import make_celery
from shared.policy import EvictingRoleError, check_policies
from workers import telemetry  # noqa: F401  (connects the logging, metrics and tracing signals)

app = make_celery("turnstream")
app.conf.include = ["workers.tasks"]

log = logging.getLogger(__name__)


@worker_init.connect
def _refuse_evicting_redis(**_: object) -> None:
    # Celery logs and swallows exceptions from signal handlers; SystemExit is what stops the worker.
    try:
        check_policies()
    except EvictingRoleError as exc:
        log.critical("refusing to start: %s", exc)
        raise SystemExit(f"refusing to start: {exc}") from exc
