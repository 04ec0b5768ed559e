"""The workers' Celery app. Each process checks the Redis eviction policies before it takes work."""

import logging
import threading

from celery.signals import worker_init, worker_ready

from shared.celery_config import make_celery
from shared.policy import EvictingRoleError, check_policies
from shared.redelivery import sweep_forever
from shared.settings import get_settings

app = make_celery("turnstream")
app.conf.include = ["workers.tasks"]
# The web tier gives up on a dead broker at once (503); a worker sending a turn's next step
# waits for the broker to return instead, so an accepted turn is not dropped mid-chain.
app.conf.broker_transport = "workers.broker_transport:Transport"
app.conf.task_publish_retry_policy = {"max_retries": int(get_settings().worker_broker_wait_s),
                                      "interval_start": 0, "interval_step": 0.5, "interval_max": 1.0}

log = logging.getLogger(__name__)


@worker_init.connect
def _refuse_evicting_redis(**_: object) -> None:
    # Celery logs and swallows exceptions from signal handlers; SystemExit is what stops the worker.
    try:
        check_policies()
    except EvictingRoleError as exc:
        log.critical("refusing to start: %s", exc)
        raise SystemExit(f"refusing to start: {exc}") from exc


@worker_ready.connect
def _start_redelivery_sweeper(**_: object) -> None:
    """Each worker process sweeps for turns whose messages were lost (a broker lock keeps it to one at a time)."""
    threading.Thread(target=sweep_forever, args=(app,), name="redelivery-sweeper", daemon=True).start()
