"""The `turnstream` command and the process launchers it and the tests share.

Rule: nothing here is imported by a running web or worker process. This package starts
processes (redis-servers, Celery workers, gunicorn, Flower) and mints tokens from a shell;
the system itself never reaches back into it."""

from shared.cli.cli import main

__all__ = ["main"]
