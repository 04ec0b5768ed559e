"""gunicorn for the web tier: gevent workers, so one process holds thousands of SSE streams."""

import os

worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("TURNSTREAM_WORKER_CONNECTIONS", "10000"))
bind = os.environ.get("TURNSTREAM_BIND", "127.0.0.1:8000")
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("TURNSTREAM_LOG_LEVEL", "info")
