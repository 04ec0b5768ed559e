"""Where a host's web and worker processes keep their metric samples, so one /metrics shows them all.

Model: one prometheus-client multiprocess directory per host. Every web process (gunicorn, through
deploy/gunicorn.conf.py) and every Celery worker of the `workers` app writes its samples to
PROMETHEUS_MULTIPROC_DIR, by default `.run/metrics` under the directory it starts in (the one
`make run` uses), and any web process's /metrics aggregates every file there. So a worker started
by hand from the project directory, with the README's command, shows up in the same /metrics as
`make run`'s. Containers set the variable to a directory of their own (deploy/), and a worker on a
host without a web process also serves its own /metrics on TURNSTREAM_WORKER_METRICS_PORT.

prometheus-client picks its storage when it is first imported, so this runs before any of our
metrics exist: `workers.app` (what `celery -A workers` loads) and the gunicorn config call it first.
The rejected alternative, a metrics port on by default in every worker, collides as soon as two
workers share a host (the README starts two)."""

import os
import sys

ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_DIR = os.path.join(".run", "metrics")


def use_host_metrics_dir() -> str:
    """Set PROMETHEUS_MULTIPROC_DIR to its default unless it is set; create the directory; return it."""
    directory = os.environ.get(ENV) or os.path.abspath(DEFAULT_DIR)
    already_imported = ENV not in os.environ and "prometheus_client" in sys.modules
    os.environ[ENV] = directory
    os.makedirs(directory, exist_ok=True)
    if already_imported:
        _pick_storage_again()
    return directory


def _pick_storage_again() -> None:
    """Celery's command line loads its plugins before our app, and Flower's imports prometheus_client,
    which then chose in-process storage. Choose again with the directory set: every metric created
    from here on (all of ours are) writes to it; Flower's own stay in-process, as they should."""
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
