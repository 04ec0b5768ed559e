"""Celery workers that run an agent turn: `celery -A workers worker -l info`.

Rule: the Celery tasks of a turn and what only they use (the step machinery, redelivery, the
reasoners, the MCP client, the built-in tool server). Nothing here imports `web`.

The Celery app is imported on first use of `workers.app`, so `python -m workers.toolserver`
(the built-in MCP server, spawned by workers over stdio) starts without loading Celery."""

__all__ = ["app"]


def __getattr__(name: str):
    if name == "app":
        # `celery -A workers` comes through here before anything imports prometheus_client.
        from shared.metrics_dir import use_host_metrics_dir

        use_host_metrics_dir()
        from workers.celery_app import app

        return app
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
