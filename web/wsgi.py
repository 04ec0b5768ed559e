"""WSGI entry point for gunicorn: `gunicorn -c deploy/gunicorn.conf.py web.wsgi:app`."""

import gc

from web import create_app

app = create_app()
# Everything built so far (modules, the app, its pools, pydantic and Celery's tables) lives as long
# as the process: out of the collector's sight, a full collection scans only what requests left
# behind. Without it each one scanned them all and stopped every stream and POST of the process
# for 64-76 ms, a few times a minute under load (bench/README.md, capacity.py).
gc.freeze()
