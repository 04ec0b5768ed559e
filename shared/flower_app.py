"""The Celery app Flower watches (`turnstream flower`, or `celery -A shared.flower_app flower`).

It is the workers' broker configuration with one change: opening a broker connection retries
every second or two for as long as the broker is down, instead of giving up after the
connect timeout. Flower's event capture retries a failed connection after 2, 4, 8 … seconds
with no cap, so after a broker outage of a few minutes it slept up to 512 s before it saw events
again; with the connection waiting for the broker itself, that back-off never starts and Flower
captures events within FLOWER_BROKER_RETRY_MAX_S of the broker's return. Web and workers keep
their fast failure (a web request must get its 503 at once).

The rejected alternative, `-A workers`, loads the tasks, MCP and telemetry hooks Flower never uses."""

from shared.celery_config import make_celery, transport_options
from shared.settings import get_settings

FLOWER_BROKER_RETRY_MAX_S = 2.0


def flower_transport_options() -> dict:
    return {**transport_options(get_settings()), "max_retries": None, "connect_retries_timeout": None,
            "interval_start": 0, "interval_step": 1.0, "interval_max": FLOWER_BROKER_RETRY_MAX_S}


app = make_celery("turnstream-flower")
app.conf.broker_transport_options = flower_transport_options()
